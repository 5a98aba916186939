"""The fidelity record of the run: an HTML page for the report and its TSV."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _smk import run


def main(smk):
    from pathlib import Path

    from genbrain.fidelity import write_fidelity_page

    results = Path(smk.input.similarity).parents[2]  # results/evaluate/similarity/<name>.tsv
    write_fidelity_page(results, smk.output.html, smk.output.table)


run(main, snakemake)  # noqa: F821
