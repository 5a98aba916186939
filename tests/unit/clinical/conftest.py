"""The clinical tests' tiny world: a 16^3 grid (a ball mask of ~1,400 voxels), stores of
images with a planted score, and a fast regressor config (the narrow ResNet sees a 14^3 crop, so
a fit of a few epochs takes well under a second per epoch on one core)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from genbrain.clinical.config import RegressConfig
from genbrain.io import save_tsv
from genbrain.space import StandardSpace
from genbrain.store import ImageStore, write_shard

SHAPE = (16, 16, 16)
CROP = ((1, 15), (1, 15), (1, 15))
MAX = 40.0


@pytest.fixture(scope="module")
def space() -> StandardSpace:
    ijk = np.indices(SHAPE) - 7.5
    mask = (ijk ** 2).sum(0) < 7.2 ** 2
    return StandardSpace(shape=SHAPE, affine=np.eye(4), mask=mask)


def planted(space: StandardSpace, scores: np.ndarray, seed: int) -> np.ndarray:
    """(n, V) images: noise plus a Gaussian blob whose amplitude is linear in the score."""
    rng = np.random.default_rng(seed)
    ijk = space.voxel_indices.T.astype(float)  # (V, 3)
    blob = np.exp(-((ijk - [5.0, 8.0, 8.0]) ** 2).sum(1) / (2 * 2.0 ** 2))  # (V,)
    return 0.3 * rng.standard_normal((len(scores), len(blob))) + np.outer(scores / 10.0, blob)


def make_store(root: Path, space: StandardSpace, n: int, seed: int, prefix: str = "sub-",
               scores: np.ndarray | None = None, **columns) -> ImageStore:
    rng = np.random.default_rng(seed + 100)
    scores = rng.uniform(0, MAX, n).round(1) if scores is None else scores
    root.mkdir(parents=True, exist_ok=True)
    write_shard(planted(space, np.nan_to_num(scores), seed), root / "FA.npy", "float32")
    table = {"participant_id": [f"{prefix}{i:03d}" for i in range(n)], "site": "h1",
             "age": rng.uniform(45, 85, n).round(1), "sex": rng.choice(["M", "F"], n),
             "modality": "FA", "modality_index": 34, "shard": "FA.npy", "row": range(n),
             "score": scores, **columns}
    save_tsv(pd.DataFrame(table), root / "index.tsv")
    return ImageStore(root / "index.tsv")


def cfg(**changes) -> RegressConfig:
    base = {"score_max": MAX, "crop": CROP, "epochs": 3, "batch_size": 8, "lr": 1e-3,
            "dropout": 0.0, "eval_batch": 32}
    return RegressConfig(**{**base, **changes})


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg
