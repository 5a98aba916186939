"""Import a checkpoint of the public GenBrain code (its ``DiT_UKB``) as a genbrain checkpoint.

The public training script saves, once per epoch, ``{model, ema, opt, args}`` (files such as
``0000200.pt``): the DDP module's state dict, its EMA, the AdamW state and the argparse namespace.
:func:`convert_public_checkpoint` turns that into the dict that
:func:`genbrain.training.checkpoints.load_for_sampling` and ``train(..., init_checkpoint=...)``
read, with outputs equal to the public model's for the same inputs and labels (to float rounding:
our attention is fused, theirs explicit). What it does and why:

Key mapping. Two spellings of the same network are accepted:
``public`` (the GenBrain repository's ``models.py``): ``x_embedder.proj.*`` (its
``PatchEmbed_1d``), ``y1_embedder.mlp.*`` (age), ``y2_embedder.embedding_table`` (sex),
``y3_embedder.embedding_table`` (modality); ``benchmark`` (``benchmarks/_public_dit.py``):
``x_embedder.*``, ``age_embedder.mlp.*``, ``sex_embedder.embedding_table``,
``modality_embedder.embedding_table``. Everything else (``t_embedder``, ``pos_embed``,
``blocks.*`` with timm's ``attn.qkv/proj`` and ``mlp.fc1/fc2``, ``final_layer.*``) has our
names already. A ``module.`` (DDP) or ``_orig_mod.`` (torch.compile) prefix is stripped. Any
other tensor (a fine-tuned model's extra embedders, a 2-channel patch embedding) is refused.

Weights. The public code loads ``model`` (not ``ema``) for every evaluation and fine-tune, so
``weights="model"`` is the default and becomes the imported run's ``sampling_weights``; both
state dicts are converted, so ``load_for_sampling(path, weights="ema")`` still reaches the EMA.

Architecture. Hidden size D and patch size P from ``x_embedder`` (D, 1, P), depth from the
block count, tokens T from ``pos_embed`` (1, T, D), MLP ratio from ``fc1``, modality count from
the modality table (rows - 1: its last row is the null label). Heads do not show in any shape:
``num_heads`` if given, else the ``args`` model name (``DiT-UKB-L/256``: 16, ``-B/256``: 12),
else the preset of that depth and width. The preset (the label fine-tuning checks) is the one
with the same depth, width and heads; ``patch_size`` is recorded when it differs from the
preset's. T must be ceil(V / P) for the mask's V (the public ``padding_size`` is T * P - V).

Labels.
- sex: the public code feeds UK Biobank field 31 (0 = female, 1 = male; missing -> 2, its null
  row); ours is M = 0, F = 1, null 2. With ``sex_coding="ukb"`` (default) rows 0 and 1 of the
  sex table are swapped, so our F (1) reaches their female row (0); the null row stays last.
  ``sex_coding="genbrain"`` keeps the rows (a checkpoint already in our coding).
- age: the public ``NumericalEmbedder`` z-scores raw years inside the model with
  ``data_info.json``'s ``Condition Data -> age_info`` {mean, std}, which the checkpoint does not
  hold: give ``data_info`` or ``age_norm``. Those become our ``norms["age"]``, so our
  standardisation (outside the model) gives their embedder exactly their input. The
  ``benchmark`` spelling feeds its input to the MLP as is, so its norms are {mean 0, std 1}
  unless ``age_norm`` says otherwise.
- null branch: the public model zeroes the *normalised* age of a dropped sample
  (``value_drop`` after the normaliser), uses sex row 2 and the last modality row, dropping all
  three with one mask: exactly our null (standardised age 0, null rows), so the imported
  guided branch is the one their training saw. Their *sampling* scripts instead pass raw age 0
  and sex 2 without dropping, i.e. normalised age -mean/std with the null sex row and the real
  modality: our pipeline's null uses standardised 0 there (DESIGN §6), so guided samples differ
  from the public scripts' by that choice, not by the import. (That input is still reachable:
  age 0 years, sex index 2, no ``force_drop``.) The ``benchmark`` spelling drops age to 0 of
  its input = standardised 0 under its {0, 1} norms: also identical.
- modality: same indices, same null-last table; the count is recorded in the spec.

Positional embedding. The public model initialises ``pos_embed`` with MAE's 2-D sin-cos on a
``int(sqrt(T)) + 1`` square grid (:func:`public_pos_embed`): for T = 893 that is a 30-wide
raster, our ``raster2d`` (equal to float32 rounding). It is a state-dict entry in both models,
so the checkpoint's own tensor is carried over as our ``pos_embed`` buffer whatever T is, and
the spec says ``raster2d``; ``config["public_import"]["pos_embed"]`` records whether the carried
tensor equals our raster2d (it does not for small T, whose public grid is narrower than 30).

Layout. The public vectors are the non-zero voxels of ``MNI152_T1_2mm_brain.nii.gz`` in FSL's
array order (:mod:`genbrain.layout`); the layout given is recorded as ``config["layout"]``
(:meth:`VoxelLayout.to_dict`) and its V becomes the model's ``n_voxels``.

CLI::

    python -m genbrain.model.public --checkpoint 0000200.pt --mask MNI152_T1_2mm_brain.nii.gz \\
        --data-info data_info.json --out genbrain.pt
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import pickle
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from genbrain import layout as layouts
from genbrain.errors import GenbrainInputError
from genbrain.io import atomic_path
from genbrain.layout import VoxelLayout
from genbrain.model.dit import PRESETS, dit_from_spec, raster2d_pos_embed
from genbrain.training.config import WEIGHTS, TrainConfig

log = logging.getLogger(__name__)

DIALECTS = ("public", "benchmark")
SEX_CODINGS = ("ukb", "genbrain")
#: Public model names -> heads (the GenBrain repository's ``DiT_models``).
PUBLIC_MODELS = {"DiT-UKB-B/256": 12, "DiT-UKB-L/256": 16}
_PREFIXES = ("module.", "_orig_mod.")
_RENAMES = {
    "public": {"x_embedder.proj.": "x_embedder.", "y1_embedder.": "age_embedder.",
               "y2_embedder.embedding_table.": "sex_embedder.",
               "y3_embedder.embedding_table.": "modality_embedder."},
    "benchmark": {"sex_embedder.embedding_table.": "sex_embedder.",
                  "modality_embedder.embedding_table.": "modality_embedder."},
}
_MARKERS = {"public": "y1_embedder.mlp.0.weight", "benchmark": "age_embedder.mlp.0.weight"}
# pos_embed equal to raster2d within this: float32 rounding of values in [-1, 1]
POS_EMBED_ATOL = 1e-6


def public_pos_embed(dim: int, n_tokens: int) -> np.ndarray:
    """(T, dim) float64: the public ``DiT_UKB``'s initial ``pos_embed``: MAE's 2-D sin-cos on
    a square grid of side ``int(sqrt(T)) + 1``, first T positions. Position k sits at column
    ``k % side`` (first dim/2 dims) and row ``k // side`` (last dim/2): our raster2d with that
    width."""
    side = int(n_tokens ** 0.5) + 1
    return raster2d_pos_embed(dim, n_tokens, width=side)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def read_public_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A public GenBrain checkpoint as a dict (CPU tensors), read with ``weights_only`` (the
    argparse namespace it pickles is allowed explicitly); one-line errors otherwise."""
    path = Path(path)
    if not path.is_file():
        raise GenbrainInputError(f"{path}: checkpoint not found")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise GenbrainInputError(f"{path}: not a readable checkpoint ({first})") from err
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("model"), Mapping):
        raise GenbrainInputError(f"{path}: not a public GenBrain checkpoint (expected a dict "
                                 "with a 'model' state dict, as {model, ema, opt, args})")
    return dict(ckpt)


def _plain_args(args: Any) -> dict[str, Any]:
    """The ``args`` entry as a JSON-like dict (non-JSON values as their str)."""
    if args is None:
        return {}
    items = vars(args) if isinstance(args, argparse.Namespace) else (
        dict(args) if isinstance(args, Mapping) else {})
    out = {}
    for k, v in items.items():
        out[str(k)] = v if isinstance(v, (str, int, float, bool, type(None))) else str(v)
    return out


def read_age_norm(data_info: str | os.PathLike) -> dict[str, float]:
    """``{"mean", "std"}`` from a public ``data_info.json`` (``Condition Data -> age_info``)."""
    path = Path(data_info)
    try:
        info = json.loads(path.read_text())
        age = info["Condition Data"]["age_info"]
        norm = {"mean": float(age["mean"]), "std": float(age["std"])}
    except FileNotFoundError as err:
        raise GenbrainInputError(f"{path}: data_info file not found") from err
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise GenbrainInputError(f"{path}: expected the public code's data_info.json with "
                                 "'Condition Data' -> 'age_info' -> {mean, std}") from err
    _check_norm(norm, str(path))
    return norm


def _check_norm(norm: Mapping[str, float], what: str) -> None:
    if not (math.isfinite(norm["mean"]) and math.isfinite(norm["std"]) and norm["std"] > 0):
        raise GenbrainInputError(f"{what}: age scaling {dict(norm)} needs a finite mean and a "
                                 "std > 0")


# --------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------


def _strip(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for key, value in state.items():
        for prefix in _PREFIXES:
            key = key.removeprefix(prefix)
        out[key] = value
    return out


def detect_dialect(state: Mapping[str, Tensor], what: str = "the checkpoint") -> str:
    """``public`` or ``benchmark`` (see the module docstring), from the age embedder's key."""
    state = _strip(state)
    for dialect, marker in _MARKERS.items():
        if marker in state:
            return dialect
    raise GenbrainInputError(f"{what}: not a GenBrain DiT_UKB state dict (neither "
                             f"'{_MARKERS['public']}' nor '{_MARKERS['benchmark']}' is in it)")


def map_keys(state: Mapping[str, Tensor], dialect: str) -> dict[str, Tensor]:
    """A public state dict with our key names (float tensors cast to float32, copied)."""
    out = {}
    for key, value in _strip(state).items():
        for old, new in _RENAMES[dialect].items():
            if key.startswith(old):
                key = new + key[len(old):]
                break
        if not isinstance(value, Tensor):
            continue  # (no non-tensor entries in a state dict; tolerated, not copied)
        out[key] = value.detach().to("cpu", torch.float32 if value.is_floating_point()
                                     else value.dtype).clone()
    return out


def _shape(t: Tensor | torch.Size) -> str:
    return "(" + ", ".join(str(int(s)) for s in (t.shape if isinstance(t, Tensor) else t)) + ")"


def _need(state: Mapping[str, Tensor], key: str, ndim: int, what: str) -> Tensor:
    if key not in state:
        raise GenbrainInputError(f"{what}: tensor '{key}' is missing")
    if state[key].dim() != ndim:
        raise GenbrainInputError(f"{what}: tensor '{key}' has shape {_shape(state[key])}; "
                                 f"expected {ndim} dimensions")
    return state[key]


def _heads(num_heads: int | None, args: Mapping[str, Any], depth: int, hidden: int) -> int:
    """Attention heads: explicit, else the args' model name, else the preset of that size."""
    if num_heads is not None:
        return int(num_heads)
    for key in ("num_heads", "heads"):
        if isinstance(args.get(key), int):
            return args[key]
    name = str(args.get("model", ""))
    if name in PUBLIC_MODELS:
        return PUBLIC_MODELS[name]
    size = re.search(r"DiT[-_](?:UKB[-_])?(XL|L|B|S)\b", name)
    if size:  # facebookresearch/DiT's sizes
        return {"XL": 16, "L": 16, "B": 12, "S": 6}[size.group(1)]
    found = {p["num_heads"] for p in PRESETS.values()
             if p["depth"] == depth and p["hidden_size"] == hidden}
    if len(found) == 1:
        return found.pop()
    raise GenbrainInputError(f"the number of attention heads of a depth-{depth}, hidden-"
                             f"{hidden} model is not in the checkpoint: give --num-heads")


def _preset(depth: int, hidden: int, heads: int, patch: int) -> tuple[str, int | None]:
    """(preset name, patch_size override or None) of an architecture; one-line error if none."""
    for name, p in PRESETS.items():
        if (p["depth"], p["hidden_size"], p["num_heads"]) == (depth, hidden, heads):
            return name, (None if p["patch_size"] == patch else patch)
    raise GenbrainInputError(
        f"depth {depth}, hidden {hidden}, {heads} heads matches no preset of "
        f"genbrain.model.dit.PRESETS ({', '.join(PRESETS)}); fine-tuning names the preset")


def infer_spec(state: Mapping[str, Tensor], n_voxels: int, *, num_heads: int | None = None,
               args: Mapping[str, Any] | None = None, label_dropout: float = 0.1,
               what: str = "the checkpoint") -> dict[str, Any]:
    """The :meth:`DiT.spec` of a public model (state dict with our key names) for vectors of
    ``n_voxels``; one-line errors for shapes our DiT cannot take."""
    args = args or {}
    x_w = _need(state, "x_embedder.weight", 3, what)  # (D, C_in, P)
    hidden, c_in, patch = (int(s) for s in x_w.shape)
    if c_in != 1:
        raise GenbrainInputError(f"{what}: tensor 'x_embedder.weight' has shape {_shape(x_w)}; "
                                 f"expected ({hidden}, 1, {patch}): a pretrained DiT_UKB takes "
                                 "1 input channel (this looks like a fine-tuned model)")
    depth = len({int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
    if depth == 0:
        raise GenbrainInputError(f"{what}: no transformer blocks ('blocks.0.*') in it")
    pos = _need(state, "pos_embed", 3, what)  # (1, T, D)
    n_tokens = math.ceil(n_voxels / patch)
    if int(pos.shape[1]) != n_tokens:
        raise GenbrainInputError(
            f"{what}: tensor 'pos_embed' has {int(pos.shape[1])} tokens, but the mask's "
            f"{n_voxels:,} voxels make {n_tokens} tokens of {patch}: is this the mask the "
            "model was trained with?")
    fc1 = _need(state, "blocks.0.mlp.fc1.weight", 2, what)
    mod = _need(state, "modality_embedder.weight", 2, what)
    heads = _heads(num_heads, args, depth, hidden)
    if heads < 1 or hidden % heads:
        raise GenbrainInputError(f"{what}: {heads} heads do not divide hidden size {hidden}")
    return {"n_voxels": int(n_voxels), "hidden_size": hidden, "depth": depth,
            "num_heads": heads, "patch_size": patch,
            "mlp_ratio": float(fc1.shape[0]) / hidden, "out_channels": 1,
            "pos_embed": "raster2d", "label_dropout": float(label_dropout),
            "token_centroids": None, "in_channels": 1, "n_modalities": int(mod.shape[0]) - 1,
            "n_diseases": None, "n_parts": None, "score": False, "modality_templates": False}


def check_shapes(state: Mapping[str, Tensor], spec: Mapping[str, Any], dialect: str,
                 what: str = "the checkpoint") -> None:
    """One-line error naming the first tensor (by its public name) that is missing, extra or
    of another shape than our DiT of ``spec`` holds."""
    public = {new: old for old, new in _RENAMES[dialect].items()}

    def theirs(key: str) -> str:
        for new, old in public.items():
            if key.startswith(new):
                return old + key[len(new):]
        return key

    with torch.device("meta"):  # shapes only: no memory, no initialisation cost (L/256: 460M)
        expected = {k: v.shape for k, v in dit_from_spec(spec).state_dict().items()}
    arch = (f"depth {spec['depth']}, hidden {spec['hidden_size']}, patch {spec['patch_size']}, "
            f"{spec['n_modalities']} modalities")
    for key, shape in expected.items():
        if key not in state:
            raise GenbrainInputError(f"{what}: tensor '{theirs(key)}' is missing (expected "
                                     f"shape {_shape(shape)} for {arch})")
        if state[key].shape != shape:
            raise GenbrainInputError(
                f"{what}: tensor '{theirs(key)}' has shape {_shape(state[key])}; expected "
                f"{_shape(shape)} for {arch}")
    extra = sorted(set(state) - set(expected))
    if extra:
        raise GenbrainInputError(f"{what}: unexpected tensor '{theirs(extra[0])}' (shape "
                                 f"{_shape(state[extra[0]])}): only a pretrained DiT_UKB "
                                 "(age, sex, modality labels) can be imported")


def convert_public_checkpoint(ckpt: Mapping[str, Any], layout: VoxelLayout, *,
                              weights: str = "model",
                              age_norm: Mapping[str, float] | None = None,
                              data_info: str | os.PathLike | None = None,
                              sex_coding: str = "ukb", num_heads: int | None = None,
                              label_dropout: float = 0.1,
                              source: str = "the checkpoint") -> dict[str, Any]:
    """A public ``{model, ema, opt, args}`` checkpoint -> a genbrain checkpoint dict
    (``model``, ``ema``, ``step`` 0, empty ``losses``, ``config`` with ``train``, ``model``
    spec, ``norms``, ``surgeries`` [], ``init_checkpoint`` None, ``layout`` and a
    ``public_import`` record). See the module docstring for every choice.

    Args:
        ckpt: the loaded public checkpoint (:func:`read_public_checkpoint`).
        layout: the voxel layout the model was trained on (its V is the model's n_voxels).
        weights: which state dict sampling and fine-tuning use by default, "model" or "ema".
        age_norm: the public age scaling {mean, std} (years); else read from ``data_info``.
        data_info: the public code's ``data_info.json`` (age scaling of the ``public`` dialect).
        sex_coding: "ukb" (theirs: 0 = female, 1 = male) or "genbrain" (0 = M, 1 = F).
        num_heads: attention heads, when neither ``args`` nor a preset tells.
        label_dropout: the CFG dropout recorded for fine-tuning (DiT_UKB's default 0.1).
        source: the checkpoint's name for error messages.
    """
    if weights not in WEIGHTS:
        raise GenbrainInputError(f"weights '{weights}' is unknown; expected one of "
                                 f"{', '.join(WEIGHTS)}")
    if sex_coding not in SEX_CODINGS:
        raise GenbrainInputError(f"sex coding '{sex_coding}' is unknown; expected one of "
                                 f"{', '.join(SEX_CODINGS)}")
    has_ema = isinstance(ckpt.get("ema"), Mapping)
    if weights == "ema" and not has_ema:
        raise GenbrainInputError(f"{source}: weights 'ema' asked for but the checkpoint has no "
                                 "'ema' state dict")
    args = _plain_args(ckpt.get("args"))
    dialect = detect_dialect(ckpt["model"], source)

    # age scaling: what turns years into the embedder's input
    if age_norm is not None:
        norm, norm_from = {"mean": float(age_norm["mean"]), "std": float(age_norm["std"])}, \
            "given"
        _check_norm(norm, source)
    elif data_info is not None:
        norm, norm_from = read_age_norm(data_info), str(data_info)
    elif dialect == "public" and args.get("data_info") and Path(args["data_info"]).is_file():
        norm, norm_from = read_age_norm(args["data_info"]), str(args["data_info"])
    elif dialect == "benchmark":
        norm, norm_from = {"mean": 0.0, "std": 1.0}, "benchmark dialect: input used as is"
    else:
        raise GenbrainInputError(
            f"{source}: the age scaling of the public model is not in the checkpoint (it is "
            "its data_info.json's 'Condition Data' -> 'age_info'): give --data-info FILE or "
            "--age-mean M --age-std S")

    states = {"model": map_keys(ckpt["model"], dialect)}
    if has_ema:
        if detect_dialect(ckpt["ema"], f"{source} (ema)") != dialect:
            raise GenbrainInputError(f"{source}: 'model' and 'ema' use different key names")
        states["ema"] = map_keys(ckpt["ema"], dialect)
    spec = infer_spec(states["model"], layout.n_voxels, num_heads=num_heads, args=args,
                      label_dropout=label_dropout, what=source)
    for name, state in states.items():
        check_shapes(state, spec, dialect, f"{source} ({name})")  # sex table: (M, F, null)
        if sex_coding == "ukb":  # their row 0 = female, 1 = male; ours 0 = M, 1 = F
            state["sex_embedder.weight"] = state["sex_embedder.weight"][[1, 0, 2]].clone()
    if not has_ema:  # the sampler can still be asked for "ema": it gets the same weights
        states["ema"] = {k: v.clone() for k, v in states["model"].items()}

    preset, patch = _preset(spec["depth"], spec["hidden_size"], spec["num_heads"],
                            spec["patch_size"])
    ours = torch.tensor(raster2d_pos_embed(spec["hidden_size"], math.ceil(
        layout.n_voxels / spec["patch_size"])), dtype=torch.float32)
    diff = float((states[weights]["pos_embed"][0] - ours).abs().max())
    pos_note = (f"raster2d (max |difference| {diff:.1e})" if diff <= POS_EMBED_ATOL else
                f"carried from the checkpoint (differs from raster2d by up to {diff:.3g})")
    train = TrainConfig(preset=preset, patch_size=patch, pos_embed="raster2d",
                        prediction="epsilon", n_modalities=spec["n_modalities"],
                        label_dropout=label_dropout, sampling_weights=weights)
    if isinstance(args.get("global_batch_size"), int) and args["global_batch_size"] > 0:
        train.global_batch = args["global_batch_size"]
    if isinstance(args.get("global_seed"), int) and args["global_seed"] >= 0:
        train.seed = args["global_seed"]
    epoch = Path(source).stem
    return {
        "model": states["model"], "ema": states["ema"], "step": 0,
        "losses": torch.zeros(0, dtype=torch.float64),
        "config": {
            "train": train.to_dict(), "model": spec, "norms": {"age": norm},
            "surgeries": [], "init_checkpoint": None, "layout": layout.to_dict(),
            "public_import": {
                "source": source, "dialect": dialect, "weights": weights,
                "ema_in_checkpoint": has_ema, "epoch": int(epoch) if epoch.isdigit() else None,
                "sex_coding": sex_coding, "age_norm_from": norm_from, "pos_embed": pos_note,
                "args": args,
            },
        },
        "versions": {"torch": str(torch.__version__)},
    }


def import_public_checkpoint(checkpoint: str | os.PathLike, mask: str | os.PathLike,
                             out: str | os.PathLike, **options: Any) -> Path:
    """Read a public checkpoint, convert it (:func:`convert_public_checkpoint`, ``options``
    passed on) for the layout of ``mask`` and write it atomically to ``out``. ``mask``: a NIfTI
    file (the non-zero voxels in its array order: FSL's ``MNI152_T1_2mm_brain.nii.gz`` for
    the public models), or the layout names ``fsl-t1-brain-nonzero`` / ``fsl-brain-mask``."""
    mask = str(mask)
    if mask == layouts.PUBLIC:
        layout = layouts.public_layout()
    elif mask == layouts.STANDARD:
        layout = layouts.standard_layout()
    else:
        layout = layouts.layout_from_image(mask)
    if layout.sha256 != layouts.KNOWN_SHA256[layouts.PUBLIC]:
        # not detectable from the weights: 228,483 voxels make 893 tokens of 256 as well
        log.warning("%s: layout %s is not the %s layout the public GenBrain models were "
                    "trained on; the model will see misaligned patches unless its vectors "
                    "really used this mask", mask, layout, layouts.PUBLIC)
    converted = convert_public_checkpoint(read_public_checkpoint(checkpoint), layout,
                                          source=str(checkpoint), **options)
    out = Path(out)
    with atomic_path(out) as tmp:
        torch.save(converted, tmp)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """CLI; returns the exit status (2 with a one-line message on bad input)."""
    parser = argparse.ArgumentParser(
        prog="python -m genbrain.model.public",
        description="Convert a public GenBrain DiT_UKB checkpoint to a genbrain checkpoint.")
    parser.add_argument("--checkpoint", required=True, help="public {model, ema, opt, args} .pt")
    parser.add_argument("--mask", required=True,
                        help="the mask its vectors use (FSL's MNI152_T1_2mm_brain.nii.gz), or "
                             f"'{layouts.PUBLIC}' to find or derive it")
    parser.add_argument("--out", required=True, help="genbrain checkpoint to write")
    parser.add_argument("--weights", choices=WEIGHTS, default="model",
                        help="default weights to sample and fine-tune from (public code: model)")
    parser.add_argument("--data-info", help="the public data_info.json (its age scaling)")
    parser.add_argument("--age-mean", type=float, help="age scaling mean (years)")
    parser.add_argument("--age-std", type=float, help="age scaling std (years)")
    parser.add_argument("--sex-coding", choices=SEX_CODINGS, default="ukb",
                        help="sex labels of the checkpoint: ukb (0 = female) or genbrain (0 = M)")
    parser.add_argument("--num-heads", type=int, help="attention heads, if not inferable")
    a = parser.parse_args(argv)
    try:
        if (a.age_mean is None) != (a.age_std is None):
            raise GenbrainInputError("give both --age-mean and --age-std, or neither")
        norm = None if a.age_mean is None else {"mean": a.age_mean, "std": a.age_std}
        out = import_public_checkpoint(a.checkpoint, a.mask, a.out, weights=a.weights,
                                       age_norm=norm, data_info=a.data_info,
                                       sex_coding=a.sex_coding, num_heads=a.num_heads)
    except GenbrainInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
