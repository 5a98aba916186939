"""One method's predictions of an image task's clean test images (mean image, non-local
means, or a 3D U-Net trained on the task's training pairs)."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _smk import run


def main(smk):
    import torch

    from genbrain.imaging.plan import ImagingTask, predict
    from genbrain.io import save_npy

    torch.set_num_threads(smk.threads)
    pred = predict(ImagingTask.from_dict(smk.params.job), smk.wildcards.method,
                   dict(smk.input))
    save_npy(pred.astype("float32"), smk.output.predictions)


run(main, snakemake)  # noqa: F821
