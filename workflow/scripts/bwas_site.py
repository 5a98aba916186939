"""A BWAS site's d maps, scores against the reference, truth recovery and effective n."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _smk import run


def main(smk):
    from genbrain.bwas.analysis import site_analysis, write_site_analysis
    from genbrain.bwas.plan import BwasSite
    from genbrain.modalities import registry_from_config

    job = BwasSite.from_dict(smk.params.job)
    truth = None
    if hasattr(smk.input, "truth"):  # a simulated cohort
        from genbrain.simulate.write import read_truth

        truth = read_truth(smk.input.truth, [job.modality]).get((job.modality, "diagnosis"))
    result = site_analysis(job, smk.input.index, smk.input.synthetic, truth=truth,
                           n_boot=smk.params.n_boot, n_null=smk.params.n_null,
                           sizes=smk.params.agreement["sizes"],
                           n_repeats=smk.params.agreement["repeats"], seed=smk.params.seed,
                           registry=registry_from_config(smk.config))
    write_site_analysis(result, smk.output)


run(main, snakemake)  # noqa: F821
