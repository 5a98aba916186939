"""Memorisation audit: max Pearson r of every synthetic image with the training images."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _smk import run


def main(smk):
    from genbrain.evaluate import audit_report

    audit_report(smk.input.synthetic, smk.input.real, smk.input.split, smk.output.table,
                 smk.output.top, smk.output.png, smk.params.threshold, smk.params.top)


run(main, snakemake)  # noqa: F821
