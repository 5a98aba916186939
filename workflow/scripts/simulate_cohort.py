"""Simulate one (site, chunk) of a cohort as NIfTI files plus a manifest."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _smk import run


def main(smk):
    from genbrain.chunks import chunk_rows
    from genbrain.simulate import participants, write_chunk

    p = smk.params
    table = participants(smk.wildcards.cohort, p.spec, p.seed)
    rows = chunk_rows(table, p.chunk_size, p.site, int(smk.wildcards.chunk))
    write_chunk(smk.wildcards.cohort, p.spec, p.seed, rows, p.modalities, p.pattern,
                smk.output.manifest)


run(main, snakemake)  # noqa: F821
