import numpy as np
import pandas as pd
import pytest
from scipy import stats

from genbrain.simulate import Generator, ground_truth, participants, site_specs
from genbrain.simulate.cohort import subject_rng
from genbrain.space import standard_space

SPEC = {"kind": "disorder", "age": [30, 70], "patient_fraction": 0.5, "patient_label": "SCZ",
        "disease_effect": 0.10, "sites": {"a": {"n": 40}, "b": {"n": 40}}}


def test_participants_are_deterministic_and_seeded():
    a = participants("c", SPEC, 1)
    pd.testing.assert_frame_equal(a, participants("c", SPEC, 1))
    assert not a["age"].equals(participants("c", SPEC, 2)["age"])
    assert list(a.columns) == ["participant_id", "site", "age", "sex", "diagnosis"]
    assert a["participant_id"].is_unique
    assert set(a["diagnosis"]) == {"CN", "SCZ"}
    assert a["age"].between(30, 70).all()


def test_site_parameters_are_drawn_once_and_overridable():
    spec = {**SPEC, "sites": {"a": {"n": 5, "noise": 0.0}, "b": {"n": 5}}}
    s1, s2 = site_specs("c", spec, 3), site_specs("c", spec, 3)
    assert s1 == s2
    assert s1[0].noise == 0.0
    assert s1[0].scale != s1[1].scale


def test_subject_is_independent_of_which_process_generates_it():
    gen = Generator("disorder")
    row = {"age": 50.0, "sex": "F", "diagnosis": "CN"}
    site = site_specs("c", SPEC, 1)[0]
    a = gen.subject(row, site, subject_rng(1, "c", "a", 3), ["T1w", "VBM"])
    b = gen.subject(row, site, subject_rng(1, "c", "a", 3), ["T1w", "VBM"])
    c = gen.subject(row, site, subject_rng(1, "c", "a", 4), ["T1w", "VBM"])
    np.testing.assert_array_equal(a["VBM"], b["VBM"])
    assert not np.array_equal(a["VBM"], c["VBM"])


@pytest.fixture(scope="module")
def disorder_sample():
    gen = Generator("disorder", disease_effect=0.10)
    table = participants("c", SPEC, 11)
    sites = {s.name: s for s in site_specs("c", SPEC, 11)}
    vbm = []
    for i, row in enumerate(table.to_dict("records")):
        rng = subject_rng(11, "c", row["site"], i)
        imgs = gen.subject(row, sites[row["site"]], rng, ["VBM", "FA"])
        vbm.append(gen.apply_site(imgs, sites[row["site"]], rng)["VBM"])
    return table, np.stack(vbm)


def test_planted_disease_effect_is_detectable_with_a_t_test(disorder_sample):
    table, vbm = disorder_sample
    truth = ground_truth("c", SPEC, ["VBM"])["VBM_diagnosis"]
    patients = (table["diagnosis"] == "SCZ").to_numpy()
    t, _ = stats.ttest_ind(vbm[patients], vbm[~patients], axis=0)
    effect_region = truth < -0.02
    assert effect_region.sum() > 1000
    # patients lose grey matter where the truth says so, and not elsewhere
    assert np.nanmean(t[effect_region]) < -1.0
    assert abs(np.nanmean(t[np.abs(truth) < 1e-4])) < 0.5
    assert np.corrcoef(np.nan_to_num(t), truth)[0, 1] > 0.3


def test_planted_age_effect_has_the_right_sign(disorder_sample):
    table, vbm = disorder_sample
    truth = ground_truth("c", SPEC, ["VBM"])["VBM_age"]
    region = truth < np.percentile(truth, 5)
    r = [stats.pearsonr(table["age"], vbm[:, v])[0] for v in np.flatnonzero(region)[::200]]
    assert np.mean(r) < -0.15


def test_ground_truth_has_every_effect_of_the_cohort_kind():
    gt = ground_truth("c", SPEC, ["T1w", "VBM"])
    assert set(gt) == {"T1w_age", "T1w_sex", "T1w_diagnosis", "VBM_age", "VBM_sex",
                       "VBM_diagnosis"}
    assert all(v.shape == (standard_space().n_voxels,) for v in gt.values())
    clin = ground_truth("k", {"kind": "clinical", "sites": {"h": {"n": 2}}}, ["FA"])
    assert clin["FA_score"].min() < 0  # lesion load lowers FA


def test_task_maps_depend_on_rest_maps():
    gen = Generator("population")
    site = site_specs("p", {"kind": "population", "sites": {"u": {"n": 30}}}, 0)[0]
    mods = ["fc02", "task_shapes"]
    region = gen.w["visual"] > 0.5
    fc, task = [], []
    for i in range(30):
        imgs = gen.subject({"age": 60, "sex": "F"}, site, subject_rng(0, "p", "u", i), mods)
        fc.append(imgs["fc02"][region].mean())
        task.append(imgs["task_shapes"][region].mean())
    assert stats.pearsonr(fc, task)[0] > 0.5


def test_ground_truth_written_reads_back_and_is_drawn(tmp_path):
    from genbrain.errors import GenbrainInputError
    from genbrain.figures import truth_maps
    from genbrain.simulate import read_truth, write_truth

    spec = {"kind": "clinical", "sites": {"h": {"n": 2}}}
    write_truth("k", spec, 1, ["T1w", "FA"], tmp_path / "participants.tsv", tmp_path / "gt")
    maps = read_truth(tmp_path / "gt", ["FA", "T1w"])
    assert list(maps) == [("FA", "age"), ("FA", "sex"), ("FA", "score"),
                          ("T1w", "age"), ("T1w", "sex"), ("T1w", "score")]
    gt = ground_truth("k", spec, ["T1w", "FA"])
    for (m, e), vec in maps.items():  # float32 NIfTI of the generator's maps
        np.testing.assert_allclose(vec, gt[f"{m}_{e}"], rtol=1e-6, atol=1e-7)
    assert not maps[("T1w", "score")].any()  # the lesion is an FA effect only
    truth_maps(maps, tmp_path / "fig" / "truth.png", "k")
    assert (tmp_path / "fig" / "truth.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(GenbrainInputError, match=r"gt: no ground-truth maps .* of VBM"):
        read_truth(tmp_path / "gt", ["VBM"])
