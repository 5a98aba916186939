"""Seeded per-site 3:1:1 train/validation/test split of a case-control cohort."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _smk import run


def main(smk):
    from genbrain.finetune import cohort_split
    from genbrain.io import read_tsv, save_tsv

    table = cohort_split(read_tsv(smk.input.participants), smk.params.levels, smk.params.seed,
                         str(smk.input.participants))
    save_tsv(table, smk.output.split)


run(main, snakemake)  # noqa: F821
