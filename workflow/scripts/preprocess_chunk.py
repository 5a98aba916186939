"""Bring one (site, chunk) of a cohort to MNI152 2 mm and write its store shards."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _smk import run


def main(smk):
    from genbrain.io import read_tsv
    from genbrain.modalities import registry_from_config
    from genbrain.preprocess.chunk import preprocess_chunk

    p = smk.params
    table = read_tsv(smk.input.participants)
    rows = table.set_index("participant_id").loc[list(p.images)].reset_index()
    preprocess_chunk(
        rows, p.images, [p.native] * len(rows), registry_from_config(smk.config),
        smk.output.chunk, backend=p.backend, reference=p.reference, options=p.options,
        seed=p.seed, threads=smk.threads, dtype=p.dtype, qc_modality=p.qc_modality,
        qc_threshold=p.qc_threshold, brain_extracted=[p.brain_extracted] * len(rows),
    )


run(main, snakemake)  # noqa: F821
