"""Hold out a seeded fraction of the pretraining cohort's participants for evaluation."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _smk import run


def main(smk):
    import logging

    from genbrain.io import read_tsv, save_tsv
    from genbrain.splits import holdout_split

    split = holdout_split(read_tsv(smk.input.participants), smk.params.fraction,
                          smk.params.seed)
    save_tsv(split, smk.output.split)
    logging.getLogger("genbrain").info("%s", split["split"].value_counts().to_dict())


run(main, snakemake)  # noqa: F821
