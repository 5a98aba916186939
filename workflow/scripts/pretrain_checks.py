"""What the pretrained model carries into its samples: age and sex on paired samples (table,
figure)."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _smk import run


def main(smk):
    import torch

    from genbrain.figures import finetune_checks_figure
    from genbrain.finetune import finetune_checks, write_checks
    from genbrain.io import read_tsv
    from genbrain.modalities import registry_from_config
    from genbrain.pretrain import loss_table
    from genbrain.sampling import SamplingConfig
    from genbrain.simulate.write import checks_truth
    from genbrain.store import ImageStore

    torch.set_num_threads(smk.threads)
    split = read_tsv(smk.input.split)
    training = split[split["split"] == "train"]
    modalities = smk.params.modalities or sorted(ImageStore(smk.input.index).table["modality"]
                                                 .unique())
    truth = reference = None
    if smk.input.truth:  # effect -> modality -> the planted map, and the image it changes
        truth, reference = checks_truth(smk.input.truth[0],
                                        smk.config["cohorts"][smk.params.cohort]["simulate"],
                                        modalities)
    checks, maps = finetune_checks(smk.input.checkpoint, smk.input.index, training, truth,
                                   seed=smk.params.seed,
                                   paired_samples=smk.params.paired_samples,
                                   sampling=SamplingConfig(**smk.params.sampling),
                                   registry=registry_from_config(smk.config),
                                   reference=reference, modalities=modalities)
    write_checks(checks, {"task": "pretrain", "unit": "all"}, smk.output.table)
    finetune_checks_figure(loss_table(smk.input.checkpoint), checks, maps, smk.output.png,
                           title=f"pretrained model: age and sex in paired samples "
                                 f"({', '.join(modalities)} of {smk.params.cohort})")


run(main, snakemake)  # noqa: F821
