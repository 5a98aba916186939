rule bwas_covariates:
    """Write a BWAS site's synthetic covariate table: the reference cohort's (all other
    sites') ages, sexes and diagnoses, one synthetic image each, capped by a seeded draw
    stratified by diagnosis when ``max_synthetic`` is smaller."""
    input:
        participants=get_bwas_participants,
    output:
        covariates="results/synthetic/{synth}/covariates.tsv",
    log:
        "logs/bwas_covariates/{synth}.log",
    benchmark:
        "results/benchmarks/bwas_covariates/{synth}.tsv"
    wildcard_constraints:
        synth=BWAS_SYNTHETIC_PATTERN,
    conda:
        "../envs/analysis.yaml"
    params:
        job=get_bwas_synth_job,
        seed=config["seed"],
    script:
        "../workflow/scripts/bwas_covariates.py"


rule bwas_screen:
    """The pre-fine-tuning screen of every site of a BWAS analysis's cohort (real data only):
    the split-half reliability of each site's Cohen's d map and its agreement with the map
    of the other sites pooled, with a verdict on whether a fine-tune of that site can be
    expected to help; one table per smoothing kernel ({smooth}: "" or _fwhm-<mm>)."""
    input:
        index=get_screen_store,
    output:
        table=report(
            "results/bwas/{analysis}/screen{smooth}.tsv",
            caption="../workflow/report/bwas_screen.rst",
            category="BWAS",
            subcategory="{analysis}",
            labels={"site": "every site{smooth}", "figure": "screen"},
        ),
    log:
        "logs/bwas_screen/{analysis}{smooth}.log",
    benchmark:
        "results/benchmarks/bwas_screen/{analysis}{smooth}.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        jobs=get_screen_jobs,
        seed=config["seed"],
    script:
        "../workflow/scripts/bwas_screen.py"


rule bwas_site:
    """A BWAS site's comparison (paper Fig. 5): Cohen's d maps of the site's real data, its
    synthetic cohort and the reference cohort (NIfTI); each map's overlap scores with the
    reference with bootstrap CIs and chance levels; recovery of the simulated truth; the
    synthetic cohort's effective sample size. Per smoothing kernel ({smooth}: "" unsmoothed,
    _fwhm-<mm>), every kernel on the one synthetic cohort of the site."""
    input:
        unpack(get_bwas_inputs),
    output:
        scores=report(
            "results/bwas/{analysis}/site-{site}{smooth}/scores.tsv",
            caption="../workflow/report/bwas_site.rst",
            category="BWAS",
            subcategory="{analysis}",
            labels={"site": "{site}{smooth}", "figure": "score table"},
        ),
        maps="results/bwas/{analysis}/site-{site}{smooth}/maps.tsv",
        agreement="results/bwas/{analysis}/site-{site}{smooth}/agreement.tsv",
        effective="results/bwas/{analysis}/site-{site}{smooth}/effective_n.tsv",
        d_maps=directory("results/bwas/{analysis}/site-{site}{smooth}/d_maps"),
    log:
        "logs/bwas_site/{analysis}/site-{site}{smooth}.log",
    benchmark:
        "results/benchmarks/bwas_site/{analysis}/site-{site}{smooth}.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        job=get_bwas_job,
        n_boot=config["bwas"]["n_boot"],
        n_null=config["bwas"]["n_null"],
        agreement=config["bwas"]["agreement"],
        seed=config["seed"],
    script:
        "../workflow/scripts/bwas_site.py"


rule bwas_figures:
    """A BWAS site's figures: the reference, real and synthetic d maps on the same slices and
    colour scale; the relative gain per metric with CIs and chance levels; the effective
    sample size curve (per smoothing kernel)."""
    input:
        scores="results/bwas/{analysis}/site-{site}{smooth}/scores.tsv",
        maps="results/bwas/{analysis}/site-{site}{smooth}/maps.tsv",
        agreement="results/bwas/{analysis}/site-{site}{smooth}/agreement.tsv",
        effective="results/bwas/{analysis}/site-{site}{smooth}/effective_n.tsv",
        d_maps="results/bwas/{analysis}/site-{site}{smooth}/d_maps",
    output:
        maps=report(
            "results/figures/bwas/{analysis}/site-{site}{smooth}_maps.png",
            caption="../workflow/report/bwas_figures.rst",
            category="BWAS",
            subcategory="{analysis}",
            labels={"site": "{site}{smooth}", "figure": "d maps"},
        ),
        gain=report(
            "results/figures/bwas/{analysis}/site-{site}{smooth}_gain.png",
            caption="../workflow/report/bwas_figures.rst",
            category="BWAS",
            subcategory="{analysis}",
            labels={"site": "{site}{smooth}", "figure": "gain and effective n"},
        ),
    log:
        "logs/bwas_figures/{analysis}/site-{site}{smooth}.log",
    benchmark:
        "results/benchmarks/bwas_figures/{analysis}/site-{site}{smooth}.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        job=get_bwas_job,
    script:
        "../workflow/scripts/bwas_figures.py"
