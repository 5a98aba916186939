"""Seeded 3:1:1 train/validation/test split of a cohort: per site by diagnosis, or by a score."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _smk import run


def main(smk):
    from genbrain.io import read_tsv, save_tsv
    from genbrain.splits import cohort_split

    basis = smk.params.basis
    table = cohort_split(read_tsv(smk.input.participants), basis["levels"], smk.params.seed,
                         str(smk.input.participants), basis["score"], basis["score_max"])
    save_tsv(table, smk.output.split)


run(main, snakemake)  # noqa: F821
