"""The pre-fine-tuning screen of a BWAS site: reliability and concordance of its own map."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _smk import run


def main(smk):
    from genbrain.bwas import BwasSite, site_screen
    from genbrain.io import save_tsv
    from genbrain.modalities import registry_from_config

    job = BwasSite.from_dict(smk.params.job)
    table = site_screen(job, smk.input.index, seed=smk.params.seed,
                        registry=registry_from_config(smk.config))
    save_tsv(table, smk.output.table)


run(main, snakemake)  # noqa: F821
