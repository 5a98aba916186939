rule simulate_truth:
    """Participants table and ground-truth effect maps (per modality: age, sex, diagnosis,
    score) of a simulated cohort."""
    output:
        participants="results/simulated/{cohort}/participants.tsv",
        truth=directory("results/simulated/{cohort}/ground_truth"),
    log:
        "logs/simulate_truth/{cohort}.log",
    benchmark:
        "results/benchmarks/simulate_truth/{cohort}.tsv"
    conda:
        "../envs/imaging.yaml"
    params:
        spec=get_sim_spec,
        seed=config["seed"],
        modalities=get_modalities,
    script:
        "../workflow/scripts/simulate_truth.py"


rule simulate_truth_figure:
    """The ground-truth effect maps planted in a simulated cohort (per modality: age, sex,
    and diagnosis or score), the maps the cohort's analyses should recover."""
    input:
        truth="results/simulated/{cohort}/ground_truth",
    output:
        png=report(
            "results/figures/simulate/{cohort}_truth.png",
            caption="../workflow/report/simulate_truth.rst",
            category="Simulation",
            subcategory="{cohort}",
            labels={"cohort": "{cohort}", "figure": "ground truth"},
        ),
    log:
        "logs/simulate_truth_figure/{cohort}.log",
    benchmark:
        "results/benchmarks/simulate_truth_figure/{cohort}.tsv"
    conda:
        "../envs/imaging.yaml"
    params:
        modalities=get_modalities,
    script:
        "../workflow/scripts/simulate_truth_figure.py"


rule simulate_cohort:
    """One (site, chunk) of a simulated cohort written as NIfTI images (standard or native
    space); the manifest is written last and lists every file and its true head pose."""
    input:
        participants="results/simulated/{cohort}/participants.tsv",
    output:
        manifest="results/simulated/{cohort}/manifests/site-{site}_chunk-{chunk}.tsv",
    log:
        "logs/simulate_cohort/{cohort}/site-{site}_chunk-{chunk}.log",
    benchmark:
        "results/benchmarks/simulate_cohort/{cohort}/site-{site}_chunk-{chunk}.tsv"
    conda:
        "../envs/imaging.yaml"
    params:
        spec=get_sim_spec,
        seed=config["seed"],
        modalities=get_modalities,
        pattern=get_sim_pattern,
        chunk_size=config["preprocess"]["chunk_size"],
        site=get_site,
    script:
        "../workflow/scripts/simulate_cohort.py"
