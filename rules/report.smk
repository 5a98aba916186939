# A few seconds of work (the provenance reads the workflow's git checkout): run them on the
# submit host, not as cluster jobs.
localrules:
    provenance,
    fidelity_record,


rule provenance:
    """Provenance of the run (git commit and dirty state, the validated config and its sha256,
    package versions, seeds, checksums of the config files and participants tables, per-rule
    runtime and memory from the benchmark files); it needs every other output, so it runs
    last."""
    input:
        unpack(get_provenance_inputs),
    output:
        html=report(
            "results/provenance/provenance.html",
            caption="../workflow/report/provenance.rst",
            category="Provenance",
            labels={"page": "provenance"},
        ),
        json="results/provenance/provenance.json",
    log:
        "logs/provenance.log",
    benchmark:
        "results/benchmarks/provenance/provenance.tsv"
    conda:
        "../envs/imaging.yaml"
    params:
        repo=workflow.basedir,
        config_files=workflow.configfiles,
        benchmarks="results/benchmarks",
    script:
        "../workflow/scripts/provenance.py"


rule fidelity_record:
    """The fidelity record: one row per claim of the paper that the run checks (the paper's
    number, our goal, the measured value with its CI, the verdict), from the evaluation's
    tables; `make fidelity` writes the same table to docs/fidelity.md."""
    input:
        unpack(get_fidelity_inputs),
    output:
        html=report(
            "results/fidelity/fidelity.html",
            caption="../workflow/report/fidelity_record.rst",
            category="Fidelity record",
            labels={"page": "fidelity record"},
        ),
        table="results/fidelity/fidelity.tsv",
    log:
        "logs/fidelity_record.log",
    benchmark:
        "results/benchmarks/fidelity_record/fidelity_record.tsv"
    conda:
        "../envs/model.yaml"
    script:
        "../workflow/scripts/fidelity_record.py"
