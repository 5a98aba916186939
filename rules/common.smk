# Config validation, cohort tables and every input function; no rules here.
import dataclasses
import logging
import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

sys.path.insert(0, str(Path(workflow.basedir)))

from genbrain.config import validate_config
from genbrain.bwas.plan import plan_bwas
from genbrain.clinical.plan import plan_clinical
from genbrain.diagnosis.plan import plan_diagnosis
from genbrain.errors import GenbrainInputError
from genbrain.finetune import plan_finetunes
from genbrain.imaging.plan import BASELINES as IMAGING_BASELINE_METHODS
from genbrain.imaging.plan import DIT_METHODS as IMAGING_DIT_METHODS
from genbrain.imaging.plan import plan_imaging
from genbrain.modalities import registry_from_config
from genbrain.splits import split_basis
from genbrain.workflow import (
    clinical_pools,
    given_pretrained,
    imaging_finetunes,
    imaging_model_dir,
    SCRATCH_INIT,
    load_cohorts,
    model_checkpoint,
    model_training_set,
    pretrain_cohort,
    synthetic_cohorts,
)

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


# the planners' notes (e.g. which voxel layout an init checkpoint has and whether the stores
# will be converted to it) are shown as the workflow is parsed, on stderr
_PLAN_NOTES = logging.StreamHandler(sys.stderr)
_PLAN_NOTES.setFormatter(logging.Formatter("genbrain plan: %(message)s"))
logging.getLogger("genbrain").addHandler(_PLAN_NOTES)
logging.getLogger("genbrain").setLevel(logging.INFO)
try:
    PRETRAIN = pretrain_cohort(COHORTS)
    PRETRAINED = given_pretrained(config, PRETRAIN)  # pretrain.checkpoint, or None
    FINETUNES = plan_finetunes(config, COHORTS, PRETRAIN, registry_from_config(config))
    BWAS, BWAS_SCREENS = plan_bwas(config, COHORTS, FINETUNES)
    DIAGNOSIS = plan_diagnosis(config, COHORTS, FINETUNES)
    IMAGING = plan_imaging(config, COHORTS, PRETRAIN)
    IMAGING_FINETUNES = imaging_finetunes(IMAGING, COHORTS)
    SYNTHETIC = synthetic_cohorts(config, COHORTS, PRETRAIN, FINETUNES, BWAS, DIAGNOSIS)
except GenbrainInputError as err:
    raise WorkflowError(str(err)) from None


# the clinical analyses (genbrain.clinical.plan) and their synthetic pools (clinical-<analysis>)
try:
    CLINICAL = plan_clinical(config, COHORTS, FINETUNES)
    SYNTHETIC.update(
        clinical_pools(CLINICAL, SYNTHETIC, config["synthesize"]["shard_size"])
    )
except GenbrainInputError as err:
    raise WorkflowError(str(err)) from None
CLINICAL_PATTERN = "|".join(CLINICAL) or "(?!)"
CLINICAL_SYNTHETIC_PATTERN = (
    "|".join(job.synth for job in CLINICAL.values() if job.n_pool) or "(?!)"
)

# the researcher's own synthetic cohorts (never matches when there are none)
USER_SYNTHETIC_PATTERN = "|".join(config["synthesize"]["cohorts"]) or "(?!)"
# the BWAS sites' synthetic cohorts (bwas-<analysis>-<site label>)
BWAS_SYNTHETIC_PATTERN = "|".join(job.synth for job in BWAS.values()) or "(?!)"
# the BWAS smoothing kernels' path suffixes ("" unsmoothed, _fwhm-8): the {smooth} wildcard,
# one group per suffix so that the empty one is an alternative too
BWAS_SMOOTH_PATTERN = (
    "|".join(
        f"(?:{re.escape(suffix)})"
        for suffix in sorted(
            {job.suffix for job in BWAS.values()}
            | {job.suffix for jobs in BWAS_SCREENS.values() for job in jobs}
        )
    )
    or "(?!)"
)
# the diagnosis training sites' synthetic pools (dx-<analysis>-<site label>)
DX_SYNTHETIC_PATTERN = (
    "|".join(job.synth for job in DIAGNOSIS.values() if job.model) or "(?!)"
)
# the diagnosis analyses, and the cohorts whose real volumes they need
DX_ANALYSES = sorted({job.analysis for job in DIAGNOSIS.values()})
DX_COHORTS = sorted({job.cohort for job in DIAGNOSIS.values()})
# the image tasks (their rules constrain {task} to these), the methods imaging_method
# predicts with (the baselines), and the DiT methods (fine-tuned and sampled by their own rules)
IMAGING_PATTERN = "|".join(IMAGING) or "(?!)"
IMAGING_BASELINES = "|".join(IMAGING_BASELINE_METHODS)
IMAGING_DIT = "|".join(IMAGING_DIT_METHODS)


wildcard_constraints:
    cohort="|".join(COHORTS),
    site="[A-Za-z0-9]+",
    smooth=BWAS_SMOOTH_PATTERN,
    chunk=r"\d+",
    shard=r"\d+",
    synth="|".join(SYNTHETIC) or "none",
    task="|".join(sorted({j.task for j in FINETUNES.values()})) or "(?!)",
    unit="[A-Za-z0-9]+",
    analysis="|".join(sorted(set(BWAS_SCREENS) | set(DX_ANALYSES))) or "(?!)",


def _chunk_dir(cohort, site, chunk):
    """A chunk's store folder; ``site`` is the site's path label."""
    return f"results/stores/{cohort}/site-{site}/chunk-{chunk:03d}"


def _site(wildcards):
    """The site name (as in the participants table) of the ``{site}`` wildcard's label."""
    return COHORTS[wildcards.cohort].site_of_label(wildcards.site)


def get_site(wildcards):
    """The site of a per-site job by its name in the table (``SH_JZ2``, not ``SHJZ2``)."""
    return _site(wildcards)


def get_mosaic_labels(wildcards):
    """Report labels of a site's QC mosaic, with the site's original name."""
    return {"cohort": wildcards.cohort, "site": _site(wildcards), "figure": "QC mosaic"}


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
    return cohort.image_paths(_site(wildcards), wildcards.chunk)


def get_chunk_subjects(wildcards):
    """participant_id -> {modality: path} for one chunk."""
    cohort = COHORTS[wildcards.cohort]
    return cohort.images(cohort.rows(_site(wildcards), wildcards.chunk))


def get_chunk_native(wildcards):
    return COHORTS[wildcards.cohort].is_native(_site(wildcards))


def get_chunk_brain_extracted(wildcards):
    return COHORTS[wildcards.cohort].is_brain_extracted(_site(wildcards))


def get_backend_options(wildcards):
    """Keyword options of the configured registration backend."""
    return config["preprocess"][config["preprocess"]["backend"]]


def get_qc_modality(wildcards):
    """The configured QC modality, or the cohort's first modality when it lacks it."""
    mods = COHORTS[wildcards.cohort].modalities
    return config["qc"]["modality"] if config["qc"]["modality"] in mods else mods[0]


def get_cohort_chunks(wildcards):
    cohort = COHORTS[wildcards.cohort]
    return [
        _chunk_dir(cohort.name, cohort.site_label(s), c) for s, c in cohort.chunks()
    ]


def get_pretrain_participants(wildcards):
    return COHORTS[PRETRAIN].participants


def get_pretrain_store(wildcards):
    return f"results/stores/{PRETRAIN}/index.tsv"


def get_pretrain_inputs(wildcards):
    """What pretrain_dit reads: the checkpoint pretrain.checkpoint gives (it is only checked
    and copied), else the store and the split it trains on."""
    if PRETRAINED:
        return {"given": PRETRAINED}
    return {
        "index": get_pretrain_store(wildcards),
        "split": "results/pretrain/split.tsv",
    }


def pretrain_dit_size(training, taking):
    """pretrain_dit's threads or one of its resources: ``training`` when it trains the DiT,
    ``taking`` when pretrain.checkpoint is given and it only checks and copies that file (the
    model is built on the CPU: no GPU; under Slurm a CPU job). The rule, not the Slurm profile,
    holds these sizes: a profile's set-resources would override the choice."""
    return taking if PRETRAINED else training


def get_pretrain_truth(wildcards):
    """The simulated ground truth of the pretraining cohort ([] for a real cohort)."""
    if not COHORTS[PRETRAIN].simulated:
        return []
    return [f"results/simulated/{PRETRAIN}/ground_truth"]


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
        "compile": s["compile"],
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
    return COHORTS[wildcards.cohort].scores


def get_user_cohort_spec(wildcards):
    """The config entry ``synthesize.cohorts.<name>`` of a researcher's synthetic cohort."""
    return config["synthesize"]["cohorts"][wildcards.synth]


def get_pretrain_modalities(wildcards):
    """The pretraining cohort's modalities (none without a pretraining cohort)."""
    return COHORTS[PRETRAIN].modalities if PRETRAIN else []


def get_similarity_modalities(wildcards):
    """The modalities of the pretrained model's evaluation cohort."""
    return SYNTHETIC["pretrain"].modalities if SYNTHETIC else []


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
            "results/figures/pretrain/checks.png",
        ]
    outputs += get_finetune_outputs()
    outputs += get_bwas_outputs()
    outputs += get_diagnosis_outputs()
    outputs += get_imaging_outputs()
    outputs += get_clinical_outputs()
    if PRETRAIN:
        outputs.append("results/fidelity/fidelity.html")
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
            f"results/qc/{name}/site-{cohort.site_label(site)}_mosaic.png"
            for site in cohort.sites
        ]
        if cohort.simulated:
            outputs.append(f"results/simulated/{name}/participants.tsv")
            outputs.append(f"results/figures/simulate/{name}_truth.png")
    if provenance:
        outputs.append("results/provenance/provenance.html")
    return outputs


# ------------------------------------------------------------------ fine-tuning


def _job(wildcards):
    """The fine-tuning job of the ``{task}``/``{unit}`` wildcards."""
    return FINETUNES[f"{wildcards.task}/{wildcards.unit}"]


def get_finetune_job(wildcards):
    """The job's plan as a plain dict (task, cohort, sites, modalities, conditions...)."""
    return _job(wildcards).to_dict()


def get_finetune_inputs(wildcards):
    """A fine-tune's inputs: its cohort's store and the checkpoint it starts from."""
    job = _job(wildcards)
    init = model_checkpoint("pretrain") if job.init == "pretrain" else job.init
    return {"index": f"results/stores/{job.cohort}/index.tsv", "init": init}


def get_finetune_split(wildcards):
    """The cohort's 3:1:1 split when the job trains on its training split only."""
    job = _job(wildcards)
    return [f"results/splits/{job.cohort}.tsv"] if job.split == "train" else []


def get_split_basis(wildcards):
    """What a cohort's split is stratified by: its diagnosis levels (per site), or the
    score its score-conditioned fine-tune trains on (genbrain.splits.SplitBasis)."""
    cohort = COHORTS[wildcards.cohort]
    return split_basis(cohort.name, cohort.spec, FINETUNES).to_dict()


def get_finetune_truth(wildcards):
    """The simulated ground truth of a fine-tune's cohort ([] for a real cohort)."""
    job = _job(wildcards)
    if not COHORTS[job.cohort].simulated:
        return []
    return [f"results/simulated/{job.cohort}/ground_truth"]


def get_finetune_outputs():
    """Every fine-tune's checkpoint and its checks (table and figure)."""
    out = []
    for job in FINETUNES.values():
        out += [
            f"{job.out_dir}/checkpoint.pt",
            f"{job.out_dir}/checks.tsv",
            f"results/figures/finetune/{job.task}/{job.unit}_checks.png",
        ]
    return out


def get_synth_checkpoint(wildcards):
    """The checkpoint a synthetic cohort is drawn from (the pretrained model or a fine-tune)."""
    return SYNTHETIC[wildcards.synth].checkpoint


def get_synth_training_set(wildcards):
    """The training participants of a synthetic cohort's model (for the audit)."""
    return SYNTHETIC[wildcards.synth].training_set


def get_user_cohort_model(wildcards):
    """What a researcher's synthetic cohort is checked against: its model's modalities and
    conditions."""
    model = SYNTHETIC[wildcards.synth].model
    if model == "pretrain":
        return {
            "what": "the pretrained model",
            "modalities": COHORTS[PRETRAIN].modalities,
            "diagnosis_levels": None,
            "score_column": None,
        }
    job = FINETUNES[model]
    return {
        "what": f"fine-tune {model}",
        "modalities": list(job.modalities),
        "diagnosis_levels": list(job.diagnosis_levels or []) or None,
        "score_column": job.score_column,
    }


def get_finetune_participants(wildcards):
    """The participants table of a fine-tune's cohort."""
    return COHORTS[_job(wildcards).cohort].participants


def get_finetune_store(wildcards):
    """The store index of a fine-tune's cohort."""
    return f"results/stores/{_job(wildcards).cohort}/index.tsv"


def get_finetune_work_dir(wildcards):
    """The resumable training folder of a fine-tune (deliberately not a declared output)."""
    return f"{_job(wildcards).out_dir}/work"


def get_fidelity_inputs(wildcards):
    """The tables the fidelity record reads (its claims: genbrain/fidelity.py)."""
    return {
        "similarity": "results/evaluate/similarity/pretrain.tsv",
        "samples": "results/pretrain/samples.tsv",
        "pretrain_checks": "results/pretrain/checks.tsv",
        "audit": "results/evaluate/audit/pretrain.tsv",
        "gate": "results/evaluate/audit/pretrain_gate.tsv",
        "finetune": [f"{job.out_dir}/checks.tsv" for job in FINETUNES.values()],
        "bwas": [
            f"{job.out_dir}/{name}.tsv"
            for job in BWAS.values()
            for name in ("scores", "maps", "effective_n")
        ],
        "diagnosis": [f"results/diagnosis/{a}/summary.tsv" for a in DX_ANALYSES],
        "imaging": [f"{job.out_dir}/summary.tsv" for job in IMAGING.values()],
        "clinical": [f"{job.out_dir}/comparison.tsv" for job in CLINICAL.values()],
    }


# ------------------------------------------------------------------ BWAS


def _bwas(wildcards):
    """The BWAS site of the ``{analysis}``/``{site}``/``{smooth}`` wildcards (one per
    smoothing kernel)."""
    return BWAS[f"{wildcards.analysis}/{wildcards.site}{wildcards.smooth}"]


def _bwas_of_synth(wildcards):
    """The BWAS site whose synthetic cohort is ``{synth}``, unsmoothed: its kernels share
    the cohort, whose jobs must not depend on them."""
    job = next(job for job in BWAS.values() if job.synth == wildcards.synth)
    return dataclasses.replace(job, smoothing_fwhm=0.0)


def get_bwas_job(wildcards):
    """A BWAS site's plan as a plain dict."""
    return _bwas(wildcards).to_dict()


def get_bwas_synth_job(wildcards):
    """The plan of the BWAS site a synthetic cohort belongs to, as a plain dict."""
    return _bwas_of_synth(wildcards).to_dict()


def get_bwas_participants(wildcards):
    """The participants table of the BWAS site's cohort (its synthetic cohort mirrors it)."""
    return COHORTS[_bwas_of_synth(wildcards).cohort].participants


def get_screen_store(wildcards):
    """The store index of a BWAS analysis's cohort (its screen reads real data only)."""
    return f"results/stores/{BWAS_SCREENS[wildcards.analysis][0].cohort}/index.tsv"


def get_screen_jobs(wildcards):
    """Every site of a BWAS analysis's cohort at the ``{smooth}`` kernel, as plain dicts,
    for its screen."""
    return [
        job.to_dict()
        for job in BWAS_SCREENS[wildcards.analysis]
        if job.suffix == wildcards.smooth
    ]


def get_bwas_inputs(wildcards):
    """A site analysis's inputs: the real store, the synthetic cohort (once its privacy gate
    has passed) and the simulated ground truth when the cohort is simulated."""
    job = _bwas(wildcards)
    inputs = {
        "index": f"results/stores/{job.cohort}/index.tsv",
        "synthetic": f"results/synthetic/{job.synth}/index.tsv",
        "gate": f"results/evaluate/audit/{job.synth}_gate.tsv",
    }
    if COHORTS[job.cohort].simulated:
        inputs["truth"] = f"results/simulated/{job.cohort}/ground_truth"
    return inputs


def get_bwas_outputs():
    """Every BWAS site's tables, maps and figures, and every analysis's screens, at every
    smoothing kernel."""
    out = sorted(
        {
            f"results/bwas/{job.analysis}/screen{job.suffix}.tsv"
            for jobs in BWAS_SCREENS.values()
            for job in jobs
        }
    )
    for job in BWAS.values():
        out += [
            f"{job.out_dir}/scores.tsv",
            f"results/figures/bwas/{job.analysis}/site-{job.path_label}_maps.png",
        ]
    return out


# ------------------------------------------------------------------ cross-site diagnosis


def _dx(wildcards):
    """The diagnosis training site of the ``{analysis}``/``{site}`` wildcards."""
    return DIAGNOSIS[f"{wildcards.analysis}/{wildcards.site}"]


def _dx_of_synth(wildcards):
    """The diagnosis training site whose synthetic pool is ``{synth}``."""
    return next(job for job in DIAGNOSIS.values() if job.synth == wildcards.synth)


def _dx_sites(analysis):
    return [job for job in DIAGNOSIS.values() if job.analysis == analysis]


def get_dx_job(wildcards):
    """A diagnosis training site's plan as a plain dict."""
    return _dx(wildcards).to_dict()


def get_dx_pool_inputs(wildcards):
    """A synthetic pool's covariate sources: the participants table and the cohort's split."""
    job = _dx_of_synth(wildcards)
    return {
        "participants": COHORTS[job.cohort].participants,
        "split": f"results/splits/{job.cohort}.tsv",
    }


def get_dx_pool_job(wildcards):
    """The plan of the training site a synthetic pool belongs to, as a plain dict."""
    return _dx_of_synth(wildcards).to_dict()


def get_dx_synthetic_volume_inputs(wildcards):
    """A synthetic pool's store, once its privacy gate has passed."""
    return {
        "index": f"results/synthetic/{wildcards.synth}/index.tsv",
        "gate": f"results/evaluate/audit/{wildcards.synth}_gate.tsv",
    }


def get_dx_real_volumes(cohort):
    """The per-site real volume tables of a cohort."""
    c = COHORTS[cohort]
    return [f"results/volumes/{cohort}/site-{c.site_label(s)}.csv" for s in c.sites]


def get_dx_volume_site(wildcards):
    """The site name of a real volume table's ``{site}`` label."""
    return _site(wildcards)


def get_dx_modality(wildcards):
    """The modality the volumes of a cohort are measured on (its analyses agree: checked)."""
    mods = {
        job.modality for job in DIAGNOSIS.values() if job.cohort == wildcards.cohort
    }
    if len(mods) != 1:
        raise WorkflowError(
            f"diagnosis analyses of cohort '{wildcards.cohort}' use modalities "
            f"{sorted(mods)}; the cohort's volumes are measured on one"
        )
    return mods.pop()


def get_dx_sweep_inputs(wildcards):
    """A training site's sweep inputs: every real volume table of the cohort, its
    participants and split, and the site's synthetic pool (covariates and volumes) if any.
    """
    job = _dx(wildcards)
    inputs = {
        "volumes": get_dx_real_volumes(job.cohort),
        "participants": COHORTS[job.cohort].participants,
        "split": f"results/splits/{job.cohort}.tsv",
    }
    if job.model:
        inputs["pool"] = f"results/volumes/synthetic/{job.synth}.csv"
        inputs["pool_covariates"] = f"results/synthetic/{job.synth}/covariates.tsv"
    return inputs


def get_dx_summary_inputs(wildcards):
    """Every training site's sweep and SHAP tables of an analysis."""
    sites = _dx_sites(wildcards.analysis)
    return {
        "sweeps": [f"{job.out_dir}/sweep.tsv" for job in sites],
        "shap": [f"{job.out_dir}/shap.tsv" for job in sites],
    }


def get_dx_simulated(wildcards):
    """Whether an analysis's cohort is simulated (its diseased structures are known)."""
    return COHORTS[_dx_sites(wildcards.analysis)[0].cohort].simulated


def get_diagnosis_outputs():
    """Every diagnosis analysis's summary and figures."""
    out = []
    for a in DX_ANALYSES:
        out += [
            f"results/diagnosis/{a}/summary.tsv",
            f"results/figures/diagnosis/{a}/heatmap.png",
            f"results/figures/diagnosis/{a}/ratios.png",
            f"results/figures/diagnosis/{a}/harmonization.png",
            f"results/figures/diagnosis/{a}/shap.png",
        ]
    return out


# ------------------------------------------------------------------ image tasks


def get_imaging_job(wildcards):
    """An image task's plan as a plain dict."""
    return IMAGING[wildcards.task].to_dict()


def get_imaging_store(wildcards):
    """The store index of an image task's cohort."""
    return f"results/stores/{IMAGING[wildcards.task].cohort}/index.tsv"


def get_imaging_predictions(wildcards):
    """Every method's predictions of an image task, in the task's method order."""
    job = IMAGING[wildcards.task]
    return [f"{job.out_dir}/predictions/{m}.npy" for m in job.methods]


def get_imaging_scores_mem_mb(wildcards):
    """The scores step's memory (MB), from the task's test images and methods."""
    return IMAGING[wildcards.task].scores_mem_mb()


def get_imaging_finetune_job(wildcards):
    """The fine-tuning job of an image task's DiT method, as a plain dict."""
    return IMAGING_FINETUNES[f"{wildcards.task}/{wildcards.method}"].to_dict()


def get_imaging_init(wildcards):
    """The checkpoint a DiT method starts from: the pretrained model (genbrain) or the random
    initialisation of its architecture (scratch)."""
    return IMAGING_FINETUNES[f"{wildcards.task}/{wildcards.method}"].init


def get_imaging_work_dir(wildcards):
    """The resumable training folder of an image task's DiT method (not a declared output)."""
    return f"{imaging_model_dir(wildcards.task, wildcards.method)}/work"


def get_imaging_outputs():
    """Every image task's summary and figures."""
    out = []
    for job in IMAGING.values():
        out += [
            f"{job.out_dir}/summary.tsv",
            f"results/figures/imaging/{job.task}/examples.png",
            f"results/figures/imaging/{job.task}/metrics.png",
            f"results/figures/imaging/{job.task}/identifiability.png",
            f"{job.out_dir}/similarity.tsv",
        ]
    return out


# ------------------------------------------------------------------ clinical score prediction


def _clinical_of_synth(wildcards):
    """The clinical analysis whose synthetic pool is ``{synth}``."""
    return next(job for job in CLINICAL.values() if job.synth == wildcards.synth)


def get_clinical_job(wildcards):
    """A clinical analysis's plan as a plain dict."""
    return CLINICAL[wildcards.analysis].to_dict()


def get_clinical_pool_job(wildcards):
    """The plan of the clinical analysis a synthetic pool belongs to, as a plain dict."""
    return _clinical_of_synth(wildcards).to_dict()


def get_clinical_pool_inputs(wildcards):
    """A clinical pool's covariate sources: the participants table and the cohort's split."""
    job = _clinical_of_synth(wildcards)
    return {
        "participants": COHORTS[job.cohort].participants,
        "split": f"results/splits/{job.cohort}.tsv",
    }


def _clinical_pool(job):
    """A clinical analysis's gated pool: its store and its privacy gate."""
    return {
        "pool": f"results/synthetic/{job.synth}/index.tsv",
        "gate": f"results/evaluate/audit/{job.synth}_gate.tsv",
    }


def get_clinical_sweep_inputs(wildcards):
    """A fit's inputs: the cohort's store and split, and above ratio 0 the gated pool (ratio 0
    does not wait for the fine-tune)."""
    from genbrain.clinical.sweep import n_synthetic

    job = CLINICAL[wildcards.analysis]
    inputs = {
        "index": f"results/stores/{job.cohort}/index.tsv",
        "split": f"results/splits/{job.cohort}.tsv",
    }
    if n_synthetic(float(wildcards.ratio), job.n_train):
        inputs.update(_clinical_pool(job))
    return inputs


def get_clinical_work_dir(wildcards):
    """A fit's resumable checkpoint folder (deliberately not a declared output)."""
    job = CLINICAL[wildcards.analysis]
    return f"{job.out_dir}/sweep/ratio-{wildcards.ratio}_seed-{wildcards.replicate}"


def get_clinical_rows(wildcards):
    """Every (ratio, seed) fit's one-row table of a clinical analysis."""
    job = CLINICAL[wildcards.analysis]
    return [job.job_tsv(ratio, k) for ratio, k in job.jobs()]


def get_clinical_pairs_inputs(wildcards):
    """The matched-pairs figure's inputs: the cohort's store and split, the gated pool."""
    job = CLINICAL[wildcards.analysis]
    return {
        "index": f"results/stores/{job.cohort}/index.tsv",
        "split": f"results/splits/{job.cohort}.tsv",
        **_clinical_pool(job),
    }


def get_clinical_outputs():
    """Every clinical analysis's tables and figures (the pairs when it has a pool)."""
    out = []
    for job in CLINICAL.values():
        out += [
            f"{job.out_dir}/comparison.tsv",
            f"results/figures/clinical/{job.analysis}/sweep.png",
        ]
        if job.n_pool:
            out.append(f"results/figures/clinical/{job.analysis}/pairs.png")
    return out
