rule imaging_pairs:
    """An image task's pairs (paper Methods, "Image enhancement", "Cross-modality
    synthesis"): its test images (the pretraining hold-out) and training images, mapped to
    [0, 1] over the brain, and their sources: corrupted copies (k-space rigid motion, Gaussian
    and Rician noise), each drawn from its own stream seeded by the config's seed and the
    image's participant id, the draws tabled per image; or, for synthesis, the same
    participants' images of the source modality (of each, in order, with several: rest ->
    task's FC maps)."""
    input:
        index=get_imaging_store,
        split="results/pretrain/split.tsv",
    output:
        images="results/imaging/{task}/pairs/images.tsv",
        corruption="results/imaging/{task}/pairs/corruption.tsv",
        test_source="results/imaging/{task}/pairs/test_source.npy",
        test_target="results/imaging/{task}/pairs/test_target.npy",
        train_source="results/imaging/{task}/pairs/train_source.npy",
        train_target="results/imaging/{task}/pairs/train_target.npy",
    log:
        "logs/imaging_pairs/{task}.log",
    benchmark:
        "results/benchmarks/imaging_pairs/{task}.tsv"
    wildcard_constraints:
        task=IMAGING_PATTERN,
    conda:
        "../envs/model.yaml"
    threads: 1
    params:
        job=get_imaging_job,
    script:
        "../workflow/scripts/imaging_pairs.py"


rule imaging_method:
    """One baseline's predictions of an image task's test targets from their inputs (the
    corrupted copies, or a synthesis task's source images): the mean training image,
    non-local means (enhancement), or a MONAI 3D U-Net trained on the task's training pairs.
    """
    input:
        test_source=rules.imaging_pairs.output.test_source,
        train_source=rules.imaging_pairs.output.train_source,
        train_target=rules.imaging_pairs.output.train_target,
    output:
        predictions="results/imaging/{task}/predictions/{method}.npy",
    log:
        "logs/imaging_method/{task}/{method}.log",
    benchmark:
        "results/benchmarks/imaging_method/{task}/{method}.tsv"
    wildcard_constraints:
        task=IMAGING_PATTERN,
        method=IMAGING_BASELINES,
    conda:
        "../envs/model.yaml"
    # one torch thread per job, methods in parallel (as the diagnosis sweep's LightGBM); a
    # cluster profile may raise it (set-threads)
    threads: 1
    params:
        job=get_imaging_job,
    script:
        "../workflow/scripts/imaging_method.py"


rule imaging_scores:
    """An image task's scores (paper Figs. 3-4): PSNR, RMSE, 3D-SSIM, MS-SSIM and Dice AUC
    (the task's metrics) of every method's predictions and of the input (several sources:
    their mean) against the targets, and the identifiability of
    each image among the test images (own r, identified, own minus other r), per image; the
    summary per method and metric with bootstrap 95% CIs, and the paired difference from the
    input with its CI and the paired t-test; the correlation matrices; the age/sex
    similarity of each method's outputs and of the real targets with the reference t-maps
    (the store's training split), when the task has enough test images."""
    input:
        images=rules.imaging_pairs.output.images,
        test_source=rules.imaging_pairs.output.test_source,
        test_target=rules.imaging_pairs.output.test_target,
        predictions=get_imaging_predictions,
        index=get_imaging_store,
        split="results/pretrain/split.tsv",
    output:
        scores="results/imaging/{task}/scores.tsv",
        correlations="results/imaging/{task}/correlations.npy",
        summary=report(
            "results/imaging/{task}/summary.tsv",
            caption="../workflow/report/imaging_summary.rst",
            category="Imaging",
            subcategory="{task}",
            labels={"figure": "summary table"},
        ),
        similarity=report(
            "results/imaging/{task}/similarity.tsv",
            caption="../workflow/report/imaging_similarity.rst",
            category="Imaging",
            subcategory="{task}",
            labels={"figure": "age/sex similarity"},
        ),
    log:
        "logs/imaging_scores/{task}.log",
    benchmark:
        "results/benchmarks/imaging_scores/{task}.tsv"
    wildcard_constraints:
        task=IMAGING_PATTERN,
    conda:
        "../envs/model.yaml"
    threads: 1
    # the float64 copies of the identifiability matrix grow with n_test (~8 GB at the paper's
    # 500 test images); the rule, not the profile, sizes it
    resources:
        mem_mb=get_imaging_scores_mem_mb,
    params:
        job=get_imaging_job,
    script:
        "../workflow/scripts/imaging_scores.py"


rule imaging_figure:
    """An image task's figures (paper Fig. 3): the corrupted input, each method's output and
    the clean target on the same slice of a few test images, every metric's per-image
    values per method with the mean and its 95% CI, and each method's targets x predictions
    correlation matrix (identifiability)."""
    input:
        images=rules.imaging_pairs.output.images,
        test_source=rules.imaging_pairs.output.test_source,
        test_target=rules.imaging_pairs.output.test_target,
        predictions=get_imaging_predictions,
        scores=rules.imaging_scores.output.scores,
        summary=rules.imaging_scores.output.summary,
        correlations=rules.imaging_scores.output.correlations,
    output:
        examples=report(
            "results/figures/imaging/{task}/examples.png",
            caption="../workflow/report/imaging_examples.rst",
            category="Imaging",
            subcategory="{task}",
            labels={"figure": "examples"},
        ),
        metrics=report(
            "results/figures/imaging/{task}/metrics.png",
            caption="../workflow/report/imaging_metrics.rst",
            category="Imaging",
            subcategory="{task}",
            labels={"figure": "metric distributions"},
        ),
        identifiability=report(
            "results/figures/imaging/{task}/identifiability.png",
            caption="../workflow/report/imaging_identifiability.rst",
            category="Imaging",
            subcategory="{task}",
            labels={"figure": "identifiability"},
        ),
    log:
        "logs/imaging_figure/{task}.log",
    benchmark:
        "results/benchmarks/imaging_figure/{task}.tsv"
    wildcard_constraints:
        task=IMAGING_PATTERN,
    conda:
        "../envs/model.yaml"
    params:
        job=get_imaging_job,
    script:
        "../workflow/scripts/imaging_figure.py"


rule imaging_scratch_init:
    """The from-scratch control's start (paper: "pretraining helps"): a checkpoint of the
    pretrained model's architecture, training record, label scalings and voxel layout with
    fresh random weights drawn from the config's seed, so the control goes through the same
    fine-tuning job as the GenBrain method."""
    input:
        checkpoint=model_checkpoint("pretrain"),
    output:
        checkpoint=SCRATCH_INIT,
    log:
        "logs/imaging_scratch_init/scratch_init.log",
    benchmark:
        "results/benchmarks/imaging_scratch_init/scratch_init.tsv"
    conda:
        "../envs/model.yaml"
    params:
        seed=config["seed"],
    script:
        "../workflow/scripts/imaging_scratch_init.py"


rule imaging_finetune:
    """A synthesis task's DiT method (paper Fig. 4, Methods "Cross-modality synthesis"):
    the fine-tuning job (genbrain.finetune.run_finetune) with each source modality as an input
    channel and the target as the modality, on the task's training participants, from the
    pretrained model (genbrain) or from random weights of its architecture (scratch): the same
    data, steps and seed. Resumable: trains in results/imaging/<task>/models/<method>/work/.
    """
    input:
        index=get_imaging_store,
        images=rules.imaging_pairs.output.images,
        init=get_imaging_init,
    output:
        checkpoint="results/imaging/{task}/models/{method}/checkpoint.pt",
        training="results/imaging/{task}/models/{method}/training.tsv",
    log:
        "logs/imaging_finetune/{task}/{method}.log",
    benchmark:
        "results/benchmarks/imaging_finetune/{task}/{method}.tsv"
    wildcard_constraints:
        task=IMAGING_PATTERN,
        method=IMAGING_DIT,
    retries: 2
    conda:
        "../envs/model.yaml"
    threads: 8
    resources:
        gpu=1,
        mem_mb=32000,
        runtime=720,
    params:
        job=get_imaging_finetune_job,
        work_dir=get_imaging_work_dir,
        seed=config["seed"],
    script:
        "../workflow/scripts/imaging_finetune.py"


rule imaging_sample:
    """A DiT method's predictions of a synthesis task's test targets: DDIM samples (the
    synthesize section's steps, guidance and weights; the config's seed) conditioned on each
    test participant's source image (and age and sex with the task's demographics), the
    task's k samples averaged, mapped to [0, 1] like the pairs."""
    input:
        checkpoint=rules.imaging_finetune.output.checkpoint,
        index=get_imaging_store,
        images=rules.imaging_pairs.output.images,
    output:
        predictions="results/imaging/{task}/predictions/{method}.npy",
    log:
        "logs/imaging_sample/{task}/{method}.log",
    benchmark:
        "results/benchmarks/imaging_sample/{task}/{method}.tsv"
    wildcard_constraints:
        task=IMAGING_PATTERN,
        method=IMAGING_DIT,
    conda:
        "../envs/model.yaml"
    threads: 8
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=240,
    params:
        job=get_imaging_job,
        sampling=get_sampling,
    script:
        "../workflow/scripts/imaging_sample.py"
