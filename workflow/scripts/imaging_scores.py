"""An image task's scores: every method and the input against the targets, per image, and
the summary with bootstrap CIs and paired tests against the input; the identifiability
matrices; the age/sex similarity."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _smk import run


def main(smk):
    from genbrain.imaging.plan import ImagingTask, scores_outputs

    pairs = {k: smk.input[k] for k in ("images", "test_source", "test_target")}
    scores_outputs(ImagingTask.from_dict(smk.params.job), pairs, list(smk.input.predictions),
                   dict(smk.output), index=smk.input.index, split=smk.input.split)


run(main, snakemake)  # noqa: F821
