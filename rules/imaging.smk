rule imaging_pairs:
    """An image task's pairs (paper Methods, "Image enhancement"): its test images (the
    pretraining hold-out) and training images, mapped to [0, 1] over the brain, and their
    corrupted copies (k-space rigid motion, Gaussian and Rician noise), each drawn from its
    own stream seeded by the config's seed and the image's participant id; the draws are
    tabled per image."""
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
    """One method's predictions of an image task's clean test images from their corrupted
    copies: the mean training image, non-local means, or a MONAI 3D U-Net trained on the
    task's training pairs."""
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
    """An image task's scores (paper Fig. 3): PSNR, RMSE, 3D-SSIM and MS-SSIM of every
    method's predictions and of the corrupted input against the clean targets, per image;
    the summary per method and metric with bootstrap 95% CIs, and the paired difference from
    the input with its CI and the paired t-test."""
    input:
        images=rules.imaging_pairs.output.images,
        test_source=rules.imaging_pairs.output.test_source,
        test_target=rules.imaging_pairs.output.test_target,
        predictions=get_imaging_predictions,
    output:
        scores="results/imaging/{task}/scores.tsv",
        summary=report(
            "results/imaging/{task}/summary.tsv",
            caption="../workflow/report/imaging_summary.rst",
            category="Imaging",
            subcategory="{task}",
            labels={"figure": "summary table"},
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
    params:
        job=get_imaging_job,
    script:
        "../workflow/scripts/imaging_scores.py"


rule imaging_figure:
    """An image task's figures (paper Fig. 3): the corrupted input, each method's output and
    the clean target on the same slice of a few test images, and every metric's per-image
    values per method with the mean and its 95% CI."""
    input:
        images=rules.imaging_pairs.output.images,
        test_source=rules.imaging_pairs.output.test_source,
        test_target=rules.imaging_pairs.output.test_target,
        predictions=get_imaging_predictions,
        scores=rules.imaging_scores.output.scores,
        summary=rules.imaging_scores.output.summary,
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
