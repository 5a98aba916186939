rule preprocess_chunk:
    """Bring one (site, chunk) of subjects to MNI152NLin6Asym 2 mm (registration for native
    sites, grid check or resampling otherwise), mask, clamp and normalise per modality, and
    write the chunk's image-store shards, Jacobian maps and registration QC."""
    input:
        participants=get_participants,
        images=get_chunk_images,
    output:
        chunk=directory("results/stores/{cohort}/site-{site}/chunk-{chunk}"),
    log:
        "logs/preprocess_chunk/{cohort}/site-{site}_chunk-{chunk}.log",
    benchmark:
        "results/benchmarks/preprocess_chunk/{cohort}/site-{site}_chunk-{chunk}.tsv"
    conda:
        "../envs/imaging.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        images=get_chunk_subjects,
        native=get_chunk_native,
        brain_extracted=get_chunk_brain_extracted,
        backend=config["preprocess"]["backend"],
        reference=config["preprocess"]["reference_modality"],
        options=get_backend_options,
        seed=config["seed"],
        dtype=config["preprocess"]["store_dtype"],
        qc_modality=get_qc_modality,
        qc_threshold=config["qc"]["min_corr"],
    script:
        "../workflow/scripts/preprocess_chunk.py"


rule pack_store:
    """Merge a cohort's chunk indices into one image-store index (O(1) item access)."""
    input:
        chunks=get_cohort_chunks,
    output:
        index="results/stores/{cohort}/index.tsv",
    log:
        "logs/pack_store/{cohort}.log",
    benchmark:
        "results/benchmarks/pack_store/{cohort}.tsv"
    conda:
        "../envs/imaging.yaml"
    script:
        "../workflow/scripts/pack_store.py"


rule qc_registration:
    """Per-subject registration quality: Pearson r with the template inside the brain mask,
    flagged below the configured threshold."""
    input:
        chunks=get_cohort_chunks,
    output:
        table=report(
            "results/qc/{cohort}/registration.tsv",
            caption="../workflow/report/qc_registration.rst",
            category="Preprocessing",
            subcategory="{cohort}",
            labels={"cohort": "{cohort}", "figure": "registration QC table"},
        ),
    log:
        "logs/qc_registration/{cohort}.log",
    benchmark:
        "results/benchmarks/qc_registration/{cohort}.tsv"
    conda:
        "../envs/imaging.yaml"
    params:
        threshold=config["qc"]["min_corr"],
    script:
        "../workflow/scripts/qc_registration.py"


rule cohort_demographics:
    """A cohort's participants by site and diagnosis (n, % female, age, QC pass rate, clinical
    scores), from its image store: the cohort's Table 1."""
    input:
        index="results/stores/{cohort}/index.tsv",
    output:
        table=report(
            "results/qc/{cohort}/demographics.tsv",
            caption="../workflow/report/qc_demographics.rst",
            category="Preprocessing",
            subcategory="{cohort}",
            labels={"cohort": "{cohort}", "figure": "demographics"},
        ),
    log:
        "logs/cohort_demographics/{cohort}.log",
    benchmark:
        "results/benchmarks/cohort_demographics/{cohort}.tsv"
    conda:
        "../envs/imaging.yaml"
    params:
        scores=get_cohort_scores,
    script:
        "../workflow/scripts/cohort_demographics.py"


rule qc_mosaic:
    """Mosaic of a few preprocessed subjects of one site over the template outline."""
    input:
        index="results/stores/{cohort}/index.tsv",
    output:
        png=report(
            "results/qc/{cohort}/site-{site}_mosaic.png",
            caption="../workflow/report/qc_mosaic.rst",
            category="Preprocessing",
            subcategory="{cohort}",
            labels=get_mosaic_labels,
        ),
    log:
        "logs/qc_mosaic/{cohort}/site-{site}.log",
    benchmark:
        "results/benchmarks/qc_mosaic/{cohort}/site-{site}.tsv"
    conda:
        "../envs/imaging.yaml"
    params:
        modality=get_qc_modality,
        n_subjects=config["qc"]["mosaic_subjects"],
        site=get_site,
    script:
        "../workflow/scripts/qc_mosaic.py"
