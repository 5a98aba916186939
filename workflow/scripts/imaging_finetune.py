"""A synthesis task's DiT method: the fine-tuning job on the task's training participants,
from the pretrained model (genbrain) or its architecture's random weights (scratch)."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _smk import run


def main(smk):
    from genbrain.finetune import run_finetune
    from genbrain.imaging.plan import training_participants

    training_participants(smk.input.images, smk.output.training)
    run_finetune(smk.params.job, smk.input.index, smk.output.training, smk.input.init,
                 smk.params.work_dir, smk.output.checkpoint, seed=smk.params.seed,
                 threads=smk.threads)


run(main, snakemake)  # noqa: F821
