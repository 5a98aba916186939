"""A checkpoint of the public GenBrain code with random weights, for the tests of its import.

The public model is ``benchmarks/_public_dit.py``'s ``PublicDiT`` (the public DiT_UKB's
modules) at nano widths (depth 2, hidden 64, 2 heads). ``tests/unit/test_public_import.py``
checks the import itself; ``tests/workflow/test_smoke.py`` imports :func:`write_full_size` with
the card's command and fine-tunes, samples, audits and exports it through Snakemake.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from genbrain.model.public import public_pos_embed

# the repository's benchmarks/ folder (a site-packages package is also named "benchmarks")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _public_dit import PublicDiT

D, DEPTH, HEADS, N_MOD = 64, 2, 2, 3
AGE = {"mean": 63.5, "std": 7.25}  # the public data_info.json's age_info (years)
#: the public layout's voxels and the paper's patch: 893 tokens
FULL_V, FULL_P = 228_453, 256


def spelled(state: dict, dialect: str) -> dict:
    """PublicDiT's state dict in the ``benchmark`` or the GenBrain repository's spelling."""
    if dialect == "benchmark":
        return dict(state)
    renames = {"x_embedder.": "x_embedder.proj.", "age_embedder.": "y1_embedder.",
               "sex_embedder.": "y2_embedder.", "modality_embedder.": "y3_embedder."}
    out = {}
    for key, value in state.items():
        for old, new in renames.items():
            if key.startswith(old):
                key = new + key[len(old):]
        out[key] = value
    return out


def full_size_model(random: bool = True) -> PublicDiT:
    """A public nano DiT_UKB on the public layout (228,453 voxels, patch 256, 893 tokens) with
    the public pos_embed and, if ``random``, every other weight random (std 0.1: every output
    depends on every voxel's token; the public init zeroes the adaLN and output layers)."""
    torch.manual_seed(0)
    model = PublicDiT(FULL_V, D, DEPTH, HEADS, patch_size=FULL_P, n_modalities=N_MOD)
    with torch.no_grad():
        if random:
            for name, p in model.named_parameters():
                if name != "pos_embed":
                    p.copy_(torch.randn(p.shape) * 0.1)
        model.pos_embed.copy_(torch.tensor(public_pos_embed(D, 893)).float().unsqueeze(0))
    return model


def write_full_size(path: Path) -> Path:
    """:func:`full_size_model` saved as the public training script saves it, in the GenBrain
    repository's spelling (``{model, args}``; args None: the heads come from the preset)."""
    torch.save({"model": spelled(full_size_model().state_dict(), "public"), "args": None}, path)
    return path
