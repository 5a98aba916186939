"""A BWAS site's figures: d maps, relative gains with CIs and chance, effective n."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _smk import run


def main(smk):
    from genbrain.bwas.analysis import site_figures
    from genbrain.bwas.plan import BwasSite

    site_figures(BwasSite.from_dict(smk.params.job), smk.input, smk.output)


run(main, snakemake)  # noqa: F821
