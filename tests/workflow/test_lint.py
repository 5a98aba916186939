import subprocess

from tests.workflow.helpers import BIN, ROOT, rule_blocks, snakemake


def test_snakemake_lint_is_clean():
    res = snakemake("--lint", "--configfile", str(ROOT / "config" / "demo.yaml"))
    assert res.returncode == 0, res.stdout + res.stderr


def test_snakefmt_check_is_clean():
    res = subprocess.run([str(BIN / "snakefmt"), "--check", "Snakefile", "rules/"], cwd=ROOT,
                         check=False, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_ruff_is_clean():
    # ruff (pinned in requirements.lock and the dev extra) with pyproject.toml's settings, over
    # every Python tree of the repository; `make test` runs it through this test.
    res = subprocess.run([str(BIN / "ruff"), "check", "--output-format", "concise", "genbrain",
                          "tests", "benchmarks", "workflow"], cwd=ROOT, check=False,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr


def test_every_rule_has_log_benchmark_conda_and_a_docstring():
    """...and its benchmark file lies under results/benchmarks/<rule>/, the layout from which
    the provenance page reads every rule's runtime and memory."""
    import re

    rules = rule_blocks()
    assert len(rules) > 10
    for name, (smk, block) in rules.items():
        assert '"""' in block.split("\n")[1], f"{smk}:{name} has no docstring"
        assert "\n    log:" in block, f"{smk}:{name} has no log"
        assert "\n    conda:" in block, f"{smk}:{name} has no conda env"
        bench = re.search(r'\n    benchmark:\n\s+"([^"]+)"', block)
        assert bench, f"{smk}:{name} has no benchmark"
        assert bench.group(1).startswith(f"results/benchmarks/{name}/"), bench.group(1)
