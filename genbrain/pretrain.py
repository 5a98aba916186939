"""The pretraining stage: the DiT on the training split of the pretraining cohort's store.

Training runs in a work folder that holds the resumable checkpoint; only the finished checkpoint
is copied to the stage's output. (A workflow manager deletes the declared outputs of a failed
job; the resume checkpoint must not be one of them.)

More than one GPU: :func:`run_pretraining` starts ``torchrun`` (one process per GPU, each
running ``python -m genbrain.pretrain``) on one node, or ``srun`` + ``torchrun`` with a c10d
rendezvous on several nodes; :func:`genbrain.training.loop.train` then runs DistributedDataParallel
with the global batch split across ranks, so the result does not depend on the number of processes.
One GPU (or none) trains in the calling process.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from genbrain.errors import GenbrainInputError
from genbrain.figures import synthetic_vs_real
from genbrain.io import atomic_path, file_sha256
from genbrain.modalities import DEFAULT_REGISTRY, ModalityRegistry
from genbrain.model.dit import PRESETS, token_centroids
from genbrain.sampling import SamplingConfig, sample_table
from genbrain.space import standard_space
from genbrain.splits import split_ids
from genbrain.stats.correlation import pearson
from genbrain.store import ImageStore
from genbrain.training.checkpoints import load_for_sampling, loss_history
from genbrain.training.config import TrainConfig
from genbrain.training.loop import train

log = logging.getLogger(__name__)


def training_store(index: str | os.PathLike, split: str | os.PathLike | pd.DataFrame,
                   modalities: list[str] | None = None) -> ImageStore:
    """The store's images of participants whose ``split`` is ``train``."""
    store = ImageStore(index, modalities=modalities, participants=split_ids(split, "train"))
    if len(store) == 0:
        raise GenbrainInputError(f"{index}: no images of training-split participants")
    return store


def standard_token_centroids(patch_size: int) -> np.ndarray:
    """(T, 3) mean voxel coordinate of each token's voxels on the standard-space brain mask
    (voxel-vector order, padding excluded): what ``pos_embed: centroid3d`` embeds."""
    return token_centroids(standard_space().voxel_indices.T, patch_size)


def pretrain(index: str | os.PathLike, split: str | os.PathLike, settings: Mapping[str, Any],
             work_dir: str | os.PathLike, checkpoint: str | os.PathLike, *, seed: int,
             threads: int | None = None) -> Path:
    """Train (resuming from ``work_dir`` if a checkpoint is there) and copy the final
    checkpoint to ``checkpoint``. ``settings`` are :class:`TrainConfig` keys; ``seed`` is used
    when they name none. Returns the output path."""
    if threads:
        torch.set_num_threads(int(threads))
    values = {k: v for k, v in settings.items() if v is not None}
    values.setdefault("seed", seed)
    config = TrainConfig.from_dict(values, "pretrain.train")
    store = training_store(index, split, config.modalities)
    log.info("pretraining %s on %d images of %d participants (%s) for %d steps", config.preset,
             len(store), store.table["participant_id"].nunique(),
             ", ".join(sorted(store.table["modality"].unique())), config.steps)
    centroids = None
    if config.pos_embed == "centroid3d":  # the model stores them: fine-tuning reuses its own
        centroids = standard_token_centroids(config.patch_size
                                             or PRESETS[config.preset]["patch_size"])
    result = train(config, store, work_dir, token_centroids=centroids)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 owns the output
        with atomic_path(checkpoint) as tmp:
            shutil.copyfile(result.checkpoint, tmp)
    return Path(checkpoint)


def launch_command(args: list[str], processes: int, nodes: int = 1, *,
                   rendezvous: str | None = None, job_id: str = "genbrain",
                   python: str = sys.executable) -> list[str]:
    """The command that runs ``python -m genbrain.pretrain <args>`` in ``processes`` processes
    per node on ``nodes`` nodes: torchrun ``--standalone`` on one node; on several, ``srun``
    starting one torchrun per node that meet at ``rendezvous`` (host:port of the first node)."""
    if processes < 1 or nodes < 1:
        raise GenbrainInputError(f"pretraining needs >= 1 process on >= 1 node, got "
                                 f"{processes} x {nodes}")
    module = ["-m", "torch.distributed.run"]
    tail = ["-m", "genbrain.pretrain", *args]
    if nodes == 1:
        return [python, *module, "--standalone", f"--nproc-per-node={processes}", *tail]
    if not rendezvous:
        raise GenbrainInputError("multi-node pretraining needs the rendezvous host:port")
    return ["srun", f"--nodes={nodes}", "--ntasks-per-node=1", python, *module,
            f"--nnodes={nodes}", f"--nproc-per-node={processes}", "--rdzv-backend=c10d",
            f"--rdzv-id={job_id}", f"--rdzv-endpoint={rendezvous}", *tail]


def first_node_of_job(job_id: str) -> str:
    """The first host of a running Slurm job (inside a Snakemake job step every SLURM_*
    variable but SLURM_JOB_ID is unset, so the node list is asked from squeue)."""
    nodelist = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%N"], check=True,
                              capture_output=True, text=True).stdout.strip()
    hosts = subprocess.run(["scontrol", "show", "hostnames", nodelist], check=True,
                           capture_output=True, text=True).stdout.split()
    if not hosts:
        raise GenbrainInputError(f"Slurm job {job_id}: no nodes (squeue said '{nodelist}')")
    return hosts[0]


def run_pretraining(index: str | os.PathLike, split: str | os.PathLike,
                    settings: Mapping[str, Any], work_dir: str | os.PathLike,
                    checkpoint: str | os.PathLike, *, seed: int, threads: int = 1,
                    gpus: int = 0, nodes: int = 1, port: int = 29500) -> Path:
    """:func:`pretrain` in this process (``gpus`` <= 1 on one node) or under torchrun with
    ``gpus`` processes in all (``gpus / nodes`` per node), each with ``threads / processes``
    CPU threads. A failed launch raises with the command and its exit status."""
    if gpus <= 1 and nodes <= 1:
        return pretrain(index, split, settings, work_dir, checkpoint, seed=seed, threads=threads)
    if gpus % nodes:
        raise GenbrainInputError(f"pretrain_dit: {gpus} GPUs do not divide over {nodes} nodes")
    per_node = gpus // nodes
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    settings_file = Path(work_dir) / "settings.json"
    settings_file.write_text(json.dumps(dict(settings), indent=1, sort_keys=True))
    args = ["--index", str(index), "--split", str(split), "--settings", str(settings_file),
            "--work-dir", str(work_dir), "--checkpoint", str(checkpoint), "--seed", str(seed),
            "--threads", str(max(1, threads // per_node))]
    job = os.environ.get("SLURM_JOB_ID", "genbrain")
    rendezvous = f"{first_node_of_job(job)}:{port}" if nodes > 1 else None
    cmd = launch_command(args, per_node, nodes, rendezvous=rendezvous, job_id=job)
    log.info("starting %d training processes: %s", gpus, shlex.join(cmd))
    root = str(Path(__file__).resolve().parents[1])  # the package need not be installed
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, threads // per_node)), "PYTHONPATH": path}
    res = subprocess.run(cmd, env=env, check=False)  # the exit status is reported below
    if res.returncode != 0:
        raise GenbrainInputError(f"distributed pretraining failed (exit {res.returncode}): "
                                 f"{shlex.join(cmd)}; see the log above")
    return Path(checkpoint)


def take_pretrained(given: str | os.PathLike, checkpoint: str | os.PathLike) -> Path:
    """The checkpoint ``pretrain.checkpoint`` gives, taken as the pretrained model instead of
    training one: its model is built and its weights loaded
    (:func:`genbrain.training.checkpoints.load_for_sampling`: a file that is not a genbrain
    training checkpoint, or whose weights do not fit its recorded architecture or layout, is a
    one-line error), then the file is copied unchanged to ``checkpoint`` (atomically)."""
    model, _, config = load_for_sampling(given)
    layout = (model.voxel_layout or {}).get("name", "unrecorded (standard)")
    log.info("pretrain.checkpoint %s (sha256 %s): preset %s, %d voxels, layout %s; taken as "
             "the pretrained model, nothing is trained", given, file_sha256(given)[:12],
             config.preset, model.n_voxels, layout)
    with atomic_path(checkpoint) as tmp:
        shutil.copyfile(given, tmp)
    return Path(checkpoint)


def loss_table(checkpoint: str | os.PathLike, window: int | None = None) -> pd.DataFrame:
    """(step, loss, smoothed) of every training step in a checkpoint; ``smoothed`` is a
    centred running mean over ``window`` steps (default: 2% of the run, at least 1)."""
    losses = loss_history(checkpoint)
    n = len(losses)
    window = window or max(1, n // 50)
    smooth = pd.Series(losses).rolling(window, center=True, min_periods=1).mean().to_numpy()
    return pd.DataFrame({"step": np.arange(1, n + 1), "loss": losses, "smoothed": smooth})


def sample_panel(checkpoint: str | os.PathLike, index: str | os.PathLike,
                 split: str | os.PathLike, age: float, sex: str, sampling: SamplingConfig,
                 out_png: str | os.PathLike, registry: ModalityRegistry = DEFAULT_REGISTRY,
                 n_mean: int = 50) -> pd.DataFrame:
    """Synthesize one image per modality of the pretraining store for (age, sex) and draw it
    beside the hold-out image of the same sex and nearest age (the paper's Fig. 2c).

    Returns one row per modality: the real image drawn (participant_id, age), the synthetic
    id, and a sanity check of realism: ``r_synthetic`` = Pearson r of the synthetic image with
    the mean of up to ``n_mean`` hold-out images of the modality, beside ``r_real``, the same
    for the real image drawn (typically 0.85-0.99: every brain resembles the mean brain; a
    sample of noise scores ~0)."""
    model, norms, config = load_for_sampling(checkpoint, sampling.weights)
    store = ImageStore(index, modalities=config.modalities,
                       participants=split_ids(split, "holdout"))
    if len(store) == 0:
        raise GenbrainInputError(f"{index}: no hold-out images to compare samples with")
    mods = sorted(store.table["modality"].unique(), key=lambda m: registry[m].index)
    covariates = pd.DataFrame({"synthetic_id": np.arange(len(mods)), "age": float(age),
                               "sex": sex, "modality": mods})
    synthetic = sample_table(model, norms, config, covariates, sampling, registry, "samples")
    t = store.table
    rows, real, labels, syn_labels, r_syn, r_real = [], [], [], [], [], []
    for j, m in enumerate(mods):
        of_m = t[t["modality"] == m]
        cand = of_m[of_m["sex"] == sex]
        cand = cand if len(cand) else of_m
        best = cand.index[np.argmin(np.abs(cand["age"].to_numpy(float) - age))]
        rows.append(int(best))
        real.append(store[int(best)])
        mean = store.batch(of_m.index[:n_mean]).astype(np.float64).mean(axis=0)
        r_real.append(pearson(real[-1], mean))
        r_syn.append(pearson(synthetic[j], mean))
        labels.append(f"{t.at[best, 'participant_id']} ({t.at[best, 'sex']}, "
                      f"{t.at[best, 'age']:.0f} y); r with mean {r_real[-1]:.2f}")
        syn_labels.append(f"{sex}, {age:g} y; r with mean {r_syn[-1]:.2f}")
        log.info("%s: r with the hold-out mean image: synthetic %.3f, real %.3f", m, r_syn[-1],
                 r_real[-1])
    synthetic_vs_real(np.stack(real), synthetic, mods, out_png, labels,
                      title=f"synthetic: {sex}, {age:g} y (DDIM-{sampling.steps}, CFG "
                            f"{sampling.guidance}); real: nearest hold-out subject\nr: "
                            "Pearson r with the hold-out mean image",
                      synthetic_labels=syn_labels)
    return pd.DataFrame({"modality": mods, "real": [t.at[r, "participant_id"] for r in rows],
                         "real_age": [t.at[r, "age"] for r in rows],
                         "synthetic_id": covariates["synthetic_id"], "r_real": r_real,
                         "r_synthetic": r_syn})


def main(argv: list[str] | None = None) -> None:
    """Entry point of one training process (what torchrun starts)."""
    p = argparse.ArgumentParser(prog="python -m genbrain.pretrain", description=main.__doc__)
    p.add_argument("--index", required=True, help="the pretraining cohort's store index")
    p.add_argument("--split", required=True, help="split.tsv (participant_id, split)")
    p.add_argument("--settings", required=True, help="JSON file of TrainConfig keys")
    p.add_argument("--work-dir", required=True, help="folder of the resumable checkpoint")
    p.add_argument("--checkpoint", required=True, help="where the final checkpoint goes")
    p.add_argument("--seed", type=int, default=0, help="seed when the settings name none")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank "
                        f"{os.environ.get('RANK', '0')}: %(message)s")
    try:
        settings = json.loads(Path(a.settings).read_text())
        pretrain(a.index, a.split, settings, a.work_dir, a.checkpoint, seed=a.seed,
                 threads=a.threads)
    except GenbrainInputError as err:
        print(f"genbrain error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
