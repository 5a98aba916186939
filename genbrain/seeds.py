"""Random streams keyed by a name (a site, a cohort, an image, a synthetic cohort).

A seeded draw that belongs to a named thing starts from ``numpy.random.default_rng([seed,
name_seed(name), ...])``, so it is the same whichever chunk, process or run draws it and does
not shift when other names are added. :func:`name_seed` is CRC-32, not Python's ``hash()``,
which is salted per process. Changing it changes every simulated subject, split and draw of
the pipeline: ``tests/unit/test_seeds.py`` pins its values.
"""

from __future__ import annotations

import zlib


def name_seed(name: object) -> int:
    """A stable 32-bit key of ``name``: the CRC-32 of ``str(name)`` encoded as UTF-8,
    in [0, 2**32)."""
    return zlib.crc32(str(name).encode())


__all__ = ["name_seed"]
