rule split_pretrain:
    """Hold out a seeded fraction of the pretraining cohort's participants (per site) for the
    evaluation of the pretrained model; the rest is the training split."""
    input:
        participants=get_pretrain_participants,
    output:
        split="results/pretrain/split.tsv",
    log:
        "logs/split_pretrain.log",
    benchmark:
        "results/benchmarks/split_pretrain/split_pretrain.tsv"
    conda:
        "../envs/model.yaml"
    params:
        fraction=config["pretrain"]["holdout_fraction"],
        seed=config["seed"],
    script:
        "../workflow/scripts/split_pretrain.py"


rule pretrain_dit:
    """Pretrain the GenBrain DiT (IDDPM hybrid loss) on the training split of the pretraining
    cohort's image store. Resumable: rerunning continues from the last checkpoint in the work
    folder (results/pretrain/work/), which is deliberately not a declared output. With
    pretrain.checkpoint, only check that checkpoint and copy it: no training, and no GPU asked
    (its threads and resources: pretrain_dit_size in common.smk; the paper's sizes for training:
    one GPU with 8 CPUs, 64 GB, 48 h)."""
    input:
        unpack(get_pretrain_inputs),
    output:
        checkpoint="results/pretrain/checkpoint.pt",
    log:
        "logs/pretrain_dit.log",
    benchmark:
        "results/benchmarks/pretrain_dit/pretrain.tsv"
    retries: 2
    conda:
        "../envs/model.yaml"
    threads: pretrain_dit_size(8, 2)
    resources:
        gpu=pretrain_dit_size(1, 0),
        cpus_per_gpu=pretrain_dit_size(8, 0),
        mem_mb=pretrain_dit_size(64000, 32000),
        runtime=pretrain_dit_size(2880, 60),
    params:
        train=config["pretrain"]["train"],
        work_dir="results/pretrain/work",
        seed=config["seed"],
    script:
        "../workflow/scripts/pretrain_dit.py"


rule pretrain_loss_curve:
    """Training loss of every pretraining step, raw and smoothed (table and figure)."""
    input:
        checkpoint="results/pretrain/checkpoint.pt",
    output:
        table="results/pretrain/loss.tsv",
        png=report(
            "results/figures/pretrain/loss_curve.png",
            caption="../workflow/report/pretrain_loss_curve.rst",
            category="Pretraining",
            labels={"model": "pretrained", "figure": "loss curve"},
        ),
    log:
        "logs/pretrain_loss_curve.log",
    benchmark:
        "results/benchmarks/pretrain_loss_curve/pretrain_loss_curve.tsv"
    conda:
        "../envs/model.yaml"
    script:
        "../workflow/scripts/pretrain_loss_curve.py"


rule pretrain_samples:
    """Synthetic images of every pretraining modality for one age/sex condition beside real
    hold-out images of the nearest condition (the paper's Fig. 2c)."""
    input:
        checkpoint="results/pretrain/checkpoint.pt",
        index=get_pretrain_store,
        split="results/pretrain/split.tsv",
    output:
        png=report(
            "results/figures/pretrain/samples.png",
            caption="../workflow/report/pretrain_samples.rst",
            category="Pretraining",
            labels={"model": "pretrained", "figure": "synthetic vs real"},
        ),
        table=report(
            "results/pretrain/samples.tsv",
            caption="../workflow/report/pretrain_samples.rst",
            category="Pretraining",
            labels={"model": "pretrained", "figure": "samples vs the mean image"},
        ),
    log:
        "logs/pretrain_samples.log",
    benchmark:
        "results/benchmarks/pretrain_samples/pretrain.tsv"
    conda:
        "../envs/model.yaml"
    threads: 8
    resources:
        gpu=1,
        runtime=60,
    params:
        condition=config["pretrain"]["samples"],
        sampling=get_sampling,
    script:
        "../workflow/scripts/pretrain_samples.py"


rule pretrain_checks:
    """What the pretrained model carries into its samples: for age (75 minus 50 years) and sex
    (M minus F), pairs of full samples drawn as synthesis draws them from identical noise,
    their mean difference against the training split's own effect map and, on a simulated
    cohort, the planted truth (evaluate.checks.paired_samples pairs per label on the
    evaluate.similarity modalities)."""
    input:
        checkpoint="results/pretrain/checkpoint.pt",
        index=get_pretrain_store,
        split="results/pretrain/split.tsv",
        truth=get_pretrain_truth,
    output:
        table=report(
            "results/pretrain/checks.tsv",
            caption="../workflow/report/pretrain_checks.rst",
            category="Pretraining",
            labels={"model": "pretrained", "figure": "checks table"},
        ),
        png=report(
            "results/figures/pretrain/checks.png",
            caption="../workflow/report/pretrain_checks.rst",
            category="Pretraining",
            labels={"model": "pretrained", "figure": "age and sex in paired samples"},
        ),
    log:
        "logs/pretrain_checks.log",
    benchmark:
        "results/benchmarks/pretrain_checks/pretrain.tsv"
    conda:
        "../envs/model.yaml"
    threads: 2
    resources:
        gpu=1,
        runtime=60,
    params:
        seed=config["seed"],
        paired_samples=config["evaluate"]["checks"]["paired_samples"],
        modalities=config["evaluate"]["similarity"]["modalities"],
        cohort=PRETRAIN,
        sampling=get_sampling,
    script:
        "../workflow/scripts/pretrain_checks.py"
