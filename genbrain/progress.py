"""Progress lines: how long-running loops (the DiT trainer, the clinical regressor's fit) write
durations in their log lines, one format for every stage."""

from __future__ import annotations

import math


def hms(seconds: float) -> str:
    """A duration in seconds as ``h:mm:ss`` for progress lines (``?`` when not finite)."""
    if not math.isfinite(seconds):
        return "?"
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
