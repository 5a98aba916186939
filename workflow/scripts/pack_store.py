"""Merge the chunk (or shard) indices of a cohort store into its image-store index."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _smk import run


def main(smk):
    import logging

    from genbrain.store import merge_indices

    index = merge_indices([f"{d}/index.tsv" for d in smk.input], smk.output.index)
    logging.getLogger("genbrain").info(
        "%d images of %d subjects in %s", len(index), index["participant_id"].nunique(),
        smk.output.index)


run(main, snakemake)  # noqa: F821
