"""Atomic writers: all or nothing, and outputs with the umask's permissions (not the
owner-only mode of a temporary file), so results on a shared file system stay readable."""

import os
import re
import stat
from pathlib import Path

import pandas as pd
import pytest

from genbrain.io import atomic_dir, atomic_path, save_tsv


@pytest.fixture(params=[0o022, 0o007])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_files_get_the_umask_permissions(tmp_path, umask):
    save_tsv(pd.DataFrame({"a": [1]}), tmp_path / "t.tsv")
    assert _mode(tmp_path / "t.tsv") == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["t.tsv"]  # no temporary left


def test_atomic_dirs_get_the_umask_permissions_and_replace_the_old_folder(tmp_path, umask):
    out = tmp_path / "shard-000"
    out.mkdir()
    (out / "old.npy").write_bytes(b"old")
    with atomic_dir(out) as tmp:
        assert tmp.parent == tmp_path and not (tmp / "old.npy").exists()
        save_tsv(pd.DataFrame({"a": [1]}), tmp / "index.tsv")
    assert sorted(p.name for p in out.iterdir()) == ["index.tsv"]
    assert _mode(out) == 0o777 & ~umask
    assert _mode(out / "index.tsv") == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["shard-000"]


def test_a_failed_write_leaves_the_old_output_and_no_temporary(tmp_path):
    (tmp_path / "t.tsv").write_text("old\n")
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "t.tsv") as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    out = tmp_path / "d"
    out.mkdir()
    (out / "kept").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "half").write_text("half")
        raise RuntimeError("killed")
    assert (tmp_path / "t.tsv").read_text() == "old\n"
    assert sorted(p.name for p in out.iterdir()) == ["kept"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "t.tsv"]


def test_atomic_dir_removes_what_a_killed_attempt_left(tmp_path):
    out = tmp_path / "shard-000"
    stale = tmp_path / ".shard-000.k1ll3d"  # as mkdtemp names it
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "T1w.npy").write_bytes(b"half")
    other = tmp_path / ".shard-0001.x1y2z3"  # another output's temporary: kept
    other.mkdir()
    with atomic_dir(out) as tmp:
        (tmp / "index.tsv").write_text("a\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".shard-0001.x1y2z3", "shard-000"]


def test_peek_checkpoint_reads_the_pickle_without_tensors_or_code(tmp_path):
    import argparse
    import subprocess
    import sys
    import zipfile

    import torch

    from genbrain.errors import GenbrainInputError
    from genbrain.io import peek_checkpoint

    path = tmp_path / "ckpt.pt"
    torch.save({"model": {"w": torch.ones(3)}, "step": 7, "losses": torch.zeros(2),
                "config": {"norms": {"age": {"mean": 60.0, "std": 9.5}}, "levels": ["CN"]},
                "args": argparse.Namespace(lr=1e-4)}, path)
    record = peek_checkpoint(path)
    assert sorted(record) == ["args", "config", "losses", "model", "step"]
    assert record["step"] == 7 and list(record["model"]) == ["w"]
    assert record["config"] == {"norms": {"age": {"mean": 60.0, "std": 9.5}}, "levels": ["CN"]}
    assert not isinstance(record["model"]["w"], torch.Tensor)  # a placeholder, never read
    # the parse-time reader imports no torch
    code = ("import sys; from genbrain.io import peek_checkpoint; "
            f"peek_checkpoint({str(path)!r}); assert 'torch' not in sys.modules")
    root = Path(__file__).resolve().parents[2]
    assert subprocess.run([sys.executable, "-c", code], cwd=root, check=False).returncode == 0
    (tmp_path / "a.txt").write_text("not a zip")
    with zipfile.ZipFile(tmp_path / "b.zip", "w") as z:
        z.writestr("notes.txt", "hello")
    with zipfile.ZipFile(tmp_path / "c.pt", "w") as z:
        z.writestr("archive/data.pkl", b"")
    for name, message in [("a.txt", "not a PyTorch checkpoint (not the zip archive"),
                          ("b.zip", "a zip archive without data.pkl"),
                          ("c.pt", "not a readable PyTorch checkpoint (archive/data.pkl: EOF")]:
        with pytest.raises(GenbrainInputError, match=re.escape(f"{tmp_path / name}: {message}")):
            peek_checkpoint(tmp_path / name)
