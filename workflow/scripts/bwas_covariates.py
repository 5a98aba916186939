"""Write a BWAS site's synthetic covariate table (the reference cohort's covariates)."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _smk import run


def main(smk):
    from genbrain.bwas.plan import BwasSite, synthetic_covariates
    from genbrain.io import read_tsv, save_tsv

    job = BwasSite.from_dict(smk.params.job)
    table = synthetic_covariates(job, read_tsv(smk.input.participants), smk.params.seed)
    save_tsv(table, smk.output.covariates)


run(main, snakemake)  # noqa: F821
