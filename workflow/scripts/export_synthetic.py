"""Export a gated synthetic cohort as BIDS-derivatives NIfTI with JSON sidecars."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _smk import run


def main(smk):
    from genbrain.export import export_cohort
    from genbrain.modalities import registry_from_config

    export_cohort(smk.input.synthetic, smk.input.gate, smk.output.export, smk.params.sampling,
                  smk.input.checkpoint, smk.params.max_images, registry_from_config(smk.config))


run(main, snakemake)  # noqa: F821
