"""An image task's figures: examples (input, methods, target), metric distributions,
identifiability matrices."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _smk import run


def main(smk):
    from genbrain.imaging.plan import ImagingTask, figure_outputs

    pairs = {k: smk.input[k] for k in ("images", "test_source", "test_target")}
    figure_outputs(ImagingTask.from_dict(smk.params.job), pairs, list(smk.input.predictions),
                   smk.input.scores, smk.input.summary, dict(smk.output),
                   correlations=smk.input.correlations)


run(main, snakemake)  # noqa: F821
