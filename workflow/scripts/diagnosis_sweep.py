"""One training site's LightGBM sweep, its selection table and SHAP importances."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _smk import run


def main(smk):
    from genbrain.diagnosis.plan import DiagnosisSite, site_sweep, sweep_inputs
    from genbrain.io import save_tsv

    job = DiagnosisSite.from_dict(smk.params.job)
    pool = smk.input.pool if hasattr(smk.input, "pool") else None
    pool_cov = smk.input.pool_covariates if hasattr(smk.input, "pool_covariates") else None
    features, pool = sweep_inputs(job, list(smk.input.volumes), smk.input.participants,
                                  smk.input.split, pool, pool_cov)
    out = site_sweep(job, features, pool, smk.params.diagnosis, smk.threads, smk.params.seed)
    for name in ("sweep", "selection", "shap"):
        save_tsv(out[name], smk.output[name])


run(main, snakemake)  # noqa: F821
