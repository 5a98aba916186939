"""Mosaic of a few preprocessed subjects of one site over the template outline."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _smk import run


def main(smk):
    from genbrain.qc import mosaic

    mosaic(smk.input.index, smk.params.site, smk.params.modality, smk.params.n_subjects,
           smk.output.png)


run(main, snakemake)  # noqa: F821
