"""What a fine-tune learned: loss and the direction of its learned effects (table, figure)."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _smk import run


def main(smk):
    import torch

    from genbrain.figures import finetune_checks_figure
    from genbrain.finetune import finetune_checks, write_checks
    from genbrain.pretrain import loss_table
    from genbrain.simulate.write import read_truth

    torch.set_num_threads(smk.threads)
    job = smk.params.job
    truth = None
    if smk.input.truth:  # effect -> modality -> the planted map
        truth = {}
        for (m, effect), v in read_truth(smk.input.truth[0], job["modalities"]).items():
            truth.setdefault(effect, {})[m] = v
    checks, maps = finetune_checks(smk.input.checkpoint, smk.input.index, smk.input.training,
                                   truth, seed=smk.params.seed)
    write_checks(checks, job, smk.output.table)
    finetune_checks_figure(loss_table(smk.input.checkpoint), checks, maps, smk.output.png,
                           title=f"fine-tune {job['task']}/{job['unit']}: "
                                 f"{', '.join(job['modalities'])} of {job['cohort']} "
                                 f"({', '.join(job['sites'])})")


run(main, snakemake)  # noqa: F821
