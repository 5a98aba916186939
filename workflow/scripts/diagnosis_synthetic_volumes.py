"""Regional volumes of a synthetic pool's images (Input-file = the row's synthetic_id)."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _smk import run


def main(smk):
    from genbrain.diagnosis.plan import DiagnosisSite, synthetic_volumes
    from genbrain.diagnosis.volumes import save_volumes
    from genbrain.modalities import registry_from_config

    job = DiagnosisSite.from_dict(smk.params.job)
    table = synthetic_volumes(job, smk.input.index, registry_from_config(smk.config),
                              smk.params.volumes["method"], smk.params.seed)
    save_volumes(table, smk.output.volumes)


run(main, snakemake)  # noqa: F821
