"""Regional volumes of one site's real images (the tissue backend on the cohort's store)."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _smk import run


def main(smk):
    from genbrain.diagnosis.volumes import save_volumes, store_volumes
    from genbrain.modalities import registry_from_config

    table = store_volumes(smk.input.index, registry_from_config(smk.config),
                          t1_modality=smk.params.modality, seed=smk.params.seed,
                          method=smk.params.volumes["method"], sites=[smk.params.site])
    save_volumes(table, smk.output.volumes)


run(main, snakemake)  # noqa: F821
