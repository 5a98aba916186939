"""Provenance page of the run: git state, config and its sha256, package versions, seeds,
input-file checksums and per-rule runtime/memory from the benchmark files."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _smk import run


def main(smk):
    import logging

    from genbrain.provenance import write_provenance

    record = write_provenance(
        smk.output.html, smk.output.json, repo=smk.params.repo, config=smk.config,
        files={"config": [str(p) for p in smk.params.config_files],
               "participants": list(smk.input.participants),
               "covariates": list(smk.input.covariates)},
        bench_root=smk.params.benchmarks, exclude_rules=[smk.rule],
    )
    logging.getLogger("genbrain").info("commit %s (%s), config sha256 %s, %d rules benchmarked",
                                       record["git"]["commit"], record["git"]["note"],
                                       record["config_sha256"][:12], len(record["runtime"]))


run(main, snakemake)  # noqa: F821
