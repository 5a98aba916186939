# Config validation, cohort tables and every input function; no rules here.
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

sys.path.insert(0, str(Path(workflow.basedir)))

from genbrain.config import validate_config
from genbrain.errors import GenbrainInputError
from genbrain.workflow import load_cohorts

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


wildcard_constraints:
    cohort="|".join(COHORTS),
    site="[A-Za-z0-9]+",
    chunk=r"\d+",


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


def get_provenance_inputs(wildcards):
    """The participants tables whose checksums the provenance page records, and every
    other final output, so that provenance runs after the rest of the DAG."""
    return {
        "participants": [c.participants for c in COHORTS.values()],
        "outputs": get_all_outputs(provenance=False),
    }


def get_all_outputs(provenance=True):
    """Every final output; the provenance page last (it needs all the others)."""
    outputs = []
    for name, cohort in COHORTS.items():
        outputs.append(f"results/stores/{name}/index.tsv")
        outputs.append(f"results/qc/{name}/registration.tsv")
        outputs += [
            f"results/qc/{name}/site-{site}_mosaic.png" for site in cohort.sites
        ]
        if cohort.simulated:
            outputs.append(f"results/simulated/{name}/participants.tsv")
    if provenance:
        outputs.append("results/provenance/provenance.html")
    return outputs
