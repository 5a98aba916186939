"""Sample one shard of a synthetic cohort into an image-store shard folder."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _smk import run


def main(smk):
    import torch

    from genbrain.covariates import read_covariates
    from genbrain.modalities import registry_from_config
    from genbrain.sampling import SamplingConfig
    from genbrain.synthesize import synthesize_shard

    torch.set_num_threads(smk.threads)
    start, stop = smk.params.rows
    rows = read_covariates(smk.input.covariates).iloc[start:stop]
    synthesize_shard(smk.input.checkpoint, rows, smk.output.shard,
                     SamplingConfig(**smk.params.sampling), registry_from_config(smk.config),
                     smk.params.dtype, source=f"{smk.input.covariates} rows {start}-{stop}")


run(main, snakemake)  # noqa: F821
