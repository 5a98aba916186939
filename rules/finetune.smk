rule split_cohort:
    """Split a cohort into seeded 3:1:1 train/validation/test sets: per site stratified by
    diagnosis (a case-control cohort), or over all participants stratified by the score its
    score-conditioned fine-tune learns (a clinical cohort); fine-tunes that train on the
    training split and the classifiers or regressors validated and tested on the rest share
    it."""
    input:
        participants=get_participants,
    output:
        split="results/splits/{cohort}.tsv",
    log:
        "logs/split_cohort/{cohort}.log",
    benchmark:
        "results/benchmarks/split_cohort/{cohort}.tsv"
    conda:
        "../envs/model.yaml"
    params:
        basis=get_split_basis,
        seed=config["seed"],
    script:
        "../workflow/scripts/split_cohort.py"


rule finetune_model:
    """Fine-tune the init model (the pretrained DiT, or a given checkpoint) on one task's
    training set: one site (per-site tasks) or the task's sites. The heads, modality rows and
    input channels the task implies are added zero-initialised; the architecture is the init
    model's. Resumable like pretraining: trains in results/finetune/<task>/<unit>/work/.
    """
    input:
        unpack(get_finetune_inputs),
        participants=get_finetune_participants,
        split=get_finetune_split,
    output:
        checkpoint="results/finetune/{task}/{unit}/checkpoint.pt",
        training="results/finetune/{task}/{unit}/training.tsv",
    log:
        "logs/finetune_model/{task}/{unit}.log",
    benchmark:
        "results/benchmarks/finetune_model/{task}/{unit}.tsv"
    retries: 2
    conda:
        "../envs/model.yaml"
    threads: 8
    resources:
        gpu=1,
        mem_mb=32000,
        runtime=720,
    params:
        job=get_finetune_job,
        work_dir=get_finetune_work_dir,
        seed=config["seed"],
    script:
        "../workflow/scripts/finetune_model.py"


rule finetune_checks:
    """What a fine-tune learned: its loss, and for each label head the direction of the
    learned effect (one-step clean-image estimate) against the training set's own effect map
    and, on simulated cohorts, the planted truth; for each label and age and sex, its effect on
    pairs of full samples drawn as synthesis draws them from identical noise
    (finetune.checks.paired_samples); for image-conditioned tasks the clean-image estimate
    against the target.
    """
    input:
        checkpoint="results/finetune/{task}/{unit}/checkpoint.pt",
        training="results/finetune/{task}/{unit}/training.tsv",
        index=get_finetune_store,
        truth=get_finetune_truth,
    output:
        table=report(
            "results/finetune/{task}/{unit}/checks.tsv",
            caption="../workflow/report/finetune_checks.rst",
            category="Fine-tuning",
            subcategory="{task}",
            labels={"task": "{task}", "unit": "{unit}", "figure": "checks table"},
        ),
        png=report(
            "results/figures/finetune/{task}/{unit}_checks.png",
            caption="../workflow/report/finetune_checks.rst",
            category="Fine-tuning",
            subcategory="{task}",
            labels={
                "task": "{task}",
                "unit": "{unit}",
                "figure": "loss and learned effects",
            },
        ),
    log:
        "logs/finetune_checks/{task}/{unit}.log",
    benchmark:
        "results/benchmarks/finetune_checks/{task}/{unit}.tsv"
    conda:
        "../envs/model.yaml"
    threads: 2
    params:
        job=get_finetune_job,
        seed=config["seed"],
        paired_samples=config["finetune"]["checks"]["paired_samples"],
        sampling=get_sampling,
    script:
        "../workflow/scripts/finetune_checks.py"
