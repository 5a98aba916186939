"""One (ratio, seed) fit of a clinical analysis's score regressor: its one-row table."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _smk import run


def main(smk):
    from genbrain.clinical.plan import ClinicalAnalysis, run_sweep_job
    from genbrain.io import save_tsv

    job = ClinicalAnalysis.from_dict(smk.params.job)
    pool = smk.input.pool if hasattr(smk.input, "pool") else None
    row = run_sweep_job(job, float(smk.wildcards.ratio), int(smk.wildcards.replicate),
                        smk.input.index, smk.input.split, pool, smk.params.work_dir)
    save_tsv(row, smk.output.row)


run(main, snakemake)  # noqa: F821
