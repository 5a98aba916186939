"""Evaluation cohorts of the pretrained model and their synthetic covariate table."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _smk import run


def main(smk):
    from genbrain.io import read_tsv, save_tsv
    from genbrain.splits import evaluation_cohorts, similarity_covariates

    sim = smk.params.similarity
    cohorts = evaluation_cohorts(read_tsv(smk.input.split), sim["cohort_size"],
                                 sim["n_cohorts"], smk.params.seed)
    save_tsv(cohorts, smk.output.cohorts)
    save_tsv(similarity_covariates(cohorts, list(smk.params.modalities), sim["k"]),
             smk.output.covariates)


run(main, snakemake)  # noqa: F821
