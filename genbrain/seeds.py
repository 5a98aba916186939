"""Seeds of independent random streams, so every draw of the pipeline is a function of the
config's seed and of what is drawn, not of the order in which things run.

- :func:`seed_of`: a stream keyed by integers (the trainer's order, item noise and init
  streams of a seed, ``seed_of(seed, STREAM_ITEM, step, j)``; the clinical regressor's).
- :func:`name_seed`: the integer key of a name (a site, a cohort, an image, a synthetic
  cohort): a draw that belongs to a named thing starts from ``numpy.random.default_rng([seed,
  name_seed(name), ...])``, so it is the same whichever chunk, process or run draws it and does
  not shift when other names are added. CRC-32, not Python's ``hash()``, which is salted per
  process.

Changing either changes every seeded result of the pipeline: ``tests/unit/test_seeds.py``
pins their values.
"""

from __future__ import annotations

import zlib

import numpy as np


def seed_of(*keys: int) -> int:
    """A 63-bit seed hashed from non-negative integer keys (independent streams per key)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0] >> np.uint64(1))


def name_seed(name: object) -> int:
    """A stable 32-bit key of ``name``: the CRC-32 of ``str(name)`` encoded as UTF-8,
    in [0, 2**32)."""
    return zlib.crc32(str(name).encode())


__all__ = ["name_seed", "seed_of"]
