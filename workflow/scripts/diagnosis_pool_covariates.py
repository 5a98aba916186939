"""Write a diagnosis training site's synthetic pool covariates (its training split's)."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _smk import run


def main(smk):
    from genbrain.diagnosis.plan import DiagnosisSite, pool_covariates
    from genbrain.io import read_tsv, save_tsv

    job = DiagnosisSite.from_dict(smk.params.job)
    table = pool_covariates(job, read_tsv(smk.input.split), read_tsv(smk.input.participants),
                            smk.params.seed)
    save_tsv(table, smk.output.covariates)


run(main, snakemake)  # noqa: F821
