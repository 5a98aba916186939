"""The pre-fine-tuning screen of every site of a BWAS analysis: reliability and concordance."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _smk import run


def main(smk):
    from genbrain.bwas.analysis import screen_sites
    from genbrain.bwas.plan import BwasSite
    from genbrain.io import save_tsv
    from genbrain.modalities import registry_from_config

    jobs = [BwasSite.from_dict(j) for j in smk.params.jobs]
    table = screen_sites(jobs, smk.input.index, seed=smk.params.seed,
                         registry=registry_from_config(smk.config))
    save_tsv(table, smk.output.table)


run(main, snakemake)  # noqa: F821
