# A few seconds of work that reads the workflow's git checkout: run it on the submit host,
# not as a cluster job.
localrules:
    provenance,


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
