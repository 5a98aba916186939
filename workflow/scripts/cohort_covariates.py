"""Write the covariate table of a researcher's synthetic cohort (TSV or grid from the config),
its ages and scores checked against the ranges the model's checkpoint records."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _smk import run


def main(smk):
    from genbrain.conditions import Conditions
    from genbrain.covariates import cohort_covariates
    from genbrain.io import peek_checkpoint, save_tsv

    model = smk.params.model
    trained = Conditions.from_record(peek_checkpoint(smk.input.checkpoint)["config"])
    table = cohort_covariates(smk.wildcards.synth, smk.params.spec, model["modalities"],
                              model["what"], diagnosis_levels=model["diagnosis_levels"],
                              score_column=model["score_column"],
                              ranges=trained.training_ranges())
    save_tsv(table, smk.output.covariates)


run(main, snakemake)  # noqa: F821
