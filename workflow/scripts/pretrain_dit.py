"""Pretrain the DiT on the training split; resumes from the work folder's checkpoint. With
pretrain.checkpoint (input ``given``) only check that checkpoint and copy it.

One GPU (or none) trains in this process; ``resources: gpu=G`` (and ``nodes=N``) start
torchrun with G processes over N nodes (see genbrain.pretrain.run_pretraining)."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _smk import run


def main(smk):
    from genbrain.pretrain import run_pretraining, take_pretrained

    if hasattr(smk.input, "given"):
        take_pretrained(smk.input.given, smk.output.checkpoint)
        return
    run_pretraining(smk.input.index, smk.input.split, smk.params.train, smk.params.work_dir,
                    smk.output.checkpoint, seed=smk.params.seed, threads=smk.threads,
                    gpus=int(smk.resources.get("gpu", 0)),
                    nodes=int(smk.resources.get("nodes", 1)))


run(main, snakemake)  # noqa: F821
