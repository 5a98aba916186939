"""Loss of every pretraining step: table and figure."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _smk import run


def main(smk):
    from genbrain.figures import loss_curve
    from genbrain.io import save_tsv
    from genbrain.pretrain import loss_table

    table = loss_table(smk.input.checkpoint)
    save_tsv(table, smk.output.table)
    loss_curve(table, smk.output.png, title=f"pretraining: {len(table)} steps")


run(main, snakemake)  # noqa: F821
