"""Provenance record: git state of a real repository, config hash, seeds, package versions,
file checksums, per-rule benchmark aggregation, and the written HTML/JSON."""

import hashlib
import json
import subprocess

import numpy as np
import pytest

from genbrain.errors import GenbrainInputError
from genbrain.provenance import (
    canonical_json,
    file_checksums,
    find_seeds,
    git_state,
    package_versions,
    runtime_summary,
    write_provenance,
)

BENCH_HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _git(repo, *args):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org",
                           "-c", "commit.gpgsign=false", "-C", str(repo), *args],
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    _git(root, "init", "-q")
    (root / "Snakefile").write_text("rule all:\n")
    (root / ".gitignore").write_text("results/\n")
    _git(root, "add", "Snakefile", ".gitignore")
    _git(root, "commit", "-q", "-m", "first")
    return root


def _bench(path, *rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(BENCH_HEADER + "".join(
        f"{s}\t0:00:00\t{rss}\t1\t1\t1\t0\t0\t50\t{cpu}\n" for s, rss, cpu in rows))


def test_git_state_names_the_commit_and_sees_changes_but_not_ignored_files(repo):
    state = git_state(repo)
    assert state["commit"] == _git(repo, "rev-parse", "HEAD")
    assert len(state["commit"]) == 40
    assert state["dirty"] is False and state["note"] == "clean"
    (repo / "results").mkdir()
    (repo / "results" / "out.tsv").write_text("x\n")  # ignored: a run's outputs
    assert git_state(repo)["dirty"] is False
    (repo / "Snakefile").write_text("rule all:\n    input: 'x'\n")
    (repo / "new.smk").write_text("")
    state = git_state(repo)
    assert state["dirty"] is True
    assert sorted(state["changes"]) == [" M Snakefile", "?? new.smk"]


def test_git_state_outside_a_repository_or_without_git(tmp_path, monkeypatch):
    state = git_state(tmp_path)
    assert state["commit"] is None and state["dirty"] is None
    assert "not a git work tree" in state["note"]
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert git_state(tmp_path)["note"] == "git is not installed"


def test_config_hash_ignores_key_order_but_not_values():
    a = {"seed": 1, "qc": {"min_corr": 0.5, "modality": "T1w"}}
    b = {"qc": {"modality": "T1w", "min_corr": 0.5}, "seed": 1}
    c = {"seed": 1, "qc": {"min_corr": 0.6, "modality": "T1w"}}
    assert canonical_json(a) == canonical_json(b)
    assert canonical_json(a) != canonical_json(c)


def test_seeds_are_found_at_any_depth():
    cfg = {"seed": 3, "simulate": {"noise_seed": 9, "n": 4},
           "classify": {"grid": {"seed": 11}, "seeds": [1, 2]}}
    assert find_seeds(cfg) == {"seed": 3, "simulate.noise_seed": 9, "classify.grid.seed": 11}


def test_package_versions_come_from_the_installed_distributions():
    versions = package_versions(["numpy", "no-such-distribution-genbrain"])
    assert versions["numpy"] == np.__version__
    assert versions["no-such-distribution-genbrain"] is None
    assert versions["python"].startswith("3.")


def test_checksums_match_sha256_of_the_bytes_and_missing_files_are_named(tmp_path):
    big = tmp_path / "participants.tsv"
    payload = np.random.default_rng(0).bytes(2_500_000)  # several 1 MiB read blocks
    big.write_bytes(payload)
    cfg = tmp_path / "config.yaml"
    cfg.write_text("seed: 1\n")
    df = file_checksums({"config": [cfg], "participants": [big, big]})
    assert df["role"].tolist() == ["config", "participants"]  # duplicates listed once
    assert df.loc[1, "sha256"] == hashlib.sha256(payload).hexdigest()
    assert df.loc[1, "bytes"] == 2_500_000
    assert df.loc[0, "sha256"] == hashlib.sha256(b"seed: 1\n").hexdigest()
    with pytest.raises(GenbrainInputError, match=r"gone\.tsv: participants file not found"):
        file_checksums({"participants": [tmp_path / "gone.tsv"]})


def test_runtime_summary_aggregates_benchmark_files_per_rule(tmp_path):
    root = tmp_path / "benchmarks"
    _bench(root / "preprocess_chunk" / "c" / "site-a_chunk-000.tsv", (10.0, 300.0, 9.0))
    _bench(root / "preprocess_chunk" / "c" / "site-b_chunk-000.tsv", (30.0, 500.0, 25.0))
    _bench(root / "qc_mosaic" / "c" / "site-a.tsv", (1.0, "NA", 0.5), (3.0, "NA", 1.5))  # repeat
    _bench(root / "provenance" / "provenance.tsv", (99.0, 1.0, 1.0))
    df = runtime_summary(root, exclude=["provenance"])
    assert df["rule"].tolist() == ["preprocess_chunk", "qc_mosaic"]  # slowest first
    pre = df.iloc[0]
    assert (pre["jobs"], pre["total_s"], pre["mean_s"], pre["max_s"]) == (2, 40.0, 20.0, 30.0)
    assert (pre["max_rss_mb"], pre["cpu_s"]) == (500.0, 34.0)
    mosaic = df.iloc[1]
    assert (mosaic["jobs"], mosaic["total_s"], mosaic["cpu_s"]) == (1, 2.0, 1.0)
    assert np.isnan(mosaic["max_rss_mb"])
    assert runtime_summary(tmp_path / "none").empty


def test_a_broken_benchmark_file_is_a_one_line_error(tmp_path):
    bad = tmp_path / "b" / "rule_x" / "job.tsv"
    bad.parent.mkdir(parents=True)
    bad.write_text("wall\n1\n")
    with pytest.raises(GenbrainInputError, match=r"job\.tsv: not a Snakemake benchmark table"):
        runtime_summary(tmp_path / "b")


def test_write_provenance_writes_a_self_contained_page_and_strict_json(repo, tmp_path):
    participants = tmp_path / "participants.tsv"
    participants.write_text("participant_id\tage\nsub-01\t40\n")
    cfgfile = tmp_path / "config.yaml"
    cfgfile.write_text("seed: 7\n")
    bench = repo / "results" / "benchmarks"
    _bench(bench / "simulate_cohort" / "x" / "site-a_chunk-000.tsv", (2.5, 120.0, 2.0))
    config = {"seed": 7, "qc": {"modality": "<T1w>"}, "preprocess": {"chunk_size": 2}}
    out = tmp_path / "out"
    record = write_provenance(out / "provenance.html", out / "provenance.json", repo=repo,
                              config=config, files={"config": [cfgfile],
                                                    "participants": [participants]},
                              bench_root=bench)
    assert sorted(p.name for p in out.iterdir()) == ["provenance.html", "provenance.json"]

    def no_nan(const):
        raise AssertionError(f"JSON holds {const}")

    saved = json.loads((out / "provenance.json").read_text(), parse_constant=no_nan)
    assert saved["config_sha256"] == hashlib.sha256(canonical_json(config).encode()).hexdigest()
    assert saved["config"] == config and saved["seeds"] == {"seed": 7}
    assert saved["git"]["commit"] == _git(repo, "rev-parse", "HEAD")
    assert saved["git"]["dirty"] is False  # results/ is ignored
    assert saved["runtime"] == [{"rule": "simulate_cohort", "jobs": 1, "total_s": 2.5,
                                 "mean_s": 2.5, "max_s": 2.5, "max_rss_mb": 120.0,
                                 "cpu_s": 2.0}]
    assert [f["sha256"] for f in saved["files"]] == [
        hashlib.sha256(cfgfile.read_bytes()).hexdigest(),
        hashlib.sha256(participants.read_bytes()).hexdigest()]
    assert saved["packages"]["numpy"] == np.__version__
    assert record["config_sha256"] == saved["config_sha256"]

    page = (out / "provenance.html").read_text()
    for text in (saved["git"]["commit"], saved["config_sha256"], "simulate_cohort",
                 saved["files"][1]["sha256"], "numpy", np.__version__):
        assert text in page
    assert "&lt;T1w&gt;" in page and "<T1w>" not in page  # config values are escaped
    assert "<script" not in page and "http" not in page  # renders offline, in an iframe
