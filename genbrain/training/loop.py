"""One training loop for pretraining and every fine-tuning head.

The loop. :func:`train` fits a :class:`~genbrain.model.dit.DiT` to the images of one or more
image stores with the IDDPM hybrid loss of :class:`~genbrain.model.diffusion.GaussianDiffusion`.
Each optimizer step consumes one global batch of ``global_batch`` images: under torchrun
(DistributedDataParallel; nccl on CUDA, gloo on CPU) every rank takes a disjoint equal share,
and each rank cuts its share into micro-batches whose gradients accumulate, so the step is the
same whatever the world size. Then AdamW steps and the EMA copy follows (buffers, i.e. the
positional embedding, copied). bf16 autocast and TF32 matmuls on CUDA, fp32 on CPU (``precision``
chooses otherwise: bf16 autocast also pays on CPUs with AVX512-BF16 or AMX). Rank 0 logs
(step, loss, steps/s, ETA) every ``log_every`` steps and writes the checkpoints.

Fine-tuning is the same loop: ``init_checkpoint`` supplies pretrained weights (those that
:func:`load_for_sampling` would give) and the surgeries the data imply (a disease head for
``config.diagnosis_levels``, a score head for ``config.score_column``, modality rows for new
modality indices, input channels for ``config.sources``, the heads' label tokens for
``config.label_tokens``; :mod:`genbrain.training.surgery`) are applied after any given
explicitly; ``config.finetune`` chooses what trains: ``full`` (everything),
``new-modules-only`` (only what surgery created: new heads, label tokens, new modality rows, new
input channels) or ``last-k-blocks`` (that, plus the last k DiT blocks and the final layer).
Image-conditioned tasks (``config.sources``) append the same participant's source images to
the noisy input as extra channels, zeroed with the labels when the labels are dropped.

Labels: :mod:`genbrain.conditions` (one encoding for training and sampling). Age and score are
z-scored with a mean and std computed once over the training table (one value per participant),
except that a fine-tuning run inherits the age scaling of its init checkpoint so the pretrained
age embedder keeps its meaning. The scalings are saved in the checkpoint (``config.norms``) so
that sampling applies the same ones, and so are the ranges of age and score seen in training
(``config.ranges``; a fine-tune's age range spans its init model's), which synthetic
covariates are checked against.

Where things are: the run's settings in :mod:`genbrain.training.config`, items and their order
in :mod:`genbrain.training.data`, surgery and trainability in
:mod:`genbrain.training.surgery`, checkpoint reading, resume checks, writing and loading in
:mod:`genbrain.training.checkpoints`; this module holds the loop.

A checkpoint (``out_dir/checkpoint.pt``; written atomically by rank 0 every ``checkpoint_every``
steps and at the end) holds ``model``, ``ema`` (state dicts), ``optimizer``, ``step``,
``data_position`` (epoch, offset, n_items), ``rng`` (the global torch and CUDA states),
``losses`` (float64 tensor: the mean loss of every step since step 1, for loss curves) and
``config`` = {train: TrainConfig as a dict, model: DiT.spec(), norms, ranges, surgeries,
init_checkpoint}.

Exact resume. Rerunning :func:`train` with the same ``out_dir`` loads the checkpoint and goes
on. Every random number of step s is a function of (seed, s), nothing else:
- data order: the items form an endless stream of per-epoch permutations, epoch e drawn from a
  ``torch.Generator`` seeded with (seed, e); step s takes the next ``global_batch`` items from
  the checkpointed position (epoch, offset);
- the timestep, noise and label-dropout draw of the item in slot j of step s's global batch come
  from a ``torch.Generator`` seeded with (seed, s, j).
So the generators' state is implied by the checkpointed step and the global RNG is never used by
the loop: a run killed after a checkpoint and rerun ends bitwise equal to an uninterrupted run
(on CPU; on CUDA, kernels with atomic adds make it equal to float rounding). As draws are keyed
by global slot, not by rank, neither the number of ranks nor the micro-batch size changes the
run beyond float summation order. ``config.compile`` (on CUDA by default) runs the DiT blocks
through ``torch.compile``, which changes float rounding only; the checkpoint's keys are those
of an eager run.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from genbrain.conditions import Conditions, inherited_ranges
from genbrain.errors import GenbrainInputError
from genbrain.model.diffusion import GaussianDiffusion
from genbrain.model.dit import LABEL_HEAD_PREFIXES, LABEL_TOKEN_PARAMS, DiT
from genbrain.precision import use_bf16
from genbrain.progress import hms
from genbrain.seeds import seed_of
from genbrain.store import ImageStore
from genbrain.training.checkpoints import (
    check_resume,
    clear_killed_writes,
    read_checkpoint,
    save_checkpoint,
)
from genbrain.training.config import (
    CHECKPOINT,
    STREAM_ITEM,
    TrainConfig,
    plain,
)
from genbrain.training.data import ItemOrder, MicroBatchSampler, VoxelDataset, collated
from genbrain.training.surgery import (
    Surgery,
    build_model,
    implied_surgeries,
    label_token_surgeries,
    operate,
    parse_surgeries,
    set_templates,
    trainable,
)

__all__ = ["TrainResult", "TrainingDiverged", "matmul_precision", "train"]

log = logging.getLogger(__name__)

StoreLike = ImageStore | str | os.PathLike


class TrainingDiverged(GenbrainInputError):
    """The loss became NaN/inf; the message names the step and the checkpoint kept."""


@dataclass
class TrainResult:
    """What :func:`train` did: the checkpoint written, the step reached, and the mean loss of
    every step this call ran (empty when the checkpoint had already reached ``steps``)."""

    checkpoint: Path
    step: int
    losses: list[float]


@torch.no_grad()
def _update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- ema + (1 - decay) (model - ema); lerp leaves a frozen (equal) entry bit-exact.
    Buffers (the fixed positional embedding) are copied."""
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def _draws(seed: int, step: int, slots: range, n_steps: int, shape: tuple[int, ...],
           label_dropout: float, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Timesteps (n,), label-drop mask (n,) and noise (n, *shape) for global-batch slots
    ``slots`` of ``step``: each slot has its own generator seeded with (seed, step, slot)."""
    t, drop, noise = [], [], []
    for j in slots:
        g = torch.Generator(device=device).manual_seed(seed_of(seed, STREAM_ITEM, step, j))
        t.append(torch.randint(0, n_steps, (1,), generator=g, device=device))  # uniform
        drop.append(torch.rand(1, generator=g, device=device) < label_dropout)
        noise.append(torch.randn((1, *shape), generator=g, device=device))
    return torch.cat(t), torch.cat(drop), torch.cat(noise)


# --------------------------------------------------------------------------------------------
# Devices and processes
# --------------------------------------------------------------------------------------------


def _distributed() -> tuple[int, int, torch.device, bool]:
    """(rank, world size, device, whether this call started the process group). torchrun sets
    RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT."""
    cuda = torch.cuda.is_available()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1 and not dist.is_initialized():
        return 0, 1, torch.device("cuda" if cuda else "cpu"), False
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else \
        torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    started = not dist.is_initialized()
    if started:
        dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), device, started


@contextlib.contextmanager
def matmul_precision(device: torch.device) -> Iterator[None]:
    """TF32 matmuls on CUDA for the duration of training (restored afterwards)."""
    old = torch.get_float32_matmul_precision()
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


def train(config: TrainConfig, stores: StoreLike | Sequence[StoreLike],
          out_dir: str | os.PathLike, *, init_checkpoint: str | os.PathLike | None = None,
          surgeries: Sequence[Surgery] = (), token_centroids: Any = None, num_workers: int = 0,
          on_checkpoint: Callable[[int, Path], None] | None = None,
          meta: Mapping[str, Any] | None = None) -> TrainResult:
    """Train (or resume training) a DiT on image stores; see the module docstring.

    Args:
        config: the run's settings.
        stores: ImageStore(s) or their index.tsv path(s); their images are concatenated.
        out_dir: folder of ``checkpoint.pt``; an existing checkpoint there is resumed.
        init_checkpoint: pretrained checkpoint to fine-tune (its ``sampling_weights``); read
            again when a fine-tuning run resumes.
        surgeries: DiT surgeries applied after loading it, before the optimizer is built, e.g.
            ``[("add_disease_head", 2), ("extend_modalities", 1), "add_score_head"]``.
        token_centroids: (T, 3) token centroids, for ``pos_embed="centroid3d"``.
        num_workers: DataLoader worker processes reading the stores (0 = in this process).
        on_checkpoint: called on rank 0 as ``on_checkpoint(step, path)`` after each write.
        meta: JSON-like facts about the run kept in the checkpoint (``config["meta"]``; e.g. a
            fine-tune's task and training set); not compared on resume.
    Returns:
        :class:`TrainResult` (checkpoint path, final step, per-step mean losses of this call).
    """
    rank, world, device, started = _distributed()
    try:
        with matmul_precision(device):
            return _train(config, stores, Path(out_dir), init_checkpoint, surgeries,
                          token_centroids, num_workers, on_checkpoint, rank, world, device,
                          plain(dict(meta or {})))
    finally:
        if started:
            dist.destroy_process_group()


def _open_data(config: TrainConfig, stores: StoreLike | Sequence[StoreLike], init: Mapping | None,
               init_path: Any, resume: Mapping | None, ckpt_path: Path) -> VoxelDataset:
    """The training items in the layout of the model to be trained (a resumed run's or the
    init checkpoint's; a fresh model is built for the first store)."""
    stores = [stores] if isinstance(stores, (ImageStore, str, os.PathLike)) else list(stores)
    stores = [s if isinstance(s, ImageStore) else ImageStore(s) for s in stores]
    # The scalings: the resumed run's, else the pretrained age scaling, else fitted on the data.
    # The ranges seen: the data's, widened by the resumed run's or the init model's age range.
    norms = ranges = None
    if resume is not None:
        norms, ranges = resume["config"]["norms"], resume["config"].get("ranges")
    elif init is not None:
        norms = {"age": init["config"]["norms"]["age"]}
        ranges = inherited_ranges(Conditions.from_record(init["config"]))
    data = VoxelDataset(stores, modalities=config.modalities, norms=norms,
                        diagnosis_levels=config.diagnosis_levels,
                        score_column=config.score_column, sources=config.sources,
                        demographics=config.demographics, ranges=ranges)
    # a model of another layout than the stores' reads them converted (logged)
    if resume is not None:
        data.to_model(resume["config"], f"the checkpoint {ckpt_path}")
    elif init is not None:
        data.to_model(init["config"], f"the init checkpoint {init_path}")
    else:
        data.check_voxels(data.n_voxels, "the model (built for the first store)")
    return data


def _optimizer(model: DiT, rules: Mapping[str, bool | Tensor], config: TrainConfig
               ) -> tuple[torch.optim.AdamW, dict[str, Tensor]]:
    """AdamW over what trains, and the masks of partly trained tensors (on the model's device);
    frozen parameters stop requiring gradients."""
    params = dict(model.named_parameters())
    masks = {n: r.to(params[n].device) for n, r in rules.items() if isinstance(r, Tensor)}
    for name, p in params.items():
        p.requires_grad_(rules[name] is not False)
    # the label tokens and the label heads train in groups of their own at label_tokens_lr
    # and label_heads_lr, when set
    tokens = set(LABEL_TOKEN_PARAMS) if config.label_tokens_lr is not None else set()
    heads = ({n for n in params if n.startswith(LABEL_HEAD_PREFIXES)}
             if config.label_heads_lr is not None else set())
    own = tokens | heads
    groups = [{"params": [params[n] for n, r in rules.items() if r is True and n not in own]},
              {"params": [params[n] for n, r in rules.items() if r is True and n in tokens],
               "lr": config.label_tokens_lr},
              {"params": [params[n] for n, r in rules.items() if r is True and n in heads],
               "lr": config.label_heads_lr},
              # partly frozen tensors: no weight decay, so their frozen entries stay exact
              {"params": [params[n] for n in masks], "weight_decay": 0.0}]
    cuda = next(iter(params.values())).is_cuda
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr, betas=config.betas,
                            weight_decay=config.weight_decay, fused=True if cuda else None)
    return opt, masks


def _train(config: TrainConfig, stores: StoreLike | Sequence[StoreLike], out_dir: Path,
           init_path: str | os.PathLike | None, surgeries: Sequence[Surgery],
           token_centroids: Any, num_workers: int,
           on_checkpoint: Callable[[int, Path], None] | None, rank: int, world: int,
           device: torch.device, meta: dict[str, Any]) -> TrainResult:
    B, cuda = config.global_batch, device.type == "cuda"
    bf16 = use_bf16(config.precision, device, "training")
    if B % world:
        raise GenbrainInputError(f"training config: global_batch {B} is not divisible by the "
                                 f"{world} processes")
    share = B // world
    micro = config.micro_batch or share
    if share % micro:
        raise GenbrainInputError(f"training config: micro_batch {micro} does not divide the "
                                 f"{share} images of each of the {world} processes")
    if config.finetune != "full" and init_path is None:
        raise GenbrainInputError(f"finetune '{config.finetune}' needs an init_checkpoint")
    surgeries = parse_surgeries(surgeries)
    ckpt_path = out_dir / CHECKPOINT
    init = read_checkpoint(init_path) if init_path is not None else None
    resume = read_checkpoint(ckpt_path) if ckpt_path.exists() else None
    data = _open_data(config, stores, init, init_path, resume, ckpt_path)

    model = build_model(config, data.n_voxels, init, init_path, token_centroids)
    before = dict(model.named_parameters())
    operate(model, surgeries, config.seed)
    # a fresh model is built to the config (n_modalities...); a fine-tune grows to the data
    implied = (implied_surgeries(model, data, config.label_tokens) if init is not None
               else label_token_surgeries(model) if config.label_tokens else [])
    operate(model, implied, config.seed)
    surgeries = surgeries + implied
    if implied and rank == 0:
        log.info("surgeries the task implies: %s", implied)
    rules = trainable(model, before, config)
    data.check_model(model)
    if resume is None:  # (a resumed run restores them from its checkpoint)
        new = set_templates(model, data, config.template_images)
        if new and rank == 0:
            log.info("modality templates: mean images of modality indices %s", new)
    run_config = {"train": config.to_dict(), "model": plain(model.spec()),
                  "norms": plain(data.norms), "ranges": plain(data.ranges),
                  "surgeries": plain(surgeries),
                  "init_checkpoint": None if init_path is None else str(init_path),
                  "meta": meta}
    # the voxel layout is a property of the model: a fine-tune or a resume keeps its source's
    source = resume if resume is not None else init
    if source is not None and source["config"].get("layout") is not None:
        run_config["layout"] = source["config"]["layout"]
    if resume is not None:
        check_resume(ckpt_path, resume, run_config, len(data))

    model.to(device).train()
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    opt, masks = _optimizer(model, rules, config)
    params = dict(model.named_parameters())
    step, position, saved = 0, (0, 0), None
    history: list[float] = []  # every step's loss since step 1, kept in the checkpoint
    if resume is not None:
        history = resume.get("losses", torch.zeros(0)).tolist()[: resume["step"]]
        model.load_state_dict(resume["model"])
        ema.load_state_dict(resume["ema"])
        opt.load_state_dict(resume["optimizer"])
        step, saved = resume["step"], resume["step"]
        position = (resume["data_position"]["epoch"], resume["data_position"]["offset"])
        torch.set_rng_state(resume["rng"]["torch"])  # unused by the loop; restored for callers
        if cuda and resume["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(resume["rng"]["cuda"], device)
        if rank == 0:
            log.info("resuming %s at step %d", ckpt_path, step)
    if rank == 0:
        clear_killed_writes(ckpt_path)

    # after the EMA copy: only the trained model runs the blocks; state dict keys unchanged
    if model.compile_blocks(config.compile) and rank == 0:
        log.info("torch.compile: the %d DiT blocks compile at the first step", model.depth)
    # any process group wraps, one of a single process included (the one-GPU DDP test)
    net = DistributedDataParallel(model, device_ids=[device.index] if cuda else None) \
        if dist.is_initialized() else model
    diffusion = GaussianDiffusion.linear(prediction=config.prediction)
    order = ItemOrder(len(data), config.seed)
    loader = DataLoader(data, batch_sampler=MicroBatchSampler(order, position, B, micro, rank,
                                                              world),
                        collate_fn=collated, num_workers=num_workers, pin_memory=cuda,
                        generator=torch.Generator())  # keeps DataLoader off the global RNG
    batches = iter(loader)

    def save() -> None:
        state = {"model": model.state_dict(), "ema": ema.state_dict(),
                 "optimizer": opt.state_dict(), "step": step,
                 "data_position": {"epoch": position[0], "offset": position[1],
                                   "n_items": len(data)},
                 "rng": {"torch": torch.get_rng_state(),
                         "cuda": torch.cuda.get_rng_state(device) if cuda else None},
                 "losses": torch.tensor(history, dtype=torch.float64),
                 "config": run_config}
        save_checkpoint(ckpt_path, state)
        if on_checkpoint is not None:
            on_checkpoint(step, ckpt_path)

    losses: list[float] = []
    t_last, step_last, window = time.perf_counter(), step, []
    while step < config.steps:
        opt.zero_grad(set_to_none=True)
        total = torch.zeros((), dtype=torch.float64, device=device)
        for k in range(share // micro):
            batch = {n: v.to(device, non_blocking=True) for n, v in next(batches).items()}
            for n in ("x", "x_cond"):  # float16 stores: one exact cast per batch, on the device
                if n in batch:
                    batch[n] = batch[n].float()
            slots = range(rank * share + k * micro, rank * share + (k + 1) * micro)
            t, drop, noise = _draws(config.seed, step, slots, diffusion.num_timesteps,
                                    tuple(batch["x"].shape[1:]), config.label_dropout, device)
            labels = {n: v for n, v in batch.items() if n not in ("x", "x_cond")}
            x_cond = batch.get("x_cond")  # (m, K, V) source images of image-conditioned tasks

            # called within this iteration only: binding the batch's tensors as defaults says so
            def model_fn(x_t: Tensor, t_model: Tensor, x_cond: Tensor | None = x_cond,
                         drop: Tensor = drop, labels: dict = labels) -> Tensor:
                if x_cond is not None:  # image conditioning rides along as extra channels
                    x_t = torch.cat([x_t, x_cond], dim=1)  # (m, C_in, V)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    return net(x_t, t_model, force_drop=drop, **labels)  # (m, 2C, V)

            last = k == share // micro - 1
            with contextlib.nullcontext() if world == 1 or last else net.no_sync():
                per_item = diffusion.training_losses(model_fn, batch["x"], t, noise=noise)["loss"]
                # sum / B per rank, times world because DDP averages gradients over ranks
                (per_item.sum() * (world / B)).backward()
            total += per_item.detach().sum()
        if world > 1:
            dist.all_reduce(total)
        loss = total.item() / B
        if not math.isfinite(loss):
            kept = "no checkpoint was written" if saved is None else \
                f"the checkpoint {ckpt_path} (step {saved}) is unchanged"
            raise TrainingDiverged(f"training diverged: the loss is {loss} at step {step + 1}; "
                                   f"stopped without saving, {kept}")
        for name, mask in masks.items():
            params[name].grad.mul_(mask)  # only the entries surgery added learn
        opt.step()
        _update_ema(ema, model, config.ema_decay)
        step += 1
        position = order.advance(position, B)
        losses.append(loss)
        history.append(loss)
        window.append(loss)
        if rank == 0 and (step % config.log_every == 0 or step == config.steps):
            now = time.perf_counter()
            rate = (step - step_last) / max(now - t_last, 1e-9)
            log.info("step %d/%d  loss %.4f  %.2f steps/s  ETA %s", step, config.steps,
                     float(np.mean(window)), rate, hms((config.steps - step) / rate))
            t_last, step_last, window = now, step, []
        if step % config.checkpoint_every == 0 or step == config.steps:
            if rank == 0:
                save()
            saved = step
    if world > 1:
        dist.barrier()  # no rank leaves before rank 0 has written the final checkpoint
    return TrainResult(ckpt_path, step, losses)
