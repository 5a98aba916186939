"""An image task's pairs: the chosen hold-out (test) and training images, clean and corrupted
(seeded per image), and the corruption drawn for each."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _smk import run


def main(smk):
    import torch

    from genbrain.imaging.plan import ImagingTask, make_pairs

    torch.set_num_threads(smk.threads)  # TorchIO's resampling of the moved copies
    make_pairs(ImagingTask.from_dict(smk.params.job), smk.input.index, smk.input.split,
               dict(smk.output))


run(main, snakemake)  # noqa: F821
