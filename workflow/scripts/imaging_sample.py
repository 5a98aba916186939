"""A DiT method's predictions of a synthesis task's test targets: k DDIM samples per test
participant conditioned on its source image, averaged and mapped to [0, 1]."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _smk import run


def main(smk):
    import torch

    from genbrain.imaging.plan import ImagingTask, dit_predictions
    from genbrain.io import save_npy
    from genbrain.modalities import registry_from_config

    torch.set_num_threads(smk.threads)
    pred = dit_predictions(ImagingTask.from_dict(smk.params.job), smk.input.checkpoint,
                           smk.input.index, smk.input.images, smk.params.sampling,
                           registry_from_config(smk.config))
    save_npy(pred, smk.output.predictions)


run(main, snakemake)  # noqa: F821
