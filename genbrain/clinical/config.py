"""Settings of one clinical-score regressor fit (:class:`RegressConfig`, saved in its
checkpoint) and the regressor's seeded streams."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from genbrain.errors import GenbrainInputError
from genbrain.training.config import dataclass_from_dict, plain

PAPER_CROP: tuple[tuple[int, int], ...] = ((9, 81), (10, 100), (1, 77))  # 72 x 90 x 76
ARCHS = ("resnet10-narrow", "resnet10")
#: RegressConfig keys a resumed fit may change: they do not alter the trajectory so far.
RESUMABLE_CHANGES = ("epochs", "eval_batch")
# seed_of streams: the trainer's STREAM_* are 1..3, splits.SCORE_SPLIT_STREAM is 14
STREAM_INIT, STREAM_DROPOUT, STREAM_POOL = 11, 12, 13


@dataclass
class RegressConfig:
    """Settings of one regressor fit; saved in its checkpoint.

    ``score_column`` (store/table column) and ``score_max`` (its declared maximum, e.g. 42 for
    NIHSS, 100 for WAB-AQ; the output is sigmoid x score_max); ``arch`` (one of ``ARCHS``),
    ``dropout`` before the linear head (0.5 as the GenBrain code); ``crop`` ((start, stop) voxel
    indices per axis of the 91x109x91 grid), ``pool`` (average-pooling factor after the crop);
    ``epochs``, ``batch_size`` (images per Adam step), ``lr``, ``seed``; ``eval_batch`` images
    per forward pass when predicting (memory only, results do not depend on it).
    """

    score_column: str = "score"
    score_max: float = 42.0
    arch: str = "resnet10-narrow"
    dropout: float = 0.5
    crop: tuple[tuple[int, int], ...] = PAPER_CROP
    pool: int = 1
    epochs: int = 50
    batch_size: int = 32
    lr: float = 5e-5
    seed: int = 0
    eval_batch: int = 16

    def __post_init__(self) -> None:
        def bad(key: str, expected: str) -> None:
            raise GenbrainInputError(
                f"regression config: '{key}' is {getattr(self, key)!r}; expected {expected}")
        if self.arch not in ARCHS:
            bad("arch", f"one of {', '.join(ARCHS)}")
        if not isinstance(self.score_column, str) or not self.score_column:
            bad("score_column", "a column name")
        if not (isinstance(self.score_max, (int, float)) and self.score_max > 0):
            bad("score_max", "a number > 0 (the score's declared maximum)")
        for key in ("pool", "epochs", "batch_size", "eval_batch"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                bad(key, "an integer >= 1")
        if not isinstance(self.seed, int) or self.seed < 0:
            bad("seed", "an integer >= 0")
        if not self.lr > 0:
            bad("lr", "a number > 0")
        if not 0 <= self.dropout < 1:
            bad("dropout", "a number in [0, 1)")
        try:
            self.crop = tuple((int(a), int(b)) for a, b in self.crop)
        except (TypeError, ValueError):
            bad("crop", "three [start, stop] voxel index pairs")
        if len(self.crop) != 3:
            bad("crop", "three [start, stop] voxel index pairs")
        self.score_max = float(self.score_max)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "regression config"
                  ) -> RegressConfig:
        """Build from a plain dict (a config section, a checkpoint); unknown keys are an error."""
        return dataclass_from_dict(cls, values, source)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-like dict (lists, not tuples), as stored in checkpoints."""
        return plain(dataclasses.asdict(self))
