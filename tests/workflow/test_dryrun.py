"""Dry-runs: the demo, the paper config pointed at a tiny fake dataset, and parse-time errors."""

import nibabel as nib
import numpy as np
import pandas as pd
import yaml

from genbrain.space import AFFINE
from tests.workflow.helpers import ROOT, snakemake


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


def _fake_dataset(root, n_per_site=(3, 2)):
    rows = []
    for s, n in zip(("siteX", "siteY"), n_per_site):
        for i in range(n):
            pid = f"sub-{s}{i:02d}"
            rows.append({"participant_id": pid, "site": s, "age": 40 + i, "sex": "MF"[i % 2],
                         "diagnosis": ["CN", "SCZ"][i % 2]})
            for m in ("T1w", "VBM"):
                p = root / "derivatives" / s / pid / f"{pid}_{m}.nii.gz"
                p.parent.mkdir(parents=True, exist_ok=True)
                nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), AFFINE), p)
    pd.DataFrame(rows).to_csv(root / "participants.tsv", sep="\t", index=False)


def _paper_config_for(root, tmp_path, **cohort_overrides):
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    scz = cfg["cohorts"]["scz"]
    scz["participants"] = str(root / "participants.tsv")
    scz["images"] = str(root / "derivatives" / "{site}" / "{participant_id}" /
                        "{participant_id}_{modality}.nii.gz")
    scz.update(cohort_overrides)
    cfg["cohorts"] = {"scz": scz}
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
    pd.DataFrame({"age": [50 + i for i in range(130)], "sex": ["F", "M"] * 65,
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
