"""Fine-tune the init model on one task's training set; resumes from the work folder."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _smk import run


def main(smk):
    from genbrain.finetune import FinetuneJob, run_finetune, training_table
    from genbrain.io import read_tsv, save_tsv

    job = FinetuneJob.from_dict(smk.params.job)
    split = read_tsv(smk.input.split[0]) if smk.input.split else None
    save_tsv(training_table(job, read_tsv(smk.input.participants), split),
             smk.output.training)
    run_finetune(job, smk.input.index, smk.output.training, smk.input.init,
                 smk.params.work_dir, smk.output.checkpoint, seed=smk.params.seed,
                 threads=smk.threads)


run(main, snakemake)  # noqa: F821
