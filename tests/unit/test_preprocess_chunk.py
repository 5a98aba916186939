import numpy as np
import pytest

from genbrain.errors import GenbrainInputError
from genbrain.io import read_tsv
from genbrain.modalities import DEFAULT_REGISTRY
from genbrain.preprocess.chunk import preprocess_chunk
from genbrain.space import standard_space
from genbrain.store import ImageStore, merge_indices


def _images(small_cohort, rows, mods=("T1w", "VBM")):
    return {pid: {m: small_cohort["pattern"].format(participant_id=pid, modality=m)
                  for m in mods} for pid in rows["participant_id"]}


def test_standard_space_chunk_is_normalised_into_shards(small_cohort, tmp_path):
    rows = small_cohort["table"].query("site == 'std'")
    out = tmp_path / "chunk"
    index = preprocess_chunk(rows, _images(small_cohort, rows), [False] * len(rows),
                             DEFAULT_REGISTRY, out)
    assert sorted(p.name for p in out.iterdir()) == ["T1w.npy", "VBM.npy", "index.tsv",
                                                     "jacobian", "transforms.tsv"]
    v = standard_space().n_voxels
    t1 = np.load(out / "T1w.npy")
    assert t1.shape == (3, v) and t1.dtype == np.float16
    np.testing.assert_allclose(t1.astype(np.float32).mean(axis=1), 0, atol=1e-3)  # z-scored
    assert (index["input"] == "standard").all()
    assert index["qc_corr"].between(0.5, 1).all()
    merge_indices([out / "index.tsv"], tmp_path / "store" / "index.tsv")
    store = ImageStore(tmp_path / "store" / "index.tsv")
    vbm = store.table.index[store.table["modality"] == "VBM"][0]
    assert store[vbm].shape == (v,)
    assert not list(tmp_path.glob(".chunk.tmp-*"))


def test_native_chunk_is_registered_with_jacobians(small_cohort, tmp_path):
    rows = small_cohort["table"].query("site == 'nat'").head(1)
    out = tmp_path / "chunk"
    index = preprocess_chunk(rows, _images(small_cohort, rows), [True], DEFAULT_REGISTRY, out,
                             options={"type_of_transform": "Affine"}, threads=2)
    assert set(index["modality"]) == {"T1w", "VBM"}  # Affine: no warp, so no Jacobian
    assert (index["input"] == "registered").all()
    assert index["qc_pass"].all()
    xfm = read_tsv(out / "transforms.tsv")
    assert len(xfm) == 1 and len(xfm["std_to_native"].iloc[0].split()) == 16


def test_a_bad_image_leaves_no_half_written_chunk(small_cohort, tmp_path):
    rows = small_cohort["table"].query("site == 'std'")
    images = _images(small_cohort, rows)
    last = rows["participant_id"].iloc[-1]
    bad = tmp_path / "bad_T1w.nii.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00 definitely not a nifti")
    images[last]["T1w"] = str(bad)
    out = tmp_path / "chunk"
    with pytest.raises(GenbrainInputError, match="bad_T1w.nii.gz: cannot read NIfTI"):
        preprocess_chunk(rows, images, [False] * len(rows), DEFAULT_REGISTRY, out)
    assert not out.exists()
    assert not list(tmp_path.glob(".chunk.tmp-*"))


def test_a_t1_contradicting_its_brain_extraction_declaration_fails_qc(small_cohort, tmp_path):
    # the simulator's native T1s are whole head: declared brain-extracted, QC says so
    rows = small_cohort["table"].query("site == 'nat'").head(1)
    index = preprocess_chunk(rows, _images(small_cohort, rows, ("T1w",)), [True],
                             DEFAULT_REGISTRY, tmp_path / "chunk", threads=2,
                             options={"type_of_transform": "Affine"}, brain_extracted=[True])
    row = index.iloc[0]
    assert not row["qc_pass"] and row["qc_outside"] > 0.15
    assert "declared brain-extracted but has scalp/skull signal" in row["qc_note"]
    ok = preprocess_chunk(rows, _images(small_cohort, rows, ("T1w",)), [True],
                          DEFAULT_REGISTRY, tmp_path / "chunk2", threads=2,
                          options={"type_of_transform": "Affine"}, brain_extracted=[False])
    assert ok["qc_pass"].all() and (ok["qc_note"].fillna("") == "").all()


def test_declaration_notes_say_which_key_to_change():
    from genbrain.preprocess.chunk import OUTSIDE_THRESHOLD, declaration_note

    assert declaration_note(None, 0.9) == ""  # standard-space input: nothing declared
    assert declaration_note(True, OUTSIDE_THRESHOLD / 2) == ""
    assert declaration_note(False, 0.6) == ""
    assert "list the site under 'brain_extracted'" in declaration_note(False, 0.01)
    assert "remove the site from 'brain_extracted'" in declaration_note(True, 0.6)
