"""Running Snakemake from the tests: the venv's binary, the repo's Snakefile, a hard timeout."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def snakemake(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``snakemake -s <repo>/Snakefile ARGS`` and return the completed process."""
    cmd = [str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), *args]
    return subprocess.run(cmd, cwd=cwd or ROOT, capture_output=True, text=True, timeout=timeout,
                          check=False)


def rule_blocks() -> dict[str, tuple[str, str]]:
    """Rule name -> (its .smk file name, its text from ``rule <name>:`` up to the next rule),
    for every rule of rules/*.smk."""
    out = {}
    for smk in sorted((ROOT / "rules").glob("*.smk")):
        for block in re.split(r"\n(?=rule )", smk.read_text()):
            if block.startswith("rule "):
                out[block.split(":")[0][5:].strip()] = (smk.name, block)
    return out


def fake_checkpoint(path: Path, **record) -> Path:
    """A file with the keys of a genbrain training checkpoint (no weights: a dry run reads only
    its pickle's keys and conditions), or ``record`` instead."""
    import torch

    torch.save(record or {"model": {"w": torch.zeros(2)}, "ema": {"w": torch.zeros(2)},
                          "step": 0, "config": {"train": {"demographics": True},
                                                "norms": {"age": {"mean": 60.0, "std": 10.0}},
                                                "model": {}}}, path)
    return path
