"""A clinical analysis's sweep table, its summary and comparison, and Fig. 6d/f."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _smk import run


def main(smk):
    from genbrain.clinical.plan import ClinicalAnalysis, summary_outputs

    job = ClinicalAnalysis.from_dict(smk.params.job)
    summary_outputs(job, list(smk.input.rows), smk.output)


run(main, snakemake)  # noqa: F821
