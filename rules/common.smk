# Config validation, cohort tables and every input function; no rules here.
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

sys.path.insert(0, str(Path(workflow.basedir)))

from genbrain.config import validate_config
from genbrain.errors import GenbrainInputError
from genbrain.workflow import load_cohorts, pretrain_cohort, synthetic_cohorts

SCHEMAS = Path(workflow.basedir) / "workflow" / "schemas"

try:
    _validated = validate_config(config, SCHEMAS / "config.schema.yaml", "config")
    config.clear()
    config.update(_validated)
    COHORTS = load_cohorts(
        config,
        SCHEMAS / "participants.schema.yaml",
        config["preprocess"]["chunk_size"],
    )
except GenbrainInputError as err:
    raise WorkflowError(str(err)) from None


try:
    PRETRAIN = pretrain_cohort(COHORTS)
    SYNTHETIC = synthetic_cohorts(config, COHORTS, PRETRAIN)
except GenbrainInputError as err:
    raise WorkflowError(str(err)) from None


# the researcher's own synthetic cohorts (never matches when there are none)
USER_SYNTHETIC_PATTERN = "|".join(config["synthesize"]["cohorts"]) or "(?!)"


wildcard_constraints:
    cohort="|".join(COHORTS),
    site="[A-Za-z0-9]+",
    chunk=r"\d+",
    shard=r"\d+",
    synth="|".join(SYNTHETIC) or "none",


def _chunk_dir(cohort, site, chunk):
    return f"results/stores/{cohort}/site-{site}/chunk-{chunk:03d}"


def get_sim_spec(wildcards):
    return config["cohorts"][wildcards.cohort]["simulate"]


def get_modalities(wildcards):
    return COHORTS[wildcards.cohort].modalities


def get_sim_pattern(wildcards):
    return COHORTS[wildcards.cohort].pattern


def get_participants(wildcards):
    return COHORTS[wildcards.cohort].participants


def get_chunk_images(wildcards):
    """Declared image inputs of a preprocessing chunk: the files themselves for a real cohort,
    the simulator's manifest (written after all of its files) for a simulated one."""
    cohort = COHORTS[wildcards.cohort]
    if cohort.simulated:
        return f"results/simulated/{wildcards.cohort}/manifests/site-{wildcards.site}_chunk-{wildcards.chunk}.tsv"
    return cohort.image_paths(wildcards.site, wildcards.chunk)


def get_chunk_subjects(wildcards):
    """participant_id -> {modality: path} for one chunk."""
    cohort = COHORTS[wildcards.cohort]
    return cohort.images(cohort.rows(wildcards.site, wildcards.chunk))


def get_chunk_native(wildcards):
    return COHORTS[wildcards.cohort].is_native(wildcards.site)


def get_backend_options(wildcards):
    """Keyword options of the configured registration backend."""
    return config["preprocess"][config["preprocess"]["backend"]]


def get_qc_modality(wildcards):
    """The configured QC modality, or the cohort's first modality when it lacks it."""
    mods = COHORTS[wildcards.cohort].modalities
    return config["qc"]["modality"] if config["qc"]["modality"] in mods else mods[0]


def get_cohort_chunks(wildcards):
    cohort = COHORTS[wildcards.cohort]
    return [_chunk_dir(cohort.name, s, c) for s, c in cohort.chunks()]


def get_pretrain_participants(wildcards):
    return COHORTS[PRETRAIN].participants


def get_pretrain_store(wildcards):
    return f"results/stores/{PRETRAIN}/index.tsv"


def get_sampling(wildcards):
    """SamplingConfig keys from the synthesize section (k is set per use)."""
    s = config["synthesize"]
    return {
        "steps": s["ddim_steps"],
        "guidance": s["guidance"],
        "batch_size": s["batch_size"],
        "seed": config["seed"],
        "weights": s["weights"],
        "clip_x0": s["clip_x0"],
        "precision": s["precision"],
    }


def get_cohort_sampling(wildcards):
    """How a synthetic cohort is drawn: the synthesize section and the cohort's k (samples
    averaged per image; 1 for the evaluation cohort, whose k samples are separate rows).
    """
    return {**get_sampling(wildcards), "k": SYNTHETIC[wildcards.synth].k}


def get_synth_shards(wildcards):
    synth = SYNTHETIC[wildcards.synth]
    return [
        f"results/synthetic/{wildcards.synth}/shard-{k:03d}"
        for k in range(synth.n_shards)
    ]


def get_synth_shard_rows(wildcards):
    """(start, stop) covariate rows of one synthesis shard."""
    rows = SYNTHETIC[wildcards.synth].shard_rows(int(wildcards.shard))
    return [rows.start, rows.stop]


def get_cohort_scores(wildcards):
    """The clinical score columns of a cohort (config ``cohorts.<name>.scores``)."""
    return list(COHORTS[wildcards.cohort].spec.get("scores", []))


def get_user_covariates_input(wildcards):
    """The researcher's covariate TSV of a synthetic cohort ([] for a grid)."""
    spec = config["synthesize"]["cohorts"][wildcards.synth]
    return [spec["covariates"]] if "covariates" in spec else []


def get_synth_real_store(wildcards):
    """Index of the real store whose images a synthetic cohort is compared with."""
    return f"results/stores/{SYNTHETIC[wildcards.synth].real}/index.tsv"


def get_provenance_inputs(wildcards):
    """The input tables whose checksums the provenance page records (participants tables,
    the covariate tables of researchers' synthetic cohorts), and every other final output,
    so that provenance runs after the rest of the DAG."""
    return {
        "participants": [c.participants for c in COHORTS.values()],
        "covariates": [
            spec["covariates"]
            for spec in config["synthesize"]["cohorts"].values()
            if "covariates" in spec
        ],
        "outputs": get_all_outputs(provenance=False),
    }


def get_all_outputs(provenance=True):
    """Every final output; the provenance page last (it needs all the others)."""
    outputs = []
    if PRETRAIN:
        outputs += [
            "results/figures/pretrain/loss_curve.png",
            "results/figures/pretrain/samples.png",
        ]
    for name in SYNTHETIC:
        if name == "pretrain":  # the similarity needs the mirrored real cohorts
            outputs.append(f"results/evaluate/similarity/{name}.tsv")
        outputs += [
            f"results/evaluate/audit/{name}_gate.tsv",
            f"results/export/{name}",
        ]
    for name, cohort in COHORTS.items():
        outputs.append(f"results/stores/{name}/index.tsv")
        outputs.append(f"results/qc/{name}/registration.tsv")
        outputs.append(f"results/qc/{name}/demographics.tsv")
        outputs += [
            f"results/qc/{name}/site-{site}_mosaic.png" for site in cohort.sites
        ]
        if cohort.simulated:
            outputs.append(f"results/simulated/{name}/participants.tsv")
            outputs.append(f"results/figures/simulate/{name}_truth.png")
    if provenance:
        outputs.append("results/provenance/provenance.html")
    return outputs
