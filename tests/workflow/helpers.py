"""Running Snakemake from the tests: the venv's binary, the repo's Snakefile, a hard timeout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def snakemake(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``snakemake -s <repo>/Snakefile ARGS`` and return the completed process."""
    cmd = [str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), *args]
    return subprocess.run(cmd, cwd=cwd or ROOT, capture_output=True, text=True, timeout=timeout)
