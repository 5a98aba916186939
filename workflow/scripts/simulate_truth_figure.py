"""Figure of the ground-truth effect maps of a simulated cohort."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _smk import run


def main(smk):
    from genbrain.figures import truth_maps
    from genbrain.simulate import read_truth

    maps = read_truth(smk.input.truth, smk.params.modalities)
    truth_maps(maps, smk.output.png, title=f"{smk.wildcards.cohort}: planted effects "
                                            "(raw units of each modality)")


run(main, snakemake)  # noqa: F821
