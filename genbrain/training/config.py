"""Settings of a training run and the keys of its random streams.

:class:`TrainConfig` is saved in every checkpoint (``config["train"]``), so a model's settings,
its conditions among them (:mod:`genbrain.conditions`), travel with its weights.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from genbrain.errors import GenbrainInputError
from genbrain.model.diffusion import PREDICTIONS
from genbrain.model.dit import N_MODALITIES, PRESETS

FINETUNE_MODES = ("full", "new-modules-only", "last-k-blocks")
WEIGHTS = ("ema", "model")
TRAIN_PRECISIONS = ("auto", "fp32", "bf16")
CHECKPOINT = "checkpoint.pt"
#: TrainConfig keys a resumed run may change: they do not alter the trajectory (``compile``
#: only its float rounding, as the number of processes does).
RESUMABLE_CHANGES = ("steps", "checkpoint_every", "log_every", "sampling_weights", "compile")
#: TrainConfig keys a fine-tune may set (its architecture comes from the init checkpoint and
#: its data and conditions from the task): the fine-tuning stage's tasks take all of them
#: (genbrain.finetune.TRAIN_KEYS)
FINETUNE_KEYS = ("steps", "global_batch", "micro_batch", "lr", "weight_decay", "ema_decay",
                 "label_dropout", "seed", "checkpoint_every", "log_every", "sampling_weights",
                 "precision", "compile", "finetune", "finetune_k", "template_images",
                 "label_tokens", "label_tokens_lr", "label_heads_lr")
#: ... and an image task's DiT fine-tunes all but these (genbrain.imaging.plan.TRAIN_KEYS):
#: the seed is the top-level one, the whole model trains, and there is no label head
NOT_IMAGING_KEYS = ("seed", "finetune", "finetune_k", "label_tokens", "label_tokens_lr",
                    "label_heads_lr")
# independent random streams of a seed (genbrain.seeds.seed_of(seed, STREAM_*, ...))
STREAM_ORDER, STREAM_ITEM, STREAM_INIT = 1, 2, 3


def dataclass_from_dict(cls, values: Mapping[str, Any], source: str):
    """``cls(**values)`` for a settings dataclass; an unknown key is a one-line error naming
    ``source`` and the keys it accepts."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise GenbrainInputError(f"{source}: unknown key '{unknown[0]}'; expected some of: "
                                 f"{', '.join(names)}")
    return cls(**values)


def plain(obj: Any) -> Any:
    """JSON-like copy (tuples -> lists), so configs compare equal before and after saving."""
    return json.loads(json.dumps(obj))


@dataclass
class TrainConfig:
    """Settings of one training run; saved in its checkpoint.

    Model (a fresh run; fine-tuning takes the architecture of ``init_checkpoint``): ``preset``
    from ``PRESETS``; ``patch_size`` overrides the preset's (small tests); ``pos_embed``;
    ``prediction``: what the network predicts, ``epsilon`` (the paper) or ``v`` (see
    :mod:`genbrain.model.diffusion`); ``modality_templates``: embed each modality's mean
    training image into the tokens (see :mod:`genbrain.model.dit`; the mean is taken over at
    most ``template_images`` images per modality, evenly spread over the training items);
    ``n_modalities`` rows of the modality table.
    Data: ``modalities`` keeps only these store modalities (None = all); ``diagnosis_levels``
    feeds ``diagnosis`` as the disease label (index = position); ``score_column`` feeds that
    column, z-scored, as the score label; ``sources`` pairs each item with the same
    participant's images of these modalities as extra input channels (image-conditioned
    tasks; the model needs as many extra channels, see the ``widen_input`` surgery);
    ``demographics`` False feeds age and sex as their null values (the paper's image tasks
    condition on the modality only). See :mod:`genbrain.conditions`.
    Optimisation: ``steps`` optimizer steps of ``global_batch`` images (summed over ranks),
    ``micro_batch`` images per forward pass on a rank (None = the rank's whole share; smaller
    values accumulate gradients), AdamW (``lr``, ``weight_decay``, ``betas``), ``ema_decay``,
    ``label_dropout`` (CFG: all labels of an image dropped together), ``seed``.
    Bookkeeping: ``checkpoint_every``, ``log_every`` (steps). ``finetune``: one of
    ``FINETUNE_MODES``, with ``finetune_k`` blocks for ``last-k-blocks``. ``label_tokens``: give
    the model's disease and score heads label tokens, a spatial path for regional effects (the
    ``add_label_tokens`` surgery after the heads', see :mod:`genbrain.model.dit`; not in the
    paper); new parameters, they train in every ``finetune`` mode, at ``label_tokens_lr``
    (None = ``lr``: zero-initialised, AdamW moves each entry by about lr per step, so short
    fine-tunes may want them faster than the pretrained weights); ``label_heads_lr`` the same
    for the disease and score embedders (their path through adaLN, zero-initialised too).
    ``sampling_weights``:
    which weights (``ema`` or ``model``) sampling uses by default; short runs want ``model``
    (with decay 0.9999 the EMA is still ~90% initial weights after 1,000 steps).
    ``precision``: ``auto`` (bf16 autocast on CUDA, fp32 on CPU), ``fp32`` or ``bf16`` (autocast
    on any device; ~1.4x for the demo's train step on an AMD EPYC with AVX512-BF16).
    ``compile``: run the DiT blocks through ``torch.compile`` (None = on CUDA only; 1.39x for
    L/256 on an H200; where compilation fails, one warning and eager, see
    :meth:`genbrain.model.dit.DiT.compile_blocks`).
    """

    preset: str = "L/256"
    patch_size: int | None = None
    pos_embed: str = "raster2d"
    prediction: str = "epsilon"
    modality_templates: bool = False
    template_images: int = 2000
    n_modalities: int = N_MODALITIES
    modalities: list[str] | None = None
    diagnosis_levels: list[str] | None = None
    score_column: str | None = None
    sources: list[str] | None = None
    demographics: bool = True
    steps: int = 1000
    global_batch: int = 192
    micro_batch: int | None = None
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    ema_decay: float = 0.9999
    label_dropout: float = 0.1
    seed: int = 0
    checkpoint_every: int = 1000
    log_every: int = 100
    finetune: str = "full"
    finetune_k: int = 2
    label_tokens: bool = False
    label_tokens_lr: float | None = None
    label_heads_lr: float | None = None
    sampling_weights: str = "ema"
    precision: str = "auto"
    compile: bool | None = None

    def __post_init__(self) -> None:
        def bad(key: str, expected: str) -> None:
            raise GenbrainInputError(
                f"training config: '{key}' is {getattr(self, key)!r}; expected {expected}")
        if self.preset not in PRESETS:
            bad("preset", f"one of {', '.join(PRESETS)}")
        if self.finetune not in FINETUNE_MODES:
            bad("finetune", f"one of {', '.join(FINETUNE_MODES)}")
        if self.prediction not in PREDICTIONS:
            bad("prediction", f"one of {', '.join(PREDICTIONS)}")
        if self.precision not in TRAIN_PRECISIONS:
            bad("precision", f"one of {', '.join(TRAIN_PRECISIONS)}")
        if self.sampling_weights not in WEIGHTS:
            bad("sampling_weights", f"one of {', '.join(WEIGHTS)}")
        if not (self.compile is None or isinstance(self.compile, bool)):
            bad("compile", "true, false or null")
        if not isinstance(self.label_tokens, bool):
            bad("label_tokens", "true or false")
        for key in ("steps", "global_batch", "checkpoint_every", "log_every", "finetune_k",
                    "n_modalities", "template_images"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                bad(key, "an integer >= 1")
        for key in ("micro_batch", "patch_size"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                bad(key, "an integer >= 1 or null")
        if not isinstance(self.seed, int) or self.seed < 0:
            bad("seed", "an integer >= 0")
        for key, what in (("label_tokens_lr", "tokens"), ("label_heads_lr", "heads")):
            value = getattr(self, key)
            if value is not None and not (isinstance(value, (int, float)) and value > 0):
                bad(key, f"a number > 0 or null (the label {what} train at lr)")
        if not self.lr > 0 or self.weight_decay < 0:
            bad("lr" if not self.lr > 0 else "weight_decay", "lr > 0 and weight_decay >= 0")
        if not 0 <= self.ema_decay <= 1:
            bad("ema_decay", "a number in [0, 1]")
        if not 0 <= self.label_dropout < 1:
            bad("label_dropout", "a number in [0, 1)")
        if self.sources is not None and (not self.sources or
                                         len(set(self.sources)) != len(self.sources)):
            bad("sources", "a non-empty list of distinct modalities or null")
        self.betas = tuple(self.betas)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "training config") -> TrainConfig:
        """Build from a plain dict (a config section, a checkpoint); unknown keys are an error."""
        return dataclass_from_dict(cls, values, source)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-like dict (lists, not tuples), as stored in checkpoints."""
        return plain(dataclasses.asdict(self))

