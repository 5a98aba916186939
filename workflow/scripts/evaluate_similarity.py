"""Age/sex similarity of real, synthetic and averaged-synthetic cohorts (Fig. 2a)."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _smk import run


def main(smk):
    from genbrain.evaluate import similarity_report

    similarity_report(smk.input.synthetic, smk.input.cohorts, smk.input.real, smk.input.split,
                      smk.output.table, smk.output.png)


run(main, snakemake)  # noqa: F821
