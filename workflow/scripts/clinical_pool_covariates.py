"""Write a clinical analysis's synthetic pool covariates (its training split's age, sex and
score, mirrored in seeded permutations)."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _smk import run


def main(smk):
    from genbrain.clinical.plan import ClinicalAnalysis, pool_covariates
    from genbrain.io import read_tsv, save_tsv

    job = ClinicalAnalysis.from_dict(smk.params.job)
    table = pool_covariates(job, read_tsv(smk.input.split), read_tsv(smk.input.participants),
                            smk.params.seed)
    save_tsv(table, smk.output.covariates)


run(main, snakemake)  # noqa: F821
