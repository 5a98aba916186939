"""Dry-runs: the demo, the paper config pointed at a tiny fake dataset, and parse-time errors."""

import re
import zipfile

import nibabel as nib
import numpy as np
import pandas as pd
import torch
import yaml

from genbrain.imaging.plan import N_VOXELS
from genbrain.space import AFFINE
from tests.workflow.helpers import ROOT, fake_checkpoint, snakemake


def test_demo_dry_run_plans_every_stage(tmp_path):
    res = snakemake("-n", "--configfile", str(ROOT / "config" / "demo.yaml"), "-d", str(tmp_path))
    assert res.returncode == 0, res.stderr
    out = res.stdout
    for rule in ("simulate_truth", "simulate_cohort", "preprocess_chunk", "pack_store",
                 "qc_registration", "qc_mosaic"):
        assert f"{rule} " in out
    cfg = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    size = cfg["preprocess"]["chunk_size"]
    n_chunks = sum(-(-site["n"] // size) for c in cfg["cohorts"].values()
                   for site in c["simulate"]["sites"].values())
    counts = dict(line.split() for line in out.splitlines()
                  if line.split()[:1] and line.split()[0] in ("preprocess_chunk", "simulate_cohort")
                  and len(line.split()) == 2)
    assert int(counts["preprocess_chunk"]) == int(counts["simulate_cohort"]) == n_chunks


def test_gpu_overlay_plans_the_demos_rules(tmp_path):
    """config/demo-gpu.yaml applied after demo.yaml (issue 28 item 4) parses, validates and
    plans the same rules as the demo; only job counts may differ (its shard_size puts every
    synthetic cohort in one shard)."""
    demo = snakemake("-n", "--configfile", str(ROOT / "config" / "demo.yaml"),
                     "-d", str(tmp_path / "demo"))
    gpu = snakemake("-n", "--configfile", str(ROOT / "config" / "demo.yaml"),
                    str(ROOT / "config" / "demo-gpu.yaml"), "-d", str(tmp_path / "gpu"))
    assert demo.returncode == 0, demo.stderr
    assert gpu.returncode == 0, gpu.stderr
    demo_jobs, gpu_jobs = _jobs(demo.stdout), _jobs(gpu.stdout)
    assert set(gpu_jobs) == set(demo_jobs)
    assert gpu_jobs["synthesize_shard"] == gpu_jobs["pack_synthetic"]
    assert int(demo_jobs["synthesize_shard"]) > int(demo_jobs["pack_synthetic"])
    for rule in ("simulate_cohort", "preprocess_chunk", "finetune_model", "bwas_site",
                 "diagnosis_sweep"):
        assert gpu_jobs[rule] == demo_jobs[rule], rule


def _fake_dataset(root, n_per_site=(3, 2)):
    rows = []
    for s, n in zip(("siteX", "siteY", "siteZ"), n_per_site):
        for i in range(n):
            pid = f"sub-{s}{i:02d}"
            rows.append({"participant_id": pid, "site": s, "age": 40 + i, "sex": "MF"[i // 2 % 2],
                         "diagnosis": ["CN", "SCZ"][i % 2]})
            for m in ("T1w", "VBM"):
                p = root / "derivatives" / s / pid / f"{pid}_{m}.nii.gz"
                p.parent.mkdir(parents=True, exist_ok=True)
                nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), AFFINE), p)
    pd.DataFrame(rows).to_csv(root / "participants.tsv", sep="\t", index=False)


def _paper_config_for(root, tmp_path, finetune=False, **cohort_overrides):
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    scz = cfg["cohorts"]["scz"]
    scz["participants"] = str(root / "participants.tsv")
    scz["images"] = str(root / "derivatives" / "{site}" / "{participant_id}" /
                        "{participant_id}_{modality}.nii.gz")
    scz.update(cohort_overrides)
    cfg["cohorts"] = {"scz": scz}
    # the paper's fine-tunes of the scz cohort (they start from a checkpoint: no pretraining
    # cohort here); the stroke cohort's task goes with its cohort
    tasks = {k: v for k, v in cfg["finetune"]["tasks"].items() if v["cohort"] == "scz"}
    ckpt = tmp_path / "pretrained.pt"
    fake_checkpoint(ckpt)
    for task in tasks.values():
        task["init"] = str(ckpt)
    cfg["finetune"]["tasks"] = tasks if finetune else {}
    cfg.pop("imaging")  # its tasks take the pretraining cohort's hold-out: none here
    cfg.pop("clinical")  # its analysis is the stroke cohort's task's
    if not finetune:
        cfg.pop("bwas")  # their analyses are fine-tuning tasks'
        cfg.pop("diagnosis")
    cfg["preprocess"]["chunk_size"] = 2
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_paper_config_on_a_tiny_fake_dataset(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _fake_dataset(data)
    cfg = _paper_config_for(data, tmp_path, native_sites=["siteY"])
    res = snakemake("-n", "--configfile", str(cfg), "-d", str(tmp_path / "work"))
    assert res.returncode == 0, res.stderr
    # siteX: 3 subjects -> 2 chunks; siteY: 2 subjects -> 1 chunk; no simulation
    jobs = dict(line.split() for line in res.stdout.splitlines()
                if len(line.split()) == 2 and line.split()[1].isdigit())
    assert jobs["preprocess_chunk"] == "3"
    assert "simulate_cohort" not in res.stdout


def _jobs(stdout):
    """Rule -> job count from a dry-run's job table."""
    return dict(line.split() for line in stdout.splitlines()
                if len(line.split()) == 2 and line.split()[1].isdigit())


def _paper_dry_run(tmp_path, n_per_site=(12, 10)):
    """The paper config with its fine-tunes on a fake dataset: (data folder, config, the
    dry-run, its job counts)."""
    data = tmp_path / "data"
    data.mkdir()
    _fake_dataset(data, n_per_site=n_per_site)
    cfg = _paper_config_for(data, tmp_path, finetune=True)
    res = snakemake("-n", "--configfile", str(cfg), "-d", str(tmp_path / "work"))
    assert res.returncode == 0, res.stderr
    return data, cfg, res, _jobs(res.stdout)


def test_paper_fine_tunes_are_planned_per_site_and_a_new_site_adds_only_its_jobs(tmp_path):
    _, cfg, res, jobs = _paper_dry_run(tmp_path)
    # sczbwas and sczdx: one fine-tune and one checks job per site; sczdx trains on the split
    assert jobs["finetune_model"] == "4" and jobs["finetune_checks"] == "4"
    assert jobs["split_cohort"] == "1"
    for task, site in (("sczbwas", "siteX"), ("sczbwas", "siteY"), ("sczdx", "siteX")):
        assert f"results/finetune/{task}/{site}/checkpoint.pt" in res.stdout
    # a researcher asks for one site's fine-tune: only that site's jobs run (its store first)
    work = tmp_path / "work"
    res = snakemake("-n", "--configfile", str(cfg), "-d", str(work),
                    "results/finetune/sczbwas/siteY/checks.tsv")
    assert res.returncode == 0, res.stderr
    jobs = _jobs(res.stdout)
    assert jobs["finetune_model"] == "1" and jobs["finetune_checks"] == "1"
    assert "split_cohort" not in jobs and "sczbwas/siteX" not in res.stdout


def test_bwas_runs_every_fine_tuned_site_and_a_new_site_adds_only_its_jobs(tmp_path):
    data, cfg, res, jobs = _paper_dry_run(tmp_path)
    # per site: a synthetic cohort of the other site's size through the gate, the comparison
    # and its figures; one screen of every site of the cohort
    for rule in ("bwas_covariates", "bwas_site", "bwas_figures"):
        assert jobs[rule] == "2", (rule, jobs)
    assert jobs["bwas_screen"] == "1" and "results/bwas/sczbwas/screen.tsv" in res.stdout
    assert "results/bwas/sczbwas/site-siteX/scores.tsv" in res.stdout
    assert "results/evaluate/audit/bwas-sczbwas-siteY_gate.tsv" in res.stdout
    # a site added to the participants table: asking for its score table runs its fine-tune,
    # its synthetic cohort and its comparison only
    _fake_dataset(data, n_per_site=(12, 10, 10))
    res = snakemake("-n", "--configfile", str(cfg), "-d", str(tmp_path / "work"),
                    "results/bwas/sczbwas/site-siteZ/scores.tsv")
    assert res.returncode == 0, res.stderr
    jobs = _jobs(res.stdout)
    assert jobs["finetune_model"] == "1" and jobs["bwas_site"] == "1", jobs
    assert jobs["bwas_covariates"] == "1" and jobs["privacy_gate"] == "1", jobs
    assert "results/finetune/sczbwas/siteZ/checkpoint.pt" in res.stdout
    for other in ("siteX", "siteY"):
        assert f"sczbwas/{other}" not in res.stdout and f"sczbwas-{other}" not in res.stdout


def test_bwas_smoothing_kernels_recompute_the_statistics_and_sample_once(tmp_path):
    """bwas.smoothing_fwhm [0, 8]: per site a comparison and figures per kernel, one screen
    per kernel, but one synthetic cohort per site (its covariates, synthesis and gate)."""
    data = tmp_path / "data"
    data.mkdir()
    _fake_dataset(data, n_per_site=(12, 10))
    cfg_path = _paper_config_for(data, tmp_path, finetune=True)
    plain = _jobs(snakemake("-n", "--configfile", str(cfg_path), "-d",
                            str(tmp_path / "work")).stdout)
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["bwas"]["smoothing_fwhm"] = [0, 8]
    cfg_path.write_text(yaml.safe_dump(cfg))
    res = snakemake("-n", "--configfile", str(cfg_path), "-d", str(tmp_path / "work"))
    assert res.returncode == 0, res.stderr
    jobs = _jobs(res.stdout)
    for rule in ("bwas_site", "bwas_figures"):
        assert jobs[rule] == "4", (rule, jobs)
    assert jobs["bwas_screen"] == "2"
    for rule in ("bwas_covariates", "synthesize_shard", "privacy_gate", "finetune_model"):
        assert jobs[rule] == plain[rule], (rule, jobs, plain)
    for path in ("results/bwas/sczbwas/site-siteX/scores.tsv",
                 "results/bwas/sczbwas/site-siteX_fwhm-8/scores.tsv",
                 "results/figures/bwas/sczbwas/site-siteY_fwhm-8_maps.png",
                 "results/bwas/sczbwas/screen.tsv", "results/bwas/sczbwas/screen_fwhm-8.tsv"):
        assert path in res.stdout, path
    assert "bwas-sczbwas-siteX_fwhm" not in res.stdout
    # a kernel that is not configured is not a target
    res = snakemake("-n", "--configfile", str(cfg_path), "-d", str(tmp_path / "work"),
                    "results/bwas/sczbwas/site-siteX_fwhm-6/scores.tsv")
    assert res.returncode != 0


def test_bwas_mistakes_stop_the_dag_with_one_line(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _fake_dataset(data, n_per_site=(12, 10))
    cases = [
        ({"finetune": "nosuch"}, "'bwas.analyses.sczbwas.finetune' is 'nosuch'"),
        ({"finetune": "sczdx"}, "fine-tuning task 'sczdx' trains on its 'train' split"),
        ({"modality": "FA"}, "'bwas.analyses.sczbwas.modality' is 'FA'"),
        ({"sites": ["siteQ"]}, "'bwas.analyses.sczbwas.sites' lists 'siteQ'"),
        ({"mask": "cortex"}, "bwas.analyses.sczbwas.mask"),
    ]
    # a singular design (here: every participant of the sites is male) is caught at parse time
    table = pd.read_csv(data / "participants.tsv", sep="\t")
    pd.DataFrame(table.assign(sex="M")).to_csv(data / "one_sex.tsv", sep="\t", index=False)
    cases.append(({}, "singular design: column 'sex'"))
    for change, message in cases:
        cfg_path = _paper_config_for(data, tmp_path, finetune=True)
        cfg = yaml.safe_load(cfg_path.read_text())
        cfg["bwas"]["analyses"]["sczbwas"].update(change)
        if not change:
            cfg["cohorts"]["scz"]["participants"] = str(data / "one_sex.tsv")
        cfg_path.write_text(yaml.safe_dump(cfg))
        res = snakemake("-n", "--configfile", str(cfg_path), "-d", str(tmp_path / "work"))
        assert res.returncode != 0
        out = res.stdout + res.stderr
        assert message in out, (change, out[-600:])
        assert "Traceback" not in out
    # an agreement size a subsample's design cannot fit: refused now, not after fine-tuning,
    # synthesis and the privacy gate, and blamed on the key rather than the reference
    cfg_path = _paper_config_for(data, tmp_path, finetune=True)
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["bwas"].setdefault("agreement", {})["sizes"] = [4, 25]
    cfg_path.write_text(yaml.safe_dump(cfg))
    res = snakemake("-n", "--configfile", str(cfg_path), "-d", str(tmp_path / "work"))
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "Traceback" not in out
    assert ("config: 'bwas.agreement.sizes' has 4; each agreement subsample's d map fits 4 "
            "design columns") in out, out[-600:]


def test_fine_tune_mistakes_stop_the_dag_with_one_line(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _fake_dataset(data, n_per_site=(12, 8))
    not_torch = tmp_path / "notes.zip"
    with zipfile.ZipFile(not_torch, "w") as z:  # a zip, but not what torch.save writes
        z.writestr("notes.txt", "hello")
    weights = fake_checkpoint(tmp_path / "weights.pt", state={"w": torch.zeros(2)})
    public = fake_checkpoint(tmp_path / "0000200.pt", model={}, ema={}, opt={}, args={})
    cases = [
        ({"conditions": ["diagnosis"], "split": "train", "per_site": True},
         "site 'siteY' has 4 'CN' participant(s)"),
        ({"conditions": ["severity"]}, "'finetune.tasks.sczbwas.conditions' has 'severity'"),
        ({"modalities": ["FLAIR"]}, "'finetune.tasks.sczbwas.modalities' lists 'FLAIR'"),
        ({"init": str(tmp_path / "missing.pt")}, "missing.pt: init checkpoint not found"),
        # an init file that would stop the fine-tune after preprocessing: refused up front
        ({"init": str(not_torch)}, (f"{not_torch}: a zip archive without data.pkl, not a "
                                    "PyTorch checkpoint (config key "
                                    "'finetune.tasks.sczbwas.init')")),
        ({"init": str(weights)}, (f"{weights}: not a genbrain training checkpoint (config key "
                                  "'finetune.tasks.sczbwas.init'): its pickle lacks ['model', "
                                  "'ema', 'step', 'config']")),
        ({"init": str(public)}, f"{public}: a checkpoint of the public GenBrain code"),
        # the schema refuses architecture keys: a fine-tune inherits its init model's
        ({"train": {"preset": "B/256"}}, "unknown key 'preset' under 'finetune.tasks.sczbwas"),
    ]
    for change, message in cases:
        cfg_path = _paper_config_for(data, tmp_path, finetune=True)
        cfg = yaml.safe_load(cfg_path.read_text())
        cfg["finetune"]["tasks"] = {"sczbwas": {**cfg["finetune"]["tasks"]["sczbwas"],
                                                **change}}
        cfg["finetune"]["tasks"]["sczbwas"].pop("sites", None)
        cfg_path.write_text(yaml.safe_dump(cfg))
        res = snakemake("-n", "--configfile", str(cfg_path), "-d", str(tmp_path / "work"))
        assert res.returncode != 0
        out = res.stdout + res.stderr
        assert message in out, (change, out[-600:])


def test_missing_image_is_reported_by_name(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _fake_dataset(data)
    (data / "derivatives" / "siteX" / "sub-siteX01" / "sub-siteX01_VBM.nii.gz").unlink()
    cfg = _paper_config_for(data, tmp_path)
    res = snakemake("-n", "--configfile", str(cfg), "-d", str(tmp_path / "work"))
    assert res.returncode != 0
    assert "sub-siteX01_VBM.nii.gz" in res.stdout + res.stderr


def test_unfilled_paper_config_gives_one_line_error():
    res = snakemake("-n", "-d", "/tmp")
    assert res.returncode == 1
    out = res.stdout + res.stderr
    assert "Traceback" not in out
    lines = [ln for ln in out.splitlines() if "FILL-IN/ukb/participants.tsv" in ln]
    assert len(lines) == 1
    assert "participants table of cohort 'ukb' not found" in lines[0]
    assert "config/demo.yaml" in lines[0]


def test_config_typo_gives_one_line_error(tmp_path):
    cfg = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    cfg["qc"]["min_cor"] = cfg["qc"].pop("min_corr")
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = snakemake("-n", "--configfile", str(path), "-d", str(tmp_path))
    assert res.returncode == 1
    out = res.stdout + res.stderr
    assert "Traceback" not in out
    assert any("unknown key 'min_cor' under 'qc' (did you mean 'min_corr'?)" in ln
               for ln in out.splitlines())


def test_bad_participants_table_gives_one_line_error(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _fake_dataset(data)
    t = pd.read_csv(data / "participants.tsv", sep="\t")
    t.loc[2, "participant_id"] = t.loc[0, "participant_id"]
    t.to_csv(data / "participants.tsv", sep="\t", index=False)
    cfg = _paper_config_for(data, tmp_path)
    res = snakemake("-n", "--configfile", str(cfg), "-d", str(tmp_path / "work"))
    assert res.returncode == 1
    out = res.stdout + res.stderr
    assert "Traceback" not in out
    assert any("participants.tsv: line 4: duplicate participant_id 'sub-siteX00'" in ln
               for ln in out.splitlines())


def _demo_with_cohort(tmp_path, spec):
    cfg = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    cfg["synthesize"]["cohorts"] = {"mine": spec}
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_researcher_cohort_from_a_tsv_is_planned_through_the_gate_to_the_export(tmp_path):
    table = tmp_path / "covariates.tsv"
    pd.DataFrame({"age": [50 + i % 30 for i in range(130)], "sex": ["F", "M"] * 65,
                  "modality": ["T1w"] * 130}).to_csv(table, sep="\t", index=False)
    cfg = _demo_with_cohort(tmp_path, {"covariates": str(table), "k": 2})
    res = snakemake("-n", "--configfile", str(cfg), "-d", str(tmp_path / "work"),
                    "results/export/mine")
    assert res.returncode == 0, res.stderr
    jobs = {}
    for line in res.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            jobs[parts[0]] = int(parts[1])
    shard = yaml.safe_load(cfg.read_text())["synthesize"]["shard_size"]
    assert jobs["cohort_covariates"] == 1
    assert jobs["synthesize_shard"] == -(-130 // shard)  # only this cohort's shards
    for rule in ("pack_synthetic", "audit_memorisation", "privacy_gate", "export_synthetic"):
        assert jobs[rule] == 1, (rule, jobs)
    assert "evaluate_similarity" not in jobs


def test_researcher_cohort_with_a_bad_row_gives_one_line_error(tmp_path):
    table = tmp_path / "covariates.tsv"
    pd.DataFrame({"age": [50, 60], "sex": ["F", "M"],
                  "modality": ["T1w", "MD"]}).to_csv(table, sep="\t", index=False)
    cfg = _demo_with_cohort(tmp_path, {"covariates": str(table)})
    res = snakemake("-n", "--configfile", str(cfg), "-d", str(tmp_path / "work"))
    assert res.returncode == 1
    out = res.stdout + res.stderr
    assert "Traceback" not in out
    lines = [ln for ln in out.splitlines() if f"{table}: row 2: modality 'MD'" in ln]
    assert len(lines) == 1, out


def test_researcher_cohort_outside_the_training_range_stops_the_dag_unless_allowed(tmp_path):
    # the demo's pretraining population is simulated at ages 45-82: 150 is refused before any
    # job, naming the row, the value and the ages of the training split
    grid = {"age": [60, 150], "sex": ["F"], "modality": ["T1w"]}
    cfg = _demo_with_cohort(tmp_path, {"grid": grid})
    res = snakemake("-n", "--configfile", str(cfg), "-d", str(tmp_path / "work"))
    assert res.returncode == 1
    out = res.stdout + res.stderr
    assert "Traceback" not in out
    lines = [ln for ln in out.splitlines() if "config key 'synthesize.cohorts.mine.grid': row "
             "2: age 150 is outside the range the pretrained model saw in training (45." in ln]
    assert len(lines) == 1, out[-2000:]
    assert "'synthesize.cohorts.mine.allow_extrapolation: true'" in lines[0]
    cfg = _demo_with_cohort(tmp_path, {"grid": grid, "allow_extrapolation": True})
    res = snakemake("-n", "--configfile", str(cfg), "-d", str(tmp_path / "work"))
    assert res.returncode == 0, res.stderr


def test_provenance_checksums_the_researchers_covariate_table(tmp_path):
    table = tmp_path / "covariates.tsv"
    pd.DataFrame({"age": [50], "sex": ["F"], "modality": ["T1w"]}).to_csv(table, sep="\t",
                                                                         index=False)
    cfg = _demo_with_cohort(tmp_path, {"covariates": str(table)})
    res = snakemake("-n", "--configfile", str(cfg), "-d", str(tmp_path / "work"))
    assert res.returncode == 0, res.stderr
    job = res.stdout.split("rule provenance:", 1)[1]
    inputs = job.split("input:", 1)[1].splitlines()[0].split(", ")
    assert str(table) in [p.strip() for p in inputs]


def _without_finetuning(path):
    """Drop the paper's fine-tuning tasks (they name the paper's sites) from a config file."""
    cfg = yaml.safe_load(path.read_text())
    cfg.pop("finetune", None)
    cfg.pop("bwas", None)
    path.write_text(yaml.safe_dump(cfg))


def _real_site_dataset(root, small_cohort):
    """Three standard-space subjects of the shared simulated cohort filed under real-style
    site names: two at 'SH_JZ2', one at 'KKI_1' (folders named as the sites are)."""
    src = small_cohort["table"].query("site == 'std'").reset_index(drop=True)
    rows = []
    for i, row in src.iterrows():
        site = "SH_JZ2" if i < 2 else "KKI_1"
        pid = f"sub-{i + 1:02d}"
        rows.append({"participant_id": pid, "site": site, "age": row["age"], "sex": row["sex"],
                     "diagnosis": row["diagnosis"]})
        for m in ("T1w", "VBM"):
            p = root / "derivatives" / site / pid / f"{pid}_{m}.nii.gz"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.symlink_to(small_cohort["pattern"].format(participant_id=row["participant_id"],
                                                        modality=m))
    pd.DataFrame(rows).to_csv(root / "participants.tsv", sep="\t", index=False)


def test_real_site_names_run_through_preprocessing_under_path_labels(tmp_path, small_cohort):
    data = tmp_path / "data"
    data.mkdir()
    _real_site_dataset(data, small_cohort)
    cfg = _paper_config_for(data, tmp_path, sites=["SH_JZ2", "KKI_1"])
    _without_finetuning(cfg)
    work = tmp_path / "work"
    res = snakemake("-n", "--configfile", str(cfg), "-d", str(work))
    assert res.returncode == 0, res.stderr
    for path in ("results/stores/scz/site-SHJZ2/chunk-000",
                 "results/stores/scz/site-KKI1/chunk-000",
                 "results/qc/scz/site-SHJZ2_mosaic.png", "results/qc/scz/site-KKI1_mosaic.png"):
        assert path in res.stdout, path
    res = snakemake("--cores", "1", "--configfile", str(cfg), "-d", str(work),
                    "results/qc/scz/demographics.tsv", "results/qc/scz/site-SHJZ2_mosaic.png",
                    timeout=600)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    index = pd.read_csv(work / "results" / "stores" / "scz" / "index.tsv", sep="\t")
    assert sorted(index["site"].unique()) == ["KKI_1", "SH_JZ2"]  # tables keep the names
    assert {s.split("/")[0] for s in index["shard"]} == {"site-KKI1", "site-SHJZ2"}
    assert len(index) == 3 * 2 and index["qc_pass"].all()
    demo = pd.read_csv(work / "results" / "qc" / "scz" / "demographics.tsv", sep="\t")
    assert set(demo["site"]) == {"KKI_1", "SH_JZ2", "all"}
    png = work / "results" / "qc" / "scz" / "site-SHJZ2_mosaic.png"
    assert png.read_bytes()[:4] == b"\x89PNG"
    # the report labels the mosaic with the site's name, not its path label
    res = snakemake("--configfile", str(cfg), "-d", str(work), "--report",
                    str(work / "report.html"), "results/qc/scz/site-SHJZ2_mosaic.png")
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    html = (work / "report.html").read_text()
    assert '"labels": {"cohort": "scz", "site": "SH_JZ2", "figure": "QC mosaic"}' in html
    assert "Preprocessed images of site <strong>SH_JZ2</strong>" in html  # its caption


def test_two_site_names_with_one_path_label_stop_the_workflow(tmp_path, small_cohort):
    data = tmp_path / "data"
    data.mkdir()
    _real_site_dataset(data, small_cohort)
    t = pd.read_csv(data / "participants.tsv", sep="\t")
    t.loc[2, "site"] = "SH-JZ2"
    t.to_csv(data / "participants.tsv", sep="\t", index=False)
    cfg = _paper_config_for(data, tmp_path)
    _without_finetuning(cfg)
    res = snakemake("-n", "--configfile", str(cfg), "-d", str(tmp_path / "work"))
    assert res.returncode == 1
    out = res.stdout + res.stderr
    assert "Traceback" not in out
    assert any("sites 'SH_JZ2' and 'SH-JZ2' both map to the file-name label 'SHJZ2'" in ln
               for ln in out.splitlines()), out[-2000:]


def test_diagnosis_sweeps_every_site_and_a_site_asks_only_for_its_pool(tmp_path):
    _, cfg, res, jobs = _paper_dry_run(tmp_path)
    # every site of the cohort is a training site (volumes and a sweep each); each fine-tuned
    # one (sczdx: every site) also draws a synthetic pool through the audit and the gate,
    # measured by the same volume backend; one summary
    for rule in ("diagnosis_volumes", "diagnosis_sweep", "diagnosis_pool_covariates",
                 "diagnosis_synthetic_volumes"):
        assert jobs[rule] == "2", (rule, jobs)
    assert jobs["diagnosis_summary"] == "1", jobs
    for path in ("results/volumes/scz/site-siteX.csv", "results/volumes/scz/site-siteY.csv",
                 "results/volumes/synthetic/dx-sczdx-siteX.csv",
                 "results/synthetic/dx-sczdx-siteX/covariates.tsv",
                 "results/evaluate/audit/dx-sczdx-siteX_gate.tsv",
                 "results/diagnosis/sczdx/site-siteY/sweep.tsv",
                 "results/figures/diagnosis/sczdx/heatmap.png"):
        assert path in res.stdout, path
    # one site's sweep needs its own fine-tune and pool and every site's real volumes (its
    # cross-site test sets), never another site's pool
    res = snakemake("-n", "--configfile", str(cfg), "-d", str(tmp_path / "work"),
                    "results/diagnosis/sczdx/site-siteY/sweep.tsv")
    assert res.returncode == 0, res.stderr
    jobs = _jobs(res.stdout)
    assert jobs["diagnosis_sweep"] == "1" and jobs["diagnosis_volumes"] == "2", jobs
    assert jobs["diagnosis_synthetic_volumes"] == "1" and jobs["finetune_model"] == "1", jobs
    assert "dx-sczdx-siteX" not in res.stdout and "sczdx/siteX" not in res.stdout


def test_diagnosis_mistakes_stop_the_dag_with_one_line(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _fake_dataset(data, n_per_site=(12, 10))
    key = "'diagnosis.analyses.sczdx"
    cases = [
        ({"finetune": "nosuch"}, f"{key}.finetune' is 'nosuch', not a fine-tuning task"),
        ({"finetune": "sczbwas"}, "fine-tuning task 'sczbwas' trains on split 'all'"),
        ({"modality": "FA"}, f"{key}.modality' is 'FA'"),
        ({"ratios": [0.5, 1.0]}, "including 0.0 (the real-only baseline)"),
        ({"task": {"per_site": False}}, "is not per site"),
    ]
    for change, message in cases:
        cfg_path = _paper_config_for(data, tmp_path, finetune=True)
        cfg = yaml.safe_load(cfg_path.read_text())
        cfg.pop("bwas")  # its own checks would speak first for some of these changes
        task = change.pop("task", None)
        if task:
            cfg["finetune"]["tasks"]["sczdx"].update(task)
        cfg["diagnosis"]["analyses"]["sczdx"].update(change)
        cfg_path.write_text(yaml.safe_dump(cfg))
        res = snakemake("-n", "--configfile", str(cfg_path), "-d", str(tmp_path / "work"))
        assert res.returncode != 0, change
        out = res.stdout + res.stderr
        assert message in out, (change, task, out[-600:])
        assert "Traceback" not in out


def _imaging_config(tmp_path, source, tasks=None):
    cfg = yaml.safe_load(source.read_text())
    if tasks is not None:
        cfg["imaging"]["tasks"].update(tasks)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_imaging_jobs_are_planned_for_the_demo_and_smoke_and_a_task_adds_only_its_own(tmp_path):
    imaging = ("imaging_pairs", "imaging_method", "imaging_scores", "imaging_figure")
    dit = ("imaging_scratch_init", "imaging_finetune", "imaging_sample")
    # per scenario: its synthesis task with both DiT methods, and the jobs of each rule. The
    # demo: t1enhance (3 baselines), t1flair (mean; genbrain, scratch), rest2task (mean;
    # genbrain); the smoke run: t1enhance and t1flair2vbm with every method (two sources)
    for name, source, synth, tasks, baselines, dits in (
            ("demo", ROOT / "config" / "demo.yaml", "t1flair", "3", "5", "3"),
            ("smoke", ROOT / ".test" / "smoke" / "config.yaml", "t1flair2vbm", "2", "5", "2")):
        res = snakemake("-n", "--configfile", str(source), "-d", str(tmp_path / name))
        assert res.returncode == 0, res.stderr
        jobs = _jobs(res.stdout)
        # one pairs, scores and figure job per task; one prediction job per baseline method;
        # one random init, and one fine-tune and one sampling job per DiT method
        assert [jobs.get(r) for r in imaging] == [tasks, baselines, tasks, tasks], (name, jobs)
        assert [jobs.get(r) for r in dit] == ["1", dits, dits], (name, jobs)
        for path in ("results/imaging/t1enhance/predictions/unet.npy",
                     "results/imaging/t1enhance/summary.tsv",
                     "results/figures/imaging/t1enhance/examples.png",
                     "results/imaging/scratch_init.pt",
                     f"results/imaging/{synth}/models/genbrain/checkpoint.pt",
                     f"results/imaging/{synth}/models/scratch/checkpoint.pt",
                     f"results/imaging/{synth}/predictions/genbrain.npy",
                     f"results/imaging/{synth}/summary.tsv"):
            assert path in res.stdout, (name, path)
        assert f"results/imaging/{synth}/predictions/nlmeans.npy" not in res.stdout
        if name == "demo":  # rest -> task: the fine-tune and the mean image, no control
            for path in ("results/imaging/rest2task/models/genbrain/checkpoint.pt",
                         "results/imaging/rest2task/predictions/mean.npy"):
                assert path in res.stdout, path
            for path in ("results/imaging/rest2task/models/scratch/checkpoint.pt",
                         "results/imaging/rest2task/predictions/unet.npy"):
                assert path not in res.stdout, path
        # the scores step asks the memory its test images need (the rule sizes it)
        block = _job_block(res.stdout, "imaging_scores")
        task = re.search(r"results/imaging/(\w+)/scores\.tsv", block).group(1)
        cfg = yaml.safe_load(source.read_text())["imaging"]["tasks"][task]
        n = cfg["n_test"] * N_VOXELS
        methods = len(cfg.get("methods", ("mean", "nlmeans", "unet")))
        want = -(-((2 + methods) * 4 * n + 40 * n) // 2**20) + 1024
        assert f"mem_mb={want}," in block, (name, block)
    # a third task with one method: its own four jobs and nothing else of the others
    smoke = ROOT / ".test" / "smoke" / "config.yaml"
    cfg = _imaging_config(tmp_path, smoke, {"t1nl": {"n_test": 2, "methods": ["nlmeans"]}})
    res = snakemake("-n", "--configfile", str(cfg), "-d", str(tmp_path / "two"))
    assert res.returncode == 0, res.stderr
    jobs = _jobs(res.stdout)
    assert [jobs.get(r) for r in imaging] == ["3", "6", "3", "3"], jobs
    res = snakemake("-n", "--configfile", str(cfg), "-d", str(tmp_path / "two"),
                    "results/imaging/t1nl/summary.tsv")
    assert res.returncode == 0, res.stderr
    jobs = _jobs(res.stdout)
    assert [jobs.get(r) for r in imaging[:3]] == ["1", "1", "1"], jobs
    assert "results/imaging/t1enhance" not in res.stdout
    assert "results/imaging/t1nl/predictions/nlmeans.npy" in res.stdout


def test_imaging_mistakes_stop_the_dag_with_one_line(tmp_path):
    smoke = ROOT / ".test" / "smoke" / "config.yaml"
    for change, message in (
            ({"cohort": "scz"}, "'imaging.tasks.t1enhance.cohort' is 'scz'; the test images "),
            ({"modality": "FA"}, "'imaging.tasks.t1enhance.modality' is 'FA'"),
            ({"n_test": 50, "n_examples": 9}, "'imaging.tasks.t1enhance.n_examples' is 9"),
            ({"corrupt": {"max_translation": 20}}, "imaging.tasks.t1enhance.corrupt"),
            ({"kind": "synthesis", "corrupt": None, "source": "T1w"},
             "'imaging.tasks.t1enhance.source' is 'T1w', the task's target modality too"),
            ({"kind": "synthesis", "corrupt": None, "source": "FA"},
             "'imaging.tasks.t1enhance.source' is 'FA'"),
            ({"kind": "synthesis", "corrupt": None, "source": ["VBM", "FLAIR", "VBM"]},
             "'imaging.tasks.t1enhance.source' lists 'VBM' twice"),
            ({"kind": "synthesis", "corrupt": None, "source": "VBM", "methods": ["nlmeans"]},
             "'imaging.tasks.t1enhance.methods' has 'nlmeans' on a task of kind 'synthesis'")):
        cfg = yaml.safe_load(smoke.read_text())
        task = cfg["imaging"]["tasks"]["t1enhance"]
        task.update(change)
        for key in [k for k, v in change.items() if v is None]:  # None: drop the key
            del task[key]
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(cfg))
        res = snakemake("-n", "--configfile", str(path), "-d", str(tmp_path / "work"))
        out = res.stdout + res.stderr
        assert res.returncode != 0, change
        assert message in out, (change, out[-800:])
        assert "Traceback" not in out


def _job_block(stdout: str, rule: str) -> str:
    """The dry-run's lines of the first job of ``rule`` (``rule <name>:`` up to a blank line)."""
    text = stdout.split(f"rule {rule}:", 1)[1]
    return text.split("\n\n", 1)[0]


def test_a_given_pretrained_checkpoint_is_copied_not_trained(tmp_path):
    """pretrain.checkpoint: pretrain_dit reads only that file (no store, no split: nothing to
    train on), so asking for the pretrained model schedules that one job; the evaluation and
    the `init: pretrain` fine-tunes still run on it. Without a pretraining cohort, or with a
    checkpoint of the public code not yet converted, the DAG stops with one line."""
    given = fake_checkpoint(tmp_path / "given.pt")
    overlay = tmp_path / "given.yaml"
    overlay.write_text(yaml.safe_dump({"pretrain": {"checkpoint": str(given)}}))
    smoke = ROOT / ".test" / "smoke" / "config.yaml"
    work = str(tmp_path / "work")
    res = snakemake("-n", "--configfile", str(smoke), str(overlay), "-d", work)
    assert res.returncode == 0, res.stderr[-2000:]
    block = _job_block(res.stdout, "pretrain_dit")
    assert f"input: {given}\n" in block and "results/stores" not in block, block
    # the plan says, as the workflow is parsed, which layout the checkpoint has
    assert f"genbrain plan: config key 'pretrain.checkpoint': {given} records no layout" in (
        res.stdout + res.stderr)
    jobs = _jobs(res.stdout)
    for rule in ("pretrain_checks", "pretrain_loss_curve", "evaluate_similarity",
                 "finetune_model"):
        assert int(jobs[rule]) >= 1, rule
    res = snakemake("-n", "--cores", "8", "--configfile", str(smoke), str(overlay), "-d", work,
                    "results/pretrain/checkpoint.pt")
    assert res.returncode == 0, res.stderr[-2000:]
    jobs = _jobs(res.stdout)
    assert (jobs["pretrain_dit"], jobs["total"]) == ("1", "1"), jobs
    # nothing to train: no GPU and 2 threads, not the trainer's 8 (under Slurm: test_slurm.py)
    block = _job_block(res.stdout, "pretrain_dit")
    assert "threads: 2\n" in block and "gpu=0," in block, block

    public = fake_checkpoint(tmp_path / "0000200.pt", model={}, ema={}, opt={}, args={})
    overlay.write_text(yaml.safe_dump({"pretrain": {"checkpoint": str(public)}}))
    res = snakemake("-n", "--configfile", str(smoke), str(overlay), "-d", work)
    assert res.returncode == 1 and "Traceback" not in res.stdout + res.stderr
    assert (f"{public}: a checkpoint of the public GenBrain code ({{model, ema, opt, args}}), "
            "not a genbrain training checkpoint (config key 'pretrain.checkpoint'); convert it "
            "first: python -m genbrain.model.public") in res.stdout + res.stderr

    data = tmp_path / "data"
    data.mkdir()
    _fake_dataset(data)
    cfg_path = _paper_config_for(data, tmp_path)  # no cohort with role pretrain
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["pretrain"]["checkpoint"] = str(given)
    cfg_path.write_text(yaml.safe_dump(cfg))
    res = snakemake("-n", "--configfile", str(cfg_path), "-d", work)
    assert res.returncode == 1
    assert ("config: 'pretrain.checkpoint' is set but no cohort has role 'pretrain', whose "
            "hold-out evaluates the model; to fine-tune from the checkpoint alone, set "
            "'finetune.tasks.<name>.init' to it") in res.stdout + res.stderr


def test_the_demo_and_smoke_configs_schedule_every_clinical_job(tmp_path):
    """The clinical stage in both checked-in scenarios: the score-conditioned fine-tune, one
    pool (covariates, its synthesis through the gate), one fit per (ratio, seed), one summary
    and one pairs figure per analysis, exactly as the config sizes them."""
    for name, path in (("demo", ROOT / "config" / "demo.yaml"),
                       ("smoke", ROOT / ".test" / "smoke" / "config.yaml")):
        cfg = yaml.safe_load(path.read_text())
        res = snakemake("-n", "--configfile", str(path), "-d", str(tmp_path / name))
        assert res.returncode == 0, res.stderr
        jobs = _jobs(res.stdout)
        section = cfg["clinical"]
        fits = sum(len(a.get("ratios", section["ratios"])) * a.get("seeds", section["seeds"])
                   for a in section["analyses"].values())
        n = len(section["analyses"])
        assert (jobs["clinical_sweep"], jobs["clinical_summary"], jobs["clinical_pairs"],
                jobs["clinical_pool_covariates"]) == (str(fits), str(n), str(n), str(n)), jobs
        for analysis, a in section["analyses"].items():
            assert f"results/synthetic/clinical-{analysis}/covariates.tsv" in res.stdout
            assert f"results/evaluate/audit/clinical-{analysis}_gate.tsv" in res.stdout
            assert f"results/finetune/{a['finetune']}/all/checkpoint.pt" in res.stdout
            assert f"results/clinical/{analysis}/sweep/ratio-0_seed-1.tsv" in res.stdout
            # the fidelity record reads the pool's score gain from the fine-tune's checks
            fidelity = _job_block(res.stdout, "fidelity_record")
            for table in (f"results/clinical/{analysis}/comparison.tsv",
                          f"results/finetune/{a['finetune']}/all/checks.tsv"):
                assert table in fidelity, (table, fidelity)
