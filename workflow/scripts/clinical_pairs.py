"""Fig. 6c/e: real test images and synthetic pool images matched for age, sex and score."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _smk import run


def main(smk):
    from genbrain.clinical.plan import ClinicalAnalysis, pairs_output

    job = ClinicalAnalysis.from_dict(smk.params.job)
    pairs_output(job, smk.input.index, smk.input.split, smk.input.pool, smk.output.png)


run(main, snakemake)  # noqa: F821
