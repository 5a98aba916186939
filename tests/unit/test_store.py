import numpy as np
import pandas as pd
import pytest

from genbrain.errors import GenbrainInputError
from genbrain.io import save_tsv
from genbrain.store import ImageStore, merge_indices, write_shard


def _chunk(tmp_path, name, n, offset, v=50):
    d = tmp_path / name
    d.mkdir()
    data = (np.arange(n * v, dtype=np.float32).reshape(n, v) + offset) / 1000
    write_shard(data, d / "T1w.npy", "float32")
    save_tsv(pd.DataFrame({"participant_id": [f"sub-{name}{i}" for i in range(n)], "site": name,
                           "age": 50.0, "sex": "F", "modality": "T1w", "modality_index": 27,
                           "shard": "T1w.npy", "row": range(n)}), d / "index.tsv")
    return d, data


def test_store_round_trip_and_o1_access(tmp_path):
    d1, a = _chunk(tmp_path, "a", 3, 0)
    d2, b = _chunk(tmp_path, "b", 2, 10_000)
    out = tmp_path / "store" / "index.tsv"
    merged = merge_indices([d1 / "index.tsv", d2 / "index.tsv"], out)
    assert len(merged) == 5
    assert merged["shard"].iloc[0] == "../a/T1w.npy"  # relative to the index
    store = ImageStore(out)
    assert len(store) == 5 and store.n_voxels == 50
    np.testing.assert_array_equal(store[0], a[0])
    np.testing.assert_array_equal(store[4], b[1])
    np.testing.assert_array_equal(store.batch([1, 3]), np.stack([a[1], b[0]]))
    assert isinstance(store._array(0), np.memmap)


def test_float16_store_keeps_normalised_values(tmp_path):
    x = np.random.default_rng(0).standard_normal((2, 100)).astype(np.float32)
    write_shard(x, tmp_path / "x.npy")
    y = np.load(tmp_path / "x.npy")
    assert y.dtype == np.float16
    np.testing.assert_allclose(y, x, atol=2e-3)


def test_store_errors(tmp_path):
    d1, _ = _chunk(tmp_path, "a", 2, 0)
    (d1 / "T1w.npy").unlink()
    with pytest.raises(GenbrainInputError,
                       match=r"index.tsv: shard '.*/a/T1w.npy' listed in the index is missing"):
        ImageStore(d1 / "index.tsv")
    save_tsv(pd.DataFrame({"participant_id": ["sub-1"]}), tmp_path / "bad.tsv")
    with pytest.raises(GenbrainInputError, match="not an image-store index"):
        ImageStore(tmp_path / "bad.tsv")
    with pytest.raises(GenbrainInputError, match="float16 or float32"):
        write_shard(np.zeros((1, 2)), tmp_path / "z.npy", "int8")


def test_batched_rows_equal_item_by_item_reads_in_any_order(tmp_path):
    d1, a = _chunk(tmp_path, "a", 3, 0)
    d2, _b = _chunk(tmp_path, "b", 2, 10_000)
    out = tmp_path / "store" / "index.tsv"
    merge_indices([d1 / "index.tsv", d2 / "index.tsv"], out)
    store = ImageStore(out)
    items = [4, 0, 2, 2, 3, 1]  # across shards, unsorted, repeated
    rows = store.rows(items)
    assert rows.dtype == np.float32  # the shards were written as float32
    np.testing.assert_array_equal(rows, np.stack([store[i] for i in items]))
    assert store.rows([]).shape == (0, 50)
    # one shard, consecutive rows (one read) then a jump back
    np.testing.assert_array_equal(store.rows([0, 1, 2, 0]), np.stack([a[0], a[1], a[2], a[0]]))


def test_positioned_reads_survive_pickling_and_report_bad_shards(tmp_path):
    """DataLoader workers receive a pickled store: each opens its own file descriptor."""
    import pickle

    d1, a = _chunk(tmp_path, "a", 3, 0)
    store = ImageStore(d1 / "index.tsv")
    np.testing.assert_array_equal(store.rows([2]), a[2:3])  # opens the shard's descriptor
    clone = pickle.loads(pickle.dumps(store))
    assert clone._shards[0]._fd is None
    np.testing.assert_array_equal(clone.rows([1, 2]), a[1:3])
    # a shard cut short after the index was written: one line naming the file
    (d1 / "T1w.npy").write_bytes((d1 / "T1w.npy").read_bytes()[:300])
    with pytest.raises(GenbrainInputError, match=r"T1w.npy: truncated shard"):
        ImageStore(d1 / "index.tsv").rows([0])
