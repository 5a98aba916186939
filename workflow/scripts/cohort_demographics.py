"""Table 1 of a cohort: participants by site and diagnosis, from its image store."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _smk import run


def main(smk):
    import logging

    from genbrain.qc import write_demographics

    df = write_demographics(smk.input.index, smk.output.table, smk.params.scores)
    total = df.iloc[-1]
    logging.getLogger("genbrain").info("%d participants at %d sites, age %.1f (SD %.1f)",
                                       total["n"], df["site"].nunique() - 1, total["age_mean"],
                                       total["age_sd"])


run(main, snakemake)  # noqa: F821
