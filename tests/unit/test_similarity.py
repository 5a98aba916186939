import numpy as np
import pandas as pd
import pytest
from scipy import stats as sstats
from scipy.spatial.distance import cosine as scipy_cosine

from genbrain.errors import GenbrainInputError
from genbrain.io import save_tsv
from genbrain.stats import (
    Cohort,
    ImageRows,
    correlation_maps,
    cosine_similarity,
    draw_cohorts,
    sex_codes,
    similarity_protocol,
    summarise_similarity,
    t_from_r,
    tmaps,
)
from genbrain.store import ImageStore, merge_indices, write_shard

V = 300


def _population(n, seed, v=V, noise=1.0):
    """Images with a known age pattern and sex pattern plus noise; covariates M/F and years."""
    rng = np.random.default_rng(seed)
    age = rng.uniform(45, 80, n)
    sex = rng.choice(["M", "F"], n)
    age_map = np.sin(np.linspace(0, 6, v))
    sex_map = np.cos(np.linspace(0, 9, v))
    x = (np.outer((age - 60) / 10, age_map) + np.outer(sex == "F", sex_map)
         + noise * rng.standard_normal((n, v)) + 3.0)  # offset: centring must be exact
    cov = pd.DataFrame({"participant_id": [f"sub-{seed}-{i:04d}" for i in range(n)],
                        "age": age, "sex": sex})
    return x, cov


def _store(tmp_path, name, x, cov, dtype="float16", shards=2, modality="T1w"):
    """A store of the images in ``shards`` shards (rows split evenly), index in row order."""
    idx = []
    for k, rows in enumerate(np.array_split(np.arange(len(x)), shards)):
        d = tmp_path / name / f"chunk-{k}"
        d.mkdir(parents=True)
        write_shard(x[rows], d / f"{modality}.npy", dtype)
        t = cov.iloc[rows].assign(site="s", modality=modality, modality_index=0,
                                  shard=f"{modality}.npy", row=np.arange(len(rows)))
        save_tsv(t, d / "index.tsv")
        idx.append(d / "index.tsv")
    merge_indices(idx, tmp_path / name / "index.tsv")
    return ImageStore(tmp_path / name / "index.tsv")


def test_t_maps_match_scipy_pearsonr_per_voxel():
    x, cov = _population(40, 0, v=25)
    t = tmaps(Cohort.of(x, cov))
    n = len(x)
    for e, y in enumerate([cov["age"].to_numpy(), (cov["sex"] == "F").to_numpy(float)]):
        for j in range(x.shape[1]):
            r = sstats.pearsonr(x[:, j], y).statistic
            assert t[e, j] == pytest.approx(r * np.sqrt((n - 2) / (1 - r * r)), abs=1e-6)
            # the same t as a regression slope test (scipy's linregress) -- the textbook t
            lr = sstats.linregress(y, x[:, j])
            assert t[e, j] == pytest.approx(lr.slope / lr.stderr, rel=1e-6)


def test_chunk_size_does_not_change_maps():
    x, cov = _population(30, 1)
    y = np.column_stack([cov["age"], sex_codes(cov["sex"])])
    ref = correlation_maps(ImageRows(x), y, chunk_voxels=V)
    for chunk in (1, 7, 128):
        np.testing.assert_allclose(correlation_maps(ImageRows(x), y, chunk_voxels=chunk), ref,
                                   atol=1e-12)


def test_constant_voxels_and_perfect_fits_stay_finite():
    x = np.zeros((5, 3))
    x[:, 1] = np.arange(5)  # r = 1 with y
    r = correlation_maps(ImageRows(x), np.arange(5.0))
    np.testing.assert_allclose(r[0], [0.0, 1.0, 0.0])
    assert np.isfinite(t_from_r(r, 5)).all() and t_from_r(r, 5)[0, 1] > 1e5


def test_cosine_matches_scipy():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal(50), rng.standard_normal(50)
    assert cosine_similarity(a, b) == pytest.approx(1 - scipy_cosine(a, b), abs=1e-12)
    mask = rng.random(50) > 0.5
    assert cosine_similarity(a, b, mask) == pytest.approx(1 - scipy_cosine(a[mask], b[mask]),
                                                          abs=1e-12)
    assert np.isnan(cosine_similarity(a, np.zeros(50)))


def test_sex_codes():
    np.testing.assert_array_equal(sex_codes(["M", "F", "f", 1, 0]), [0, 1, 1, 1, 0])
    with pytest.raises(GenbrainInputError, match="row 2: sex 'X' is not M or F"):
        sex_codes(["M", "X"], "cov.tsv")


def test_float16_store_cohort_equals_array(tmp_path):
    x, cov = _population(24, 2)
    store = _store(tmp_path, "s", x, cov, "float16", shards=3)
    x16 = x.astype(np.float16).astype(np.float64)
    t_store = tmaps(Cohort.from_store(store), chunk_voxels=64)
    np.testing.assert_allclose(t_store, tmaps(Cohort.of(x16, cov)), atol=1e-9)
    # a shuffled selection of store rows reads the right images
    sel = store.table.iloc[[20, 3, 11, 0, 7, 15]]
    got = ImageRows(store, sel.index.to_numpy()).read(voxels=slice(5, 90))
    np.testing.assert_array_equal(got, x16[[20, 3, 11, 0, 7, 15], 5:90])


def test_averaged_members_are_means_of_k_samples(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((12, V))
    cov = pd.DataFrame({"participant_id": np.repeat([f"sub-{i}" for i in range(4)], 3),
                        "age": np.repeat([50.0, 60, 70, 55], 3), "sex": np.repeat(list("MFFM"), 3),
                        "sample": np.tile([0, 1, 2], 4)})
    store = _store(tmp_path, "avg", x, cov, "float32", shards=2)
    cohort = Cohort.from_store(store, store.table, average_by="participant_id")
    assert len(cohort) == 4 and cohort.images.k == 3
    np.testing.assert_allclose(cohort.images.read(), x.reshape(4, 3, V).mean(axis=1), atol=1e-6)
    assert list(cohort.covariates["participant_id"]) == ["sub-0", "sub-1", "sub-2", "sub-3"]
    bad = store.table.copy()
    bad.loc[1, "age"] = 51.0
    with pytest.raises(GenbrainInputError, match="differ in age or sex"):
        Cohort.from_store(store, bad, average_by="participant_id")


def test_draw_cohorts_disjoint_seeded_and_checked():
    a = draw_cohorts(100, 10, 5, seed=7)
    assert len(a) == 5 and len(np.unique(np.concatenate(a))) == 50
    for x, y in zip(a, draw_cohorts(100, 10, 5, seed=7)):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(np.concatenate(a), np.concatenate(draw_cohorts(100, 10, 5, 8)))
    with pytest.raises(GenbrainInputError, match="need 60 images; the real pool holds 50"):
        draw_cohorts(50, 12, 5)


def test_protocol_ranks_signal_and_relative_scores():
    """Real cohorts carry the pattern; a 'synthetic' cohort of pure noise scores near 0, one with
    the pattern and a sixth of the noise (like k-averaging) scores above real."""
    ref_x, ref_cov = _population(2000, 10, noise=3.0)
    pool_x, pool_cov = _population(300, 11, noise=3.0)
    real = [Cohort.of(pool_x[m], pool_cov.iloc[m], f"real {i}")
            for i, m in enumerate(draw_cohorts(300, 50, 5, seed=0))]
    rng = np.random.default_rng(12)
    noise = [Cohort.of(rng.standard_normal((50, V)), c.covariates, "noise") for c in real]
    clean = []
    for c in real:  # same covariates and pattern, less noise
        cov = c.covariates
        age_map, sex_map = np.sin(np.linspace(0, 6, V)), np.cos(np.linspace(0, 9, V))
        x = (np.outer((cov["age"] - 60) / 10, age_map) + np.outer(cov["sex"] == "F", sex_map)
             + 0.5 * rng.standard_normal((50, V)))
        clean.append(Cohort.of(x, cov, "clean"))
    table = similarity_protocol("T1w", Cohort.of(ref_x, ref_cov, "reference"), real, noise,
                                clean, chunk_voxels=100)
    assert list(table.columns) == ["modality", "effect", "kind", "replicate", "n", "cosine",
                                   "relative_to_real"]
    assert len(table) == 2 * 3 * 5
    mean = table.groupby(["effect", "kind"])["cosine"].mean()
    rel = table.groupby(["effect", "kind"])["relative_to_real"].mean()
    for effect in ("age", "sex"):
        assert mean[effect, "real"] > 0.4
        assert abs(mean[effect, "synthetic"]) < 0.3
        assert mean[effect, "synthetic_avg"] > mean[effect, "real"] + 0.1
        assert rel[effect, "real"] == pytest.approx(100.0)
        assert rel[effect, "synthetic_avg"] == pytest.approx(
            100 * mean[effect, "synthetic_avg"] / mean[effect, "real"])
    s = summarise_similarity(table)
    row = s[(s.effect == "age") & (s.kind == "real")].iloc[0]
    assert row.replicates == 5 and row.ci_low < row.cosine_mean < row.ci_high


def test_protocol_draws_from_a_pool_and_checks_inputs():
    ref_x, ref_cov = _population(500, 20)
    pool_x, pool_cov = _population(100, 21)
    ref = Cohort.of(ref_x, ref_cov, "reference")
    pool = Cohort.of(pool_x, pool_cov, "hold-out")
    t1 = similarity_protocol("FA", ref, pool, n=20, n_cohorts=5, seed=3)
    t2 = similarity_protocol("FA", ref, pool, n=20, n_cohorts=5, seed=3)
    pd.testing.assert_frame_equal(t1, t2)
    assert set(t1["kind"]) == {"real"} and (t1["n"] == 20).all()
    cohorts = [pool.subset(m) for m in draw_cohorts(100, 20, 2, seed=3)]
    wrong = Cohort.of(pool_x[:20], pool_cov.iloc[50:70], "synthetic 0")  # other people's ages
    with pytest.raises(GenbrainInputError, match="synthetic 0: does not carry the ages and sexes"):
        similarity_protocol("FA", ref, cohorts, [wrong])
    with pytest.raises(GenbrainInputError, match="also in the reference cohort"):
        similarity_protocol("FA", ref, [ref.subset(np.arange(20), "leaky")])
    with pytest.raises(GenbrainInputError, match="at least 3 images"):
        tmaps(Cohort.of(pool_x[:2], pool_cov.iloc[:2]))


def test_truncated_or_missing_shards_are_named(tmp_path):
    x, cov = _population(6, 5)
    store = _store(tmp_path, "t", x, cov, "float16", shards=2)
    shard = tmp_path / "t" / "chunk-1" / "T1w.npy"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(GenbrainInputError, match=r"chunk-1/T1w.npy: truncated shard"):
        ImageRows(store)
    shard.unlink()
    with pytest.raises(GenbrainInputError, match=r"shard .*chunk-1/T1w.npy' listed in the index "
                                                 "is missing"):
        ImageRows(store)
