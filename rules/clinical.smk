rule clinical_pool_covariates:
    """Write a clinical analysis's synthetic pool covariates: its training split's ages, sexes
    and scores in seeded permutations, as many rows as the largest synthetic:real ratio needs
    (the pool is then drawn, audited and gated as every synthetic cohort)."""
    input:
        unpack(get_clinical_pool_inputs),
    output:
        covariates="results/synthetic/{synth}/covariates.tsv",
    log:
        "logs/clinical_pool_covariates/{synth}.log",
    benchmark:
        "results/benchmarks/clinical_pool_covariates/{synth}.tsv"
    wildcard_constraints:
        synth=CLINICAL_SYNTHETIC_PATTERN,
    conda:
        "../envs/analysis.yaml"
    params:
        job=get_clinical_pool_job,
        seed=config["seed"],
    script:
        "../workflow/scripts/clinical_pool_covariates.py"


rule clinical_sweep:
    """One (ratio, seed) fit of the score regressor (paper Fig. 6c-f): a 3D ResNet-10 on the
    real training split plus round(ratio x n_train) images of the gated synthetic pool (none
    at ratio 0), its epoch chosen by validation MAE, the test split predicted once. Resumable:
    its checkpoint folder is removed once the row is written."""
    input:
        unpack(get_clinical_sweep_inputs),
    output:
        row="results/clinical/{analysis}/sweep/ratio-{ratio}_seed-{replicate}.tsv",
    log:
        "logs/clinical_sweep/{analysis}/ratio-{ratio}_seed-{replicate}.log",
    benchmark:
        "results/benchmarks/clinical_sweep/{analysis}/ratio-{ratio}_seed-{replicate}.tsv"
    wildcard_constraints:
        analysis=CLINICAL_PATTERN,
        ratio=r"\d+(\.\d+)?",
        replicate=r"\d+",
    conda:
        "../envs/model.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=120,
    params:
        job=get_clinical_job,
        work_dir=get_clinical_work_dir,
    script:
        "../workflow/scripts/clinical_sweep.py"


rule clinical_summary:
    """A clinical analysis's summary: every fit in one table, the ratio of lowest mean
    validation MAE against ratio 0 on the test split (MAE and r, t-tests across seeds), and the
    curves of Fig. 6d/f."""
    input:
        rows=get_clinical_rows,
    output:
        sweep="results/clinical/{analysis}/sweep.tsv",
        summary="results/clinical/{analysis}/summary.tsv",
        comparison=report(
            "results/clinical/{analysis}/comparison.tsv",
            caption="../workflow/report/clinical_comparison.rst",
            category="Clinical",
            subcategory="{analysis}",
            labels={"analysis": "{analysis}", "figure": "chosen ratio vs real only"},
        ),
        figure=report(
            "results/figures/clinical/{analysis}/sweep.png",
            caption="../workflow/report/clinical_sweep.rst",
            category="Clinical",
            subcategory="{analysis}",
            labels={"analysis": "{analysis}", "figure": "MAE and r vs ratio"},
        ),
    log:
        "logs/clinical_summary/{analysis}.log",
    benchmark:
        "results/benchmarks/clinical_summary/{analysis}.tsv"
    wildcard_constraints:
        analysis=CLINICAL_PATTERN,
    conda:
        "../envs/model.yaml"
    params:
        job=get_clinical_job,
    script:
        "../workflow/scripts/clinical_summary.py"


rule clinical_pairs:
    """Real test-split images beside the gated pool's images matched for age, sex and score
    (paper Fig. 6c/e)."""
    input:
        unpack(get_clinical_pairs_inputs),
    output:
        png=report(
            "results/figures/clinical/{analysis}/pairs.png",
            caption="../workflow/report/clinical_pairs.rst",
            category="Clinical",
            subcategory="{analysis}",
            labels={
                "analysis": "{analysis}",
                "figure": "matched real/synthetic pairs",
            },
        ),
    log:
        "logs/clinical_pairs/{analysis}.log",
    benchmark:
        "results/benchmarks/clinical_pairs/{analysis}.tsv"
    wildcard_constraints:
        analysis=CLINICAL_PATTERN,
    conda:
        "../envs/model.yaml"
    params:
        job=get_clinical_job,
    script:
        "../workflow/scripts/clinical_pairs.py"
