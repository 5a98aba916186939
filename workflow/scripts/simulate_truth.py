"""Participants table and ground-truth effect maps of a simulated cohort."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _smk import run


def main(smk):
    from genbrain.simulate import write_truth

    write_truth(smk.wildcards.cohort, smk.params.spec, smk.params.seed, smk.params.modalities,
                smk.output.participants, smk.output.truth)


run(main, snakemake)  # noqa: F821
