"""Stop the release of a synthetic cohort that holds a near-copy of a training image."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _smk import run


def main(smk):
    from genbrain.evaluate import privacy_gate

    privacy_gate(smk.input.audit, smk.params.threshold, smk.output.gate)


run(main, snakemake)  # noqa: F821
