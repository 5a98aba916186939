"""Synthetic images of every pretraining modality beside real hold-out images (Fig. 2c)."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _smk import run


def main(smk):
    import torch

    from genbrain.io import save_tsv
    from genbrain.modalities import registry_from_config
    from genbrain.pretrain import sample_panel
    from genbrain.sampling import SamplingConfig

    torch.set_num_threads(smk.threads)
    condition = smk.params.condition
    pairs = sample_panel(smk.input.checkpoint, smk.input.index, smk.input.split,
                         condition["age"], condition["sex"],
                         SamplingConfig(**smk.params.sampling, k=1), smk.output.png,
                         registry_from_config(smk.config))
    save_tsv(pairs, smk.output.table)


run(main, snakemake)  # noqa: F821
