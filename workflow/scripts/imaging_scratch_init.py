"""The from-scratch control's start: the pretrained model's architecture with fresh random
weights drawn from the config's seed."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _smk import run


def main(smk):
    from genbrain.training.checkpoints import random_init_checkpoint

    random_init_checkpoint(smk.input.checkpoint, smk.output.checkpoint, smk.params.seed)


run(main, snakemake)  # noqa: F821
