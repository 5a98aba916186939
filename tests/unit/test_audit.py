import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats as sstats

from genbrain.audit import (
    AUDIT_COLUMNS,
    PrivacyGateError,
    max_correlation,
    memorisation_audit,
    privacy_gate,
)
from genbrain.errors import GenbrainInputError
from genbrain.figures import audit_histogram, similarity_figure
from genbrain.io import save_tsv
from genbrain.stats import Cohort, similarity_protocol
from genbrain.store import ImageStore, merge_indices, write_shard

V = 400


def _smooth(rng, n, v=V):
    """Image-like rows: correlated neighbouring voxels and a shared mean image, so unrelated
    images still correlate (best r ~ 0.35-0.5 here), as real brains do."""
    base = np.convolve(rng.standard_normal(v + 20), np.ones(21) / 21, "valid")
    x = rng.standard_normal((n, v + 20))
    x = np.stack([np.convolve(row, np.ones(21) / 21, "valid") for row in x])
    return (base * 3 + x).astype(np.float32)


def _write_store(tmp_path, name, tables_and_arrays, dtype="float16"):
    idx = []
    for k, (x, t) in enumerate(tables_and_arrays):
        d = tmp_path / name / f"chunk-{k}"
        d.mkdir(parents=True)
        mod = t["modality"].iloc[0]
        write_shard(x, d / f"{mod}.npy", dtype)
        save_tsv(t.assign(shard=f"{mod}.npy", row=np.arange(len(t))), d / "index.tsv")
        idx.append(d / "index.tsv")
    merge_indices(idx, tmp_path / name / "index.tsv")
    return ImageStore(tmp_path / name / "index.tsv")


def _table(n, modality, prefix, **extra):
    return pd.DataFrame({"participant_id": [f"{prefix}{i:03d}" for i in range(n)], "site": "s",
                         "age": 60.0, "sex": "F", "modality": modality,
                         "modality_index": 0, **extra})


@pytest.fixture(scope="module")
def planted():
    """60 training images (T1w); 12 synthetic images, fresh draws except row 3 = training 17
    plus small noise and row 8 = an exact copy of training 41."""
    rng = np.random.default_rng(0)
    train = _smooth(rng, 60)
    syn = _smooth(rng, 12)
    syn[3] = train[17] + 0.05 * rng.standard_normal(V).astype(np.float32)
    syn[8] = train[41]
    return syn, train


def test_max_correlation_matches_pearsonr_and_finds_copies(planted):
    syn, train = planted
    idx, r = max_correlation(syn, train, dtype=np.float64)
    full = np.array([[sstats.pearsonr(s, t).statistic for t in train.astype(np.float64)]
                     for s in syn.astype(np.float64)])
    np.testing.assert_array_equal(idx[:, 0], full.argmax(axis=1))
    np.testing.assert_allclose(r[:, 0], full.max(axis=1), atol=1e-10)
    np.testing.assert_allclose(r[:, 1], np.sort(full, axis=1)[:, -2], atol=1e-10)
    assert idx[3, 0] == 17 and idx[8, 0] == 41 and r[8, 0] == pytest.approx(1.0, abs=1e-12)
    assert r[3, 0] > 0.95
    others = np.delete(r[:, 0], [3, 8])
    assert others.max() < 0.9  # nothing else is near a copy
    # float32 arithmetic stays within 1e-6 of pearsonr
    _, r32 = max_correlation(syn, train)
    np.testing.assert_allclose(r32[:, 0], full.max(axis=1), atol=1e-6)


def test_block_sizes_do_not_change_results(planted):
    syn, train = planted
    ref_i, ref_r = max_correlation(syn, train, dtype=np.float64)
    for sb, tb in [(1, 1), (5, 7), (12, 60), (100, 13)]:
        i, r = max_correlation(syn, train, syn_block=sb, train_block=tb, dtype=np.float64)
        np.testing.assert_array_equal(i, ref_i)
        np.testing.assert_allclose(r, ref_r, atol=1e-12)
    i, _ = max_correlation(syn, train, memory_mb=0.01)  # budget-derived blocks, 1 row at least
    np.testing.assert_array_equal(i, ref_i)


def test_audit_on_float16_stores_within_modality(tmp_path, planted):
    syn, train = planted
    rng = np.random.default_rng(1)
    other = _smooth(rng, 20)  # an FA training set that holds a copy of synthetic T1w row 5
    other[4] = syn[5]
    t_store = _write_store(tmp_path, "train", [(train[:35], _table(35, "T1w", "sub-a")),
                                               (train[35:], _table(25, "T1w", "sub-b")),
                                               (other, _table(20, "FA", "sub-c"))])
    s_fa = _smooth(rng, 3)
    s_store = _write_store(tmp_path, "syn",
                           [(syn, _table(12, "T1w", "syn-", synthetic_id=range(12))),
                            (s_fa, _table(3, "FA", "syn-", synthetic_id=[12, 13, 14]))])
    audit = memorisation_audit(s_store, t_store, train_block=16)
    assert list(audit.columns) == AUDIT_COLUMNS and len(audit) == 15
    assert list(audit["synthetic_id"]) == list(range(15))
    t1 = audit[audit.modality == "T1w"].set_index("synthetic_row")
    assert t1.loc[3, "training_participant_id"] == "sub-a017"
    assert t1.loc[8, "training_participant_id"] == "sub-b006"  # training row 41 = chunk b row 6
    assert t1.loc[8, "training_row"] == 41 and t1.loc[8, "max_r"] > 0.9999  # float16 copy
    # the FA copy of synthetic row 5 is not found: modalities are audited separately
    assert t1.loc[5, "max_r"] < 0.9
    assert (audit["max_r"] > 0.95).sum() == 2
    fa = audit[audit.modality == "FA"]
    assert fa["training_participant_id"].str.startswith("sub-c").all()
    # float16 stores give the float16 arrays' r
    _, r = max_correlation(syn.astype(np.float16).astype(np.float64),
                           train.astype(np.float16).astype(np.float64), dtype=np.float64)
    np.testing.assert_allclose(audit["max_r"].iloc[:12], r[:, 0], atol=2e-6)


def test_privacy_gate_names_offenders_and_passes_below(planted):
    syn, train = planted
    syn_t = pd.DataFrame({"modality": ["T1w"] * 12, "synthetic_id": [f"s{i}" for i in range(12)]})
    train_t = pd.DataFrame({"modality": ["T1w"] * 60,
                            "participant_id": [f"sub-{i}" for i in range(60)]})
    audit = memorisation_audit(syn, train, syn_t, train_t)
    with pytest.raises(PrivacyGateError) as err:
        privacy_gate(audit, 0.95)
    msg = str(err.value)
    assert "\n" not in msg and "2 of 12 synthetic images" in msg
    assert "synthetic s8 ~ training sub-41 (T1w, r = 1.0000)" in msg
    assert "synthetic s3 ~ training sub-17" in msg
    assert msg.index("s8") < msg.index("s3")  # highest r first
    assert isinstance(err.value, GenbrainInputError)
    with pytest.raises(PrivacyGateError, match=r"; and 1 more$"):
        privacy_gate(audit, 0.95, max_listed=1)
    ok = privacy_gate(audit.drop(index=[3, 8]), 0.95)
    assert ok.loc[0, "passed"] and ok.loc[0, "n_flagged"] == 0
    assert ok.loc[0, "max_r"] == pytest.approx(audit.drop(index=[3, 8])["max_r"].max())
    with pytest.raises(GenbrainInputError, match="threshold must be in"):
        privacy_gate(audit, 1.5)


def test_bad_inputs_are_one_line_errors(planted):
    syn, train = planted
    bad = syn.copy()
    bad[2, 7] = np.nan
    with pytest.raises(GenbrainInputError, match="synthetic image 2 has non-finite voxels"):
        max_correlation(bad, train)
    with pytest.raises(GenbrainInputError, match="no training images of modality 'FA'"):
        memorisation_audit(syn, train, pd.DataFrame({"modality": ["FA"] * 12}), None)
    with pytest.raises(GenbrainInputError, match="400 voxels, training images 399"):
        max_correlation(syn, train[:, :399])


def _is_png(path):
    with Image.open(path) as im:
        im.verify()
        return im.format == "PNG" and im.size[0] > 100


def test_figures_write_pngs(tmp_path, planted):
    syn, train = planted
    audit = memorisation_audit(syn, train)
    audit_histogram(audit, tmp_path / "audit.png", 0.95)
    assert _is_png(tmp_path / "audit.png")
    rng = np.random.default_rng(5)
    cov = pd.DataFrame({"age": rng.uniform(40, 80, 200), "sex": rng.choice(["M", "F"], 200)})
    x = rng.standard_normal((200, 50)) + np.outer(cov["age"], np.linspace(0, 1, 50)) / 50
    tables = [similarity_protocol(m, Cohort.of(x[:100], cov.iloc[:100]),
                                  Cohort.of(x[100:], cov.iloc[100:]), n=20, n_cohorts=3)
              for m in ("T1w", "FA")]
    similarity_figure(pd.concat(tables), tmp_path / "fig" / "similarity.png", "demo")
    assert _is_png(tmp_path / "fig" / "similarity.png")
    with Image.open(tmp_path / "audit.png") as im:
        assert im.info["dpi"][0] == pytest.approx(150, abs=1)
