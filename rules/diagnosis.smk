rule diagnosis_volumes:
    """Regional volumes (WMH-SynthSeg's 32 structures and intracranial volume, mm^3) of one
    site's real images, from the cohort's store: intensity-driven tissue fractions of each
    standard-space T1w summed within the Desikan-Killiany aparc+aseg structures, in the
    column layout of ``mri_WMHsynthseg --csv_vols``."""
    input:
        index="results/stores/{cohort}/index.tsv",
    output:
        volumes="results/volumes/{cohort}/site-{site}.csv",
    log:
        "logs/diagnosis_volumes/{cohort}/site-{site}.log",
    benchmark:
        "results/benchmarks/diagnosis_volumes/{cohort}/site-{site}.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        site=get_dx_volume_site,
        modality=get_dx_modality,
        volumes=config["diagnosis"]["volumes"],
        seed=config["seed"],
    script:
        "../workflow/scripts/diagnosis_volumes.py"


rule diagnosis_pool_covariates:
    """Write a diagnosis training site's synthetic pool covariates: its training split's
    ages, sexes and diagnoses in seeded permutations, as many rows as the largest
    synthetic:real ratio needs."""
    input:
        unpack(get_dx_pool_inputs),
    output:
        covariates="results/synthetic/{synth}/covariates.tsv",
    log:
        "logs/diagnosis_pool_covariates/{synth}.log",
    benchmark:
        "results/benchmarks/diagnosis_pool_covariates/{synth}.tsv"
    wildcard_constraints:
        synth=DX_SYNTHETIC_PATTERN,
    conda:
        "../envs/analysis.yaml"
    params:
        job=get_dx_pool_job,
        seed=config["seed"],
    script:
        "../workflow/scripts/diagnosis_pool_covariates.py"


rule diagnosis_synthetic_volumes:
    """Regional volumes of a synthetic pool's images (after its privacy gate), by the same
    backend as the real images."""
    input:
        unpack(get_dx_synthetic_volume_inputs),
    output:
        volumes="results/volumes/synthetic/{synth}.csv",
    log:
        "logs/diagnosis_synthetic_volumes/{synth}.log",
    benchmark:
        "results/benchmarks/diagnosis_synthetic_volumes/{synth}.tsv"
    wildcard_constraints:
        synth=DX_SYNTHETIC_PATTERN,
    conda:
        "../envs/analysis.yaml"
    params:
        job=get_dx_pool_job,
        volumes=config["diagnosis"]["volumes"],
        seed=config["seed"],
    script:
        "../workflow/scripts/diagnosis_synthetic_volumes.py"


rule diagnosis_sweep:
    """One training site's LightGBM sweep (paper Fig. 6a-b): the shared 3:1:1 split, the 20
    configurations at every synthetic:real ratio, selection on validation accuracy,
    within-site (test split) and cross-site (every other site) metrics with bootstrap CIs,
    ComBat rows, and the selected models' SHAP importances."""
    input:
        unpack(get_dx_sweep_inputs),
    output:
        sweep="results/diagnosis/{analysis}/site-{site}/sweep.tsv",
        selection="results/diagnosis/{analysis}/site-{site}/selection.tsv",
        shap="results/diagnosis/{analysis}/site-{site}/shap.tsv",
    log:
        "logs/diagnosis_sweep/{analysis}/site-{site}.log",
    benchmark:
        "results/benchmarks/diagnosis_sweep/{analysis}/site-{site}.tsv"
    conda:
        "../envs/analysis.yaml"
    # one LightGBM thread per job, training sites in parallel: on a busy 2-core machine two
    # threads per fit were 5-25x slower than one (docs/benchmarks.md, "Cross-site diagnosis
    # sweep"); a cluster profile may raise it (set-threads)
    threads: 1
    params:
        job=get_dx_job,
        diagnosis=config["diagnosis"],
        seed=config["seed"],
    script:
        "../workflow/scripts/diagnosis_sweep.py"


rule diagnosis_summary:
    """A diagnosis analysis's summary and figures: mean cross-site metrics per method with
    the pairs improved, the train x test heatmap, the ratio curves, augmentation against
    harmonisation, and the regions driving the models (vs the simulated ones)."""
    input:
        unpack(get_dx_summary_inputs),
    output:
        summary=report(
            "results/diagnosis/{analysis}/summary.tsv",
            caption="../workflow/report/diagnosis_summary.rst",
            category="Diagnosis",
            subcategory="{analysis}",
            labels={"figure": "summary table"},
        ),
        regions="results/diagnosis/{analysis}/regions.tsv",
        heatmap=report(
            "results/figures/diagnosis/{analysis}/heatmap.png",
            caption="../workflow/report/diagnosis_heatmap.rst",
            category="Diagnosis",
            subcategory="{analysis}",
            labels={"figure": "heatmap"},
        ),
        ratios=report(
            "results/figures/diagnosis/{analysis}/ratios.png",
            caption="../workflow/report/diagnosis_ratios.rst",
            category="Diagnosis",
            subcategory="{analysis}",
            labels={"figure": "ratio curves"},
        ),
        harmonization=report(
            "results/figures/diagnosis/{analysis}/harmonization.png",
            caption="../workflow/report/diagnosis_harmonization.rst",
            category="Diagnosis",
            subcategory="{analysis}",
            labels={"figure": "augmentation vs ComBat"},
        ),
        shap=report(
            "results/figures/diagnosis/{analysis}/shap.png",
            caption="../workflow/report/diagnosis_shap.rst",
            category="Diagnosis",
            subcategory="{analysis}",
            labels={"figure": "SHAP regions"},
        ),
    log:
        "logs/diagnosis_summary/{analysis}.log",
    benchmark:
        "results/benchmarks/diagnosis_summary/{analysis}.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        simulated=get_dx_simulated,
    script:
        "../workflow/scripts/diagnosis_summary.py"
