"""The embedded default: simulated multi-site cohorts with known ground truth."""

from genbrain.simulate.cohort import (
    Generator,
    ground_truth,
    participants,
    site_specs,
)
from genbrain.simulate.write import read_truth, write_chunk, write_truth

__all__ = [
    "Generator",
    "ground_truth",
    "participants",
    "read_truth",
    "site_specs",
    "write_chunk",
    "write_truth",
]
