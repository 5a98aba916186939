"""The workflow on a Slurm cluster: the profiles agree with the rules (no cluster needed), and a
small slice of the DAG runs through sbatch on a live cluster (.ci/start-slurm.sh starts one;
the test skips, saying why, when none answers)."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
import yaml

from genbrain.io import read_tsv
from genbrain.space import standard_space
from genbrain.store import ImageStore
from genbrain.training.checkpoints import loss_history
from tests.workflow.helpers import BIN, ROOT, fake_checkpoint, rule_blocks

SLURM_PROFILE = ROOT / "profiles" / "slurm" / "config.yaml"
TEST_PROFILE = ROOT / "tests" / "workflow" / "slurm-profile"
NODE_CPUS = 2  # the CI machine; the test profile must fit a node this small

# The Slurm scenario (23 jobs through sbatch): .test/slurm/config.yaml says what it runs and why
# it is a slice of the smoke scenario rather than the whole of it.
SCENARIO = ROOT / ".test" / "slurm" / "config.yaml"
SLICE_JOBS = {"simulate_truth": 1, "simulate_truth_figure": 1, "simulate_cohort": 2, "preprocess_chunk": 2, "pack_store": 1,
              "qc_registration": 1, "cohort_demographics": 1, "qc_mosaic": 1,
              "split_pretrain": 1, "pretrain_dit": 1, "pretrain_loss_curve": 1,
              "pretrain_samples": 1, "pretrain_checks": 1, "similarity_covariates": 1, "synthesize_shard": 2,
              "pack_synthetic": 1, "evaluate_similarity": 1, "audit_memorisation": 1,
              "privacy_gate": 1, "export_synthetic": 1}


def _rules() -> dict[str, str]:
    """Rule name -> its text, for every rule of rules/*.smk."""
    return {name: block for name, (_, block) in rule_blocks().items()}


def _gpu_rules() -> set[str]:
    return {name for name, body in _rules().items() if re.search(r"^\s+gpu=", body, re.MULTILINE)}


def _profile(path) -> dict:
    return yaml.safe_load(path.read_text())


def _slurm_time(minutes: int) -> str:
    """A time limit as squeue prints it: M:SS below an hour, else H:MM:SS (under a day)."""
    return f"{minutes}:00" if minutes < 60 else f"{minutes // 60}:{minutes % 60:02d}:00"


# --------------------------------------------------------------------------------------------
# The profiles (no cluster needed)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [SLURM_PROFILE, TEST_PROFILE / "config.yaml"],
                         ids=["slurm", "test"])
def test_profiles_name_only_real_rules(path):
    # Snakemake ignores set-resources / set-threads for unknown rule names: a typo would
    # silently leave a GPU rule with the wrong resources.
    prof = _profile(path)
    named = set(prof.get("set-resources", {})) | set(prof.get("set-threads", {}))
    assert named - set(_rules()) == set()


#: GPU rules whose rule, not the profile, sizes them (a set-resources entry would override the
#: rule's choice): pretrain_dit asks no GPU when it only takes pretrain.checkpoint
RULE_SIZED = {"pretrain_dit"}


def test_slurm_profile_gives_every_gpu_rule_gpus_cpus_memory_and_time():
    prof = _profile(SLURM_PROFILE)
    assert prof["executor"] == "slurm"
    assert prof["software-deployment-method"] == "conda"
    gpu_rules = _gpu_rules()
    assert {"pretrain_dit", "synthesize_shard"} <= gpu_rules
    assert RULE_SIZED <= gpu_rules and not RULE_SIZED & set(prof["set-resources"])
    for name in gpu_rules - RULE_SIZED:
        res = prof["set-resources"][name]
        assert res["gpu"] >= 1, name
        assert res["cpus_per_gpu"] >= 1, name
        assert res["mem_mb"] >= 4000, name
        assert res["runtime"] >= 30, name


def test_test_profile_runs_gpu_rules_without_gpus_on_a_small_node():
    # an overlay given after the card's profile: the executor and the rest come from there
    prof = _profile(TEST_PROFILE / "config.yaml")
    assert "executor" not in prof and _profile(SLURM_PROFILE)["executor"] == "slurm"
    assert "software-deployment-method" not in prof  # the command line swaps conda
    assert prof["slurm-status-command"] == "squeue"  # no accounting database: sacct fails
    for name in _gpu_rules():
        assert prof["set-resources"][name]["gpu"] == 0, name
        threads = re.search(r"^\s+threads: (.+)$", _rules()[name], re.MULTILINE)
        # the most a rule asks (pretrain_dit: pretrain_dit_size(8, 2) -> 8)
        if threads and max(map(int, re.findall(r"\d+", threads.group(1)))) > NODE_CPUS:
            assert prof["set-threads"][name] <= NODE_CPUS, name


DEFAULT_PROFILE = ROOT / "profiles" / "default" / "config.yaml"


def _assert_slurm_resources_planned(out: str) -> None:
    """Every job the dry-run prints of a rule in the Slurm profile's set-resources carries those
    resources (the profile was loaded and not overridden)."""
    prof = _profile(SLURM_PROFILE)
    seen = set()
    for name, body in re.findall(r"^rule (\w+):\n(.*?)(?:\n\n|\Z)", out, re.MULTILINE | re.DOTALL):
        res_line = re.search(r"resources: (.*)", body)
        if res_line is None or name not in prof["set-resources"]:
            continue
        printed = dict(kv.split("=", 1) for kv in res_line.group(1).split(", "))
        for key, value in prof["set-resources"][name].items():
            assert printed[key] == str(value), (name, key)
        seen.add(name)
    assert "preprocess_chunk" in seen and seen & _gpu_rules()


def test_profile_slurm_from_the_repository_root(tmp_path):
    # The product card's command, literally, from the repository root (as a dry run of the
    # demo's DAG in a scratch folder; env-modules instead of conda only because conda is absent
    # here). `slurm` there is the link to profiles/slurm; profiles/default is loaded after it.
    cmd = [str(BIN / "snakemake"), "--profile", "slurm", "-n", "--sdm", "env-modules",
           "--configfile", str(ROOT / "config" / "demo.yaml"), "-d", str(tmp_path)]
    res = subprocess.run(cmd, cwd=ROOT, check=False, capture_output=True, text=True, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert ("Using profiles slurm and workflow specific profile profiles/default for setting "
            "default command line arguments." in out)
    _assert_slurm_resources_planned(out)
    assert (ROOT / "slurm").resolve() == SLURM_PROFILE.parent.resolve()


def test_default_profile_never_overrides_the_slurm_profile():
    # Under `--profile slurm`, profiles/default is the workflow profile and wins key by key:
    # each of its keys must agree with the Slurm profile's, and it must not hold cores (every
    # Slurm job's threads would be capped at the submit host's cores: pretrain_dit was planned
    # with 2 threads instead of 8 on a 2-core host), latency-wait or resources.
    default, slurm = _profile(DEFAULT_PROFILE), _profile(SLURM_PROFILE)
    for key in ("cores", "latency-wait", "jobs", "local-cores", "max-threads", "executor",
                "default-resources", "set-resources", "set-threads", "resources"):
        assert key not in default, key
    for key, value in default.items():
        assert slurm.get(key, value) == value, key
    assert slurm["latency-wait"] >= 30


def test_pretrain_dit_asks_a_gpu_under_the_slurm_profile_only_when_it_trains(tmp_path):
    """With pretrain.checkpoint, pretrain_dit only checks and copies that file: under the card's
    `--profile slurm` it asks no GPU (a CPU job: sbatch gets no --gpus, and --cpus-per-task from
    its 2 threads); when it trains, the paper's one GPU with 8 CPUs, 64 GB and 48 h."""
    overlay = tmp_path / "given.yaml"
    overlay.write_text(yaml.safe_dump({"pretrain": {"checkpoint": str(fake_checkpoint(
        tmp_path / "given.pt"))}}))
    asked = {}
    for case, extra in (("trains", []), ("given", [str(overlay)])):
        cmd = [str(BIN / "snakemake"), "--profile", "slurm", "-n", "--sdm", "env-modules",
               "--configfile", str(ROOT / ".test" / "smoke" / "config.yaml"), *extra,
               "-d", str(tmp_path / case), "results/pretrain/checkpoint.pt"]
        res = subprocess.run(cmd, cwd=ROOT, check=False, capture_output=True, text=True,
                             timeout=300)
        out = res.stdout + res.stderr
        assert res.returncode == 0, out[-3000:]
        block = out.split("rule pretrain_dit:", 1)[1].split("\n\n", 1)[0]
        line = re.search(r"resources: (.*)", block).group(1)
        asked[case] = dict(kv.split("=", 1) for kv in line.split(", "))
    for case, want in (("trains", {"gpu": "1", "cpus_per_gpu": "8", "mem_mb": "64000",
                                   "runtime": "2880"}),
                       ("given", {"gpu": "0", "cpus_per_gpu": "0", "mem_mb": "32000",
                                  "runtime": "60"})):
        assert {k: asked[case][k] for k in want} == want, (case, asked[case])


def test_documented_command_loads_the_slurm_profile_alone(tmp_path):
    # `snakemake --workflow-profile slurm`, run from elsewhere with -s: the profile must be
    # found next to the Snakefile and replace profiles/default.
    # Dry run; env-modules instead of conda only because conda is absent here.
    cmd = [str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "--workflow-profile",
           "slurm", "--configfile", str(ROOT / "config" / "demo.yaml"), "-d", str(tmp_path),
           "-n", "--sdm", "env-modules"]
    res = subprocess.run(cmd, cwd=tmp_path, check=False, capture_output=True, text=True,
                         timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert f"Using workflow specific profile {ROOT / 'profiles' / 'slurm'} " in out
    assert "profiles/default" not in out
    _assert_slurm_resources_planned(out)


# --------------------------------------------------------------------------------------------
# A live cluster
# --------------------------------------------------------------------------------------------


def _cluster_problem() -> str | None:
    """Why no Slurm cluster can take the test's jobs, or None when one can."""
    hint = "start one with .ci/start-slurm.sh (root, apt)"
    if not all(shutil.which(tool) for tool in ("sinfo", "sbatch", "squeue", "scontrol")):
        return f"no Slurm client (sinfo, sbatch, squeue or scontrol not found); {hint}"
    try:
        # quick (sinfo waits ~10 s for a controller that is down)
        ping = subprocess.run(["scontrol", "ping"], check=False, capture_output=True, text=True,
                              timeout=15)
        if "is UP" not in ping.stdout:
            said = ((ping.stdout + ping.stderr).strip().splitlines() or ["no answer"])[0]
            return f"the Slurm controller is not up (scontrol ping: {said}); {hint}"
        info = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], check=False,
                              capture_output=True, text=True, timeout=15)
        conf = subprocess.run(["scontrol", "show", "config"], check=False, capture_output=True,
                              text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return f"the Slurm controller does not answer within 15 s; {hint}"
    if info.returncode != 0:
        err = (info.stderr.strip().splitlines() or ["?"])[-1]
        return f"sinfo failed ({err}); {hint}"
    states = dict(line.split() for line in info.stdout.splitlines() if line.strip())
    if not any(s.rstrip("*") in ("idle", "mixed") for s in states.values()):
        return f"no Slurm node accepts jobs (nodes: {states or 'none'}); {hint}"
    age = re.search(r"^MinJobAge\s*=\s*(\d+)", conf.stdout, re.MULTILINE)
    if age is None or int(age.group(1)) < 60:
        # the plugin would poll with sacct, which fails without accounting: Snakemake hangs
        return f"the cluster forgets finished jobs after MinJobAge={age and age.group(1)} s " \
               f"(< 60 s), too soon for squeue status checks; {hint}"
    return None


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory):
    problem = _cluster_problem()
    if problem:
        pytest.skip(problem)
    tmp = tmp_path_factory.mktemp("slurm")
    cfg = SCENARIO
    work = tmp / "work"
    # SIGINT, not SIGTERM: a Snakemake stuck polling Slurm ignores SIGTERM (notes/slurm-local).
    # The card's command from the repository root (README: `snakemake --profile slurm`), with
    # only what this cluster lacks swapped: the test profile after it (no GPUs, a 2-CPU node,
    # no accounting database) and env-modules for conda (absent here; the rules then run in
    # this venv).
    cmd = ["timeout", "-s", "INT", "-k", "30", "1200", str(BIN / "snakemake"),
           "--profile", "slurm", "--profile", str(TEST_PROFILE.relative_to(ROOT)),
           "--sdm", "env-modules", "--configfile", str(cfg), "-d", str(work)]
    res = subprocess.run(cmd, cwd=ROOT, check=False, capture_output=True, text=True, timeout=1260)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert ("Using profiles slurm and tests/workflow/slurm-profile and workflow specific "
            "profile profiles/default" in out), out[:2000]
    return work, out


@pytest.mark.slow
def test_every_job_of_the_slice_went_through_sbatch_and_completed(slurm_run):
    work, out = slurm_run
    run_id = re.search(r"SLURM run ID: (\S+)", out)
    assert run_id, "no 'SLURM run ID' in the log: the run did not use the Slurm executor"
    run_id = run_id.group(1)
    submitted = dict(re.findall(r"submitted with SLURM jobid (\d+) \(log: .*?/rule_(\w+)/", out))
    counts = {rule: list(submitted.values()).count(rule) for rule in set(submitted.values())}
    assert counts == SLICE_JOBS
    # Slurm's own record (kept MinJobAge s after the end): the jobs of this run by name.
    q = subprocess.run(["squeue", "--states=all", "-h", "--name", run_id,
                        "-o", "%i|%T|%k|%m|%l"], check=False, capture_output=True, text=True,
                       timeout=30)
    rows = {r.split("|")[0]: r.split("|")[1:] for r in q.stdout.split()}
    prof = _profile(TEST_PROFILE / "config.yaml")
    assert set(rows) == set(submitted)
    for jobid, (state, comment, mem, limit) in rows.items():
        rule = submitted[jobid]
        assert state == "COMPLETED", (rule, state)
        # the plugin's comment: rule_<name>, then _<wildcards> when the rule has any
        assert comment == f"rule_{rule}" or comment.startswith(f"rule_{rule}_"), (rule, comment)
        # the test profile's resources reached sbatch: its defaults, and for preprocess_chunk
        # and the GPU rules its set-resources over the rule's own mem_mb and runtime
        res = {**prof["default-resources"], **prof["set-resources"].get(rule, {})}
        assert (mem, limit) == (f"{res['mem_mb']}M", _slurm_time(res["runtime"])), rule
    for rule, n in SLICE_JOBS.items():  # one Slurm log per job
        logs = list((work / ".snakemake" / "slurm_logs" / f"rule_{rule}").rglob("*.log"))
        assert len(logs) == n, rule
        assert all("Finished jobid" in log.read_text() for log in logs), rule


@pytest.mark.slow
def test_the_slice_built_the_store_and_its_qc(slurm_run):
    work, _ = slurm_run
    results = work / "results"
    participants = read_tsv(results / "simulated" / "tiny" / "participants.tsv")
    assert len(participants) == 8
    store = ImageStore(results / "stores" / "tiny" / "index.tsv")
    assert len(store) == 8 * 2  # subjects x modalities (standard space: no Jacobians)
    assert set(store.table["participant_id"]) == set(participants["participant_id"])
    assert set(store.table["modality"]) == {"T1w", "VBM"}
    x = store.batch(range(len(store)))
    assert x.shape == (16, standard_space().n_voxels)
    assert np.isfinite(x).all() and (x.std(axis=1) > 0).all()
    qc = read_tsv(results / "qc" / "tiny" / "registration.tsv")
    assert sorted(qc["participant_id"]) == sorted(participants["participant_id"])
    assert qc["qc_pass"].all()
    png = results / "qc" / "tiny" / "site-s1_mosaic.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (ROOT / "results" / "stores" / "tiny").exists()  # the repo's results/ untouched


@pytest.mark.slow
def test_the_slice_pretrained_synthesized_and_gated(slurm_run):
    work, _ = slurm_run
    results = work / "results"
    assert len(loss_history(results / "pretrain" / "checkpoint.pt")) == 2
    assert (results / "figures" / "pretrain" / "samples.png").read_bytes()[:4] == b"\x89PNG"
    synthetic = ImageStore(results / "synthetic" / "pretrain" / "index.tsv")
    assert len(synthetic) == 4 * 2  # hold-out subjects x modalities, k = 1
    assert np.isfinite(synthetic.batch(range(len(synthetic)))).all()
    assert len(read_tsv(results / "evaluate" / "similarity" / "pretrain.tsv")) == 2 * 2 * 2
    assert bool(read_tsv(results / "evaluate" / "audit" / "pretrain_gate.tsv")["passed"].item())
    assert len(list((results / "export" / "pretrain").rglob("*.nii.gz"))) == 2
