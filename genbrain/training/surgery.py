"""Fine-tuning surgery and trainability: which weights a run starts from and which train.

A fine-tune starts from the weights of its init checkpoint (those its sampler would use) and
inherits its architecture (:data:`ARCHITECTURE`: a researcher never restates the model they
start from). Surgeries (:mod:`genbrain.model.dit`) add zero-initialised heads, modality rows and
input channels, so the fine-tune begins exactly where the pretrained model was. Those the data
imply are added by :func:`implied_surgeries`: a disease head for ``diagnosis_levels``, a score
head for ``score_column``, modality rows for modality indices beyond the table, input channels
for ``sources``, and with ``label_tokens`` the heads' label tokens; a researcher names none of
them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from genbrain.errors import GenbrainInputError
from genbrain.model.dit import PRESETS, DiT, dit_from_spec
from genbrain.seeds import seed_of
from genbrain.training.config import STREAM_INIT, TrainConfig
from genbrain.training.data import VoxelDataset

SURGERIES = ("add_disease_head", "add_score_head", "add_part_head", "extend_modalities",
             "widen_input", "add_label_tokens")
#: TrainConfig keys that describe the model; a fine-tune takes them from its init checkpoint.
ARCHITECTURE = ("preset", "patch_size", "pos_embed", "modality_templates", "prediction")
Surgery = str | Sequence[Any]  # "add_score_head" or ("add_disease_head", 2)


def inherit_architecture(values: Mapping[str, Any], init_train: Mapping[str, Any]
                         ) -> dict[str, Any]:
    """TrainConfig ``values`` with the architecture keys of an init checkpoint's training
    config filled in (a value the researcher gave is kept, and :func:`build_model` checks it)."""
    older = {"modality_templates": False, "prediction": "epsilon"}
    out = dict(values)
    for key in ARCHITECTURE:
        out.setdefault(key, init_train.get(key, older.get(key)))
    return out


def implied_surgeries(model: DiT, data: VoxelDataset, label_tokens: bool = False
                      ) -> list[list[Any]]:
    """The surgeries the training items need that ``model`` lacks (in a fixed order), with
    ``label_tokens`` (TrainConfig's) last the label tokens of its heads
    (:func:`label_token_surgeries`); a head of another size than the task's is an error naming
    both."""
    out: list[list[Any]] = []
    levels = data.diagnosis_levels
    if levels:
        table = model.disease_embedder
        if table is None:
            out.append(["add_disease_head", len(levels)])
        elif table.num_embeddings - 1 != len(levels):
            raise GenbrainInputError(
                f"the init model's disease head has {table.num_embeddings - 1} classes but the "
                f"task's diagnosis_levels {list(levels)} has {len(levels)}")
    if data.score_column and model.score_embedder is None:
        out.append(["add_score_head"])
    n_mod = model.modality_embedder.num_embeddings - 1
    top = int(data._labels["modality"].max())
    if top >= n_mod:
        out.append(["extend_modalities", top + 1 - n_mod])
    extra = model.in_channels - model.out_channels
    if len(data.sources) > extra:
        out.append(["widen_input", len(data.sources) - extra])
    if label_tokens:
        out += label_token_surgeries(model, [name for name, *_ in out])
    return out


def label_token_surgeries(model: DiT, adding: Sequence[str] = ()) -> list[list[Any]]:
    """``[["add_label_tokens"]]`` when ``model``, with the heads of the surgeries named in
    ``adding``, lacks its label tokens; ``[]`` when it has them; an error naming TrainConfig's
    ``label_tokens`` when it has neither a disease nor a score head."""
    heads = {"add_disease_head", "add_score_head"} & set(adding)
    if not heads and model.disease_embedder is None and model.score_embedder is None:
        raise GenbrainInputError("training config: 'label_tokens' is true but the model has no "
                                 "disease or score head to add label tokens to; condition the "
                                 "task on 'diagnosis' or a score, or set label_tokens false")
    return [] if model.label_tokens else [["add_label_tokens"]]


def parse_surgeries(surgeries: Sequence[Surgery]) -> list[list[Any]]:
    out = []
    for s in surgeries:
        s = [s] if isinstance(s, str) else list(s)
        if not s or s[0] not in SURGERIES:
            raise GenbrainInputError(f"unknown surgery {s!r}; expected one of "
                                     f"{', '.join(SURGERIES)}")
        out.append(s)
    return out


def operate(model: DiT, surgeries: Sequence[Sequence[Any]], seed: int) -> None:
    """Apply surgeries in order; their random draws (add_score_head) are seeded too."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_of(seed, STREAM_INIT, 1))
        for name, *args in surgeries:
            try:
                getattr(model, name)(*args)
            except TypeError as err:  # wrong number or type of arguments
                raise GenbrainInputError(f"surgery {[name, *args]!r}: {err}") from err


def build_model(config: TrainConfig, n_voxels: int, init: Mapping | None,
                 init_path: Path | None, token_centroids: Any) -> DiT:
    """A fresh model seeded from config.seed, or the weights of an init checkpoint."""
    with torch.random.fork_rng(devices=[]):  # seeded init that leaves the caller's RNG alone
        torch.manual_seed(seed_of(config.seed, STREAM_INIT))
        if init is None:
            arch = dict(PRESETS[config.preset])
            arch["patch_size"] = config.patch_size or arch["patch_size"]
            return DiT(n_voxels, **arch, n_modalities=config.n_modalities,
                       pos_embed=config.pos_embed, token_centroids=token_centroids,
                       label_dropout=config.label_dropout,
                       modality_templates=config.modality_templates)
        pre = init["config"]["train"]
        older = {"modality_templates": False, "prediction": "epsilon"}  # before the keys
        for key in ARCHITECTURE:
            if pre.get(key, older.get(key)) != getattr(config, key):
                raise GenbrainInputError(
                    f"{init_path}: the init checkpoint has {key} {pre.get(key)!r} but the "
                    f"training config asks for {getattr(config, key)!r}")
        model = dit_from_spec(init["config"]["model"])
    model.load_state_dict(init[pre["sampling_weights"]])  # the weights its sampler would use
    model.label_dropout = config.label_dropout
    return model


def set_templates(model: DiT, data: VoxelDataset, max_images: int) -> list[int]:
    """Set the template of every modality of the training items that the model lacks: the
    float64 mean of at most ``max_images`` of its items, evenly spread (deterministic, so every
    rank computes the same image). Returns the modality indices set."""
    if model.modality_templates is None:
        return []
    done = []
    modality = data._labels["modality"]
    for m in np.unique(modality):
        if model.has_modality_template(int(m)):
            continue
        items = np.flatnonzero(modality == m)
        items = items[np.linspace(0, len(items) - 1, min(max_images, len(items))).astype(int)]
        total = np.zeros(data.n_voxels, np.float64)
        for start in range(0, len(items), 64):
            total += data.__getitems__(items[start:start + 64])["x"][:, 0].double().sum(0).numpy()
        model.set_modality_template(int(m), total / len(items))
        done.append(int(m))
    return done


def trainable(model: DiT, before: Mapping[str, nn.Parameter], config: TrainConfig
               ) -> dict[str, bool | Tensor]:
    """Per parameter: True (trains), False (frozen) or a bool mask of the entries that train.
    ``before`` holds the parameters as they were before surgery."""
    depth = len(model.blocks)
    tail = tuple(f"blocks.{i}." for i in range(max(depth - config.finetune_k, 0), depth))
    tail += ("final_layer.",)
    rules: dict[str, bool | Tensor] = {}
    for name, p in model.named_parameters():
        old = before.get(name)
        # everything trains, a new head, or one of the last k blocks
        if (config.finetune == "full" or old is None
                or (config.finetune == "last-k-blocks" and name.startswith(tail))):
            rules[name] = True
        elif old.shape == p.shape:  # pretrained, or a pretrained value copied by surgery
            rules[name] = False
        else:
            rules[name] = new_entries(name, old.shape, p.shape)
    if not any(r is True or (isinstance(r, Tensor) and bool(r.any())) for r in rules.values()):
        raise GenbrainInputError(f"finetune '{config.finetune}' leaves nothing to train (give "
                                 "surgeries that add a head, or another finetune mode)")
    return rules


def new_entries(name: str, old: torch.Size, new: torch.Size) -> Tensor:
    """Entries surgery added to an enlarged parameter: the new modality rows (the null row
    moved to the end keeps its pretrained value) or the new input channels of the patch
    embedding."""
    mask = torch.zeros(new, dtype=torch.bool)
    if name == "modality_embedder.weight":
        mask[old[0] - 1: new[0] - 1] = True
    elif name == "x_embedder.weight":
        mask[:, old[1]:] = True
    else:  # a surgery added in dit.py needs its rule here
        raise AssertionError(f"no rule for the enlarged parameter {name}")
    return mask
