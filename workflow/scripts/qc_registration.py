"""Per-subject registration-quality table of a cohort."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _smk import run


def main(smk):
    import logging

    from genbrain.qc import registration_table

    df = registration_table([f"{d}/index.tsv" for d in smk.input.chunks], smk.output.table,
                            smk.params.threshold)
    failed = df[~df["qc_pass"].astype(bool)]
    logging.getLogger("genbrain").info("%d of %d subjects below r = %.2f", len(failed), len(df),
                                       smk.params.threshold)


run(main, snakemake)  # noqa: F821
