rule evaluate_similarity:
    """Age/sex similarity (the paper's Fig. 2a): cosine similarity of voxelwise age and sex
    t-maps of small real hold-out cohorts, their single-sample synthetic counterparts and the
    k-sample averages with the maps of the large real reference cohort (the training split).
    """
    input:
        synthetic="results/synthetic/{synth}/index.tsv",
        cohorts="results/evaluate/similarity/cohorts.tsv",
        real=get_synth_real_store,
        split="results/pretrain/split.tsv",
    output:
        table=report(
            "results/evaluate/similarity/{synth}.tsv",
            caption="../workflow/report/evaluate_similarity.rst",
            category="Synthetic images",
            subcategory="{synth}",
            labels={"model": "{synth}", "figure": "age/sex similarity table"},
        ),
        png=report(
            "results/figures/evaluate/similarity_{synth}.png",
            caption="../workflow/report/evaluate_similarity.rst",
            category="Synthetic images",
            subcategory="{synth}",
            labels={"model": "{synth}", "figure": "age/sex similarity"},
        ),
    log:
        "logs/evaluate_similarity/{synth}.log",
    benchmark:
        "results/benchmarks/evaluate_similarity/{synth}.tsv"
    conda:
        "../envs/model.yaml"
    script:
        "../workflow/scripts/evaluate_similarity.py"


rule audit_memorisation:
    """Memorisation audit (the paper's Fig. 2b): for every synthetic image, the maximum Pearson
    r with every training image of its modality (of the model the cohort is drawn from: the
    pretraining split, or a fine-tune's training set), by streamed matrix products."""
    input:
        synthetic="results/synthetic/{synth}/index.tsv",
        real=get_synth_real_store,
        split=get_synth_training_set,
    output:
        table="results/evaluate/audit/{synth}.tsv",
        top=report(
            "results/evaluate/audit/{synth}_top.tsv",
            caption="../workflow/report/audit_memorisation.rst",
            category="Synthetic images",
            subcategory="{synth}",
            labels={"model": "{synth}", "figure": "closest training images"},
        ),
        png=report(
            "results/figures/evaluate/audit_{synth}.png",
            caption="../workflow/report/audit_memorisation.rst",
            category="Synthetic images",
            subcategory="{synth}",
            labels={"model": "{synth}", "figure": "memorisation audit"},
        ),
    log:
        "logs/audit_memorisation/{synth}.log",
    benchmark:
        "results/benchmarks/audit_memorisation/{synth}.tsv"
    conda:
        "../envs/model.yaml"
    params:
        threshold=config["evaluate"]["audit"]["threshold"],
        top=config["evaluate"]["audit"]["top"],
    script:
        "../workflow/scripts/audit_memorisation.py"


rule privacy_gate:
    """Fail, naming the synthetic and training images, if any synthetic image correlates with
    a training image above the configured threshold; the release export depends on it.
    """
    input:
        audit="results/evaluate/audit/{synth}.tsv",
    output:
        gate=report(
            "results/evaluate/audit/{synth}_gate.tsv",
            caption="../workflow/report/privacy_gate.rst",
            category="Synthetic images",
            subcategory="{synth}",
            labels={"model": "{synth}", "figure": "privacy gate"},
        ),
    log:
        "logs/privacy_gate/{synth}.log",
    benchmark:
        "results/benchmarks/privacy_gate/{synth}.tsv"
    conda:
        "../envs/model.yaml"
    params:
        threshold=config["evaluate"]["audit"]["threshold"],
    script:
        "../workflow/scripts/privacy_gate.py"


rule export_synthetic:
    """Export a synthetic cohort for release once the privacy gate has passed: NIfTI images in
    a BIDS-derivatives layout with JSON sidecars (model, conditions, seed)."""
    input:
        synthetic="results/synthetic/{synth}/index.tsv",
        gate="results/evaluate/audit/{synth}_gate.tsv",
        checkpoint=get_synth_checkpoint,
    output:
        export=directory("results/export/{synth}"),
    log:
        "logs/export_synthetic/{synth}.log",
    benchmark:
        "results/benchmarks/export_synthetic/{synth}.tsv"
    conda:
        "../envs/model.yaml"
    params:
        max_images=config["export"]["max_images"],
        sampling=get_cohort_sampling,
    script:
        "../workflow/scripts/export_synthetic.py"
