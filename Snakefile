# genbrain-pipeline: reproduce GenBrain (a diffusion-transformer foundation model of
# multimodal brain MRI) end to end, or run the same DAG on the embedded simulated cohorts.
#   snakemake --cores all --configfile config/demo.yaml   # embedded default, this machine
#   snakemake --profile slurm                              # the paper, on Slurm (README)
# Run from the repository root: `slurm` there links to profiles/slurm/, where --profile looks.
from snakemake.utils import min_version

min_version("9.0")


# config/config.yaml unless --configfile is given; the two are never merged, so the demo
# does not inherit the paper's real cohorts.
if not config:

    configfile: f"{workflow.basedir}/config/config.yaml"


report: "workflow/report/workflow.rst"


include: "rules/common.smk"
include: "rules/simulate.smk"
include: "rules/preprocess.smk"
include: "rules/pretrain.smk"
include: "rules/finetune.smk"
include: "rules/synthesize.smk"
include: "rules/evaluate.smk"
include: "rules/bwas.smk"
include: "rules/diagnosis.smk"
include: "rules/imaging.smk"
include: "rules/clinical.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        get_all_outputs(),
