"""The fidelity record of the run: an HTML page for the report and its TSV."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _smk import run


def main(smk):
    from genbrain.fidelity import write_fidelity_page

    write_fidelity_page(smk.params.results, smk.output.html, smk.output.table)


run(main, snakemake)  # noqa: F821
