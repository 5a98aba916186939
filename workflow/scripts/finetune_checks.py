"""What a fine-tune learned: loss, and its labels' effects one-step and on paired samples
(table, figure)."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _smk import run


def main(smk):
    import torch

    from genbrain.figures import finetune_checks_figure
    from genbrain.finetune import finetune_checks, write_checks
    from genbrain.modalities import registry_from_config
    from genbrain.pretrain import loss_table
    from genbrain.sampling import SamplingConfig
    from genbrain.simulate.write import checks_truth

    torch.set_num_threads(smk.threads)
    job = smk.params.job
    truth = reference = None
    if smk.input.truth:  # effect -> modality -> the planted map, and the image it changes
        truth, reference = checks_truth(smk.input.truth[0],
                                        smk.config["cohorts"][job["cohort"]]["simulate"],
                                        job["modalities"])
    checks, maps = finetune_checks(smk.input.checkpoint, smk.input.index, smk.input.training,
                                   truth, seed=smk.params.seed,
                                   paired_samples=smk.params.paired_samples,
                                   sampling=SamplingConfig(**smk.params.sampling),
                                   registry=registry_from_config(smk.config),
                                   reference=reference)
    write_checks(checks, job, smk.output.table)
    finetune_checks_figure(loss_table(smk.input.checkpoint), checks, maps, smk.output.png,
                           title=f"fine-tune {job['task']}/{job['unit']}: "
                                 f"{', '.join(job['modalities'])} of {job['cohort']} "
                                 f"({', '.join(job['sites'])})")


run(main, snakemake)  # noqa: F821
