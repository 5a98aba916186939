"""A diagnosis analysis's summary tables and figures."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _smk import run


def main(smk):
    from genbrain.diagnosis.plan import summary_outputs

    summary_outputs(list(smk.input.sweeps), list(smk.input.shap), smk.wildcards.analysis,
                    smk.params.simulated, dict(smk.output))


run(main, snakemake)  # noqa: F821
