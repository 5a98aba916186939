"""Write the covariate table of a researcher's synthetic cohort (TSV or grid from the config)."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _smk import run


def main(smk):
    from genbrain.covariates import cohort_covariates
    from genbrain.io import save_tsv

    model = smk.params.model
    table = cohort_covariates(smk.wildcards.synth, smk.params.spec, model["modalities"],
                              model["what"], diagnosis_levels=model["diagnosis_levels"],
                              score_column=model["score_column"])
    save_tsv(table, smk.output.covariates)


run(main, snakemake)  # noqa: F821
