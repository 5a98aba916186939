rule similarity_covariates:
    """Draw the evaluation cohorts of the pretrained model (non-overlapping hold-out cohorts)
    and the covariate table of their synthetic counterparts (same ages and sexes, every
    similarity modality, k samples per row)."""
    input:
        split="results/pretrain/split.tsv",
    output:
        cohorts="results/evaluate/similarity/cohorts.tsv",
        covariates="results/synthetic/pretrain/covariates.tsv",
    log:
        "logs/similarity_covariates.log",
    benchmark:
        "results/benchmarks/similarity_covariates/similarity_covariates.tsv"
    conda:
        "../envs/model.yaml"
    params:
        similarity=config["evaluate"]["similarity"],
        modalities=get_similarity_modalities,
        seed=config["seed"],
    script:
        "../workflow/scripts/similarity_covariates.py"


rule cohort_covariates:
    """Write the covariate table of a researcher's synthetic cohort (config
    ``synthesize.cohorts.<name>``: a TSV, or a grid of ages x sexes x modalities), checked
    against the ranges of age and score its model's checkpoint records."""
    input:
        table=get_user_covariates_input,
        checkpoint=get_synth_checkpoint,
    output:
        covariates="results/synthetic/{synth}/covariates.tsv",
    log:
        "logs/cohort_covariates/{synth}.log",
    benchmark:
        "results/benchmarks/cohort_covariates/{synth}.tsv"
    wildcard_constraints:
        synth=USER_SYNTHETIC_PATTERN,
    conda:
        "../envs/model.yaml"
    params:
        spec=get_user_cohort_spec,
        model=get_user_cohort_model,
    script:
        "../workflow/scripts/cohort_covariates.py"


rule synthesize_shard:
    """Sample one shard of a synthetic cohort's covariate rows (DDIM with classifier-free
    guidance) into an image-store shard; shards are independent jobs that resume alone.
    """
    input:
        checkpoint=get_synth_checkpoint,
        covariates="results/synthetic/{synth}/covariates.tsv",
    output:
        shard=directory("results/synthetic/{synth}/shard-{shard}"),
    log:
        "logs/synthesize_shard/{synth}/shard-{shard}.log",
    benchmark:
        "results/benchmarks/synthesize_shard/{synth}/shard-{shard}.tsv"
    conda:
        "../envs/model.yaml"
    threads: 8
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=240,
    params:
        rows=get_synth_shard_rows,
        sampling=get_cohort_sampling,
        dtype=config["synthesize"]["store_dtype"],
    script:
        "../workflow/scripts/synthesize_shard.py"


rule pack_synthetic:
    """Merge a synthetic cohort's shard indices into one image-store index."""
    input:
        shards=get_synth_shards,
    output:
        index="results/synthetic/{synth}/index.tsv",
    log:
        "logs/pack_synthetic/{synth}.log",
    benchmark:
        "results/benchmarks/pack_synthetic/{synth}.tsv"
    conda:
        "../envs/model.yaml"
    script:
        "../workflow/scripts/pack_store.py"
