"""The per-site jobs of the analysis stages (genbrain.jobs.SiteJob): the names and folders the
rules use, and the params dict the rules pass to the scripts (its JSON is pinned: a changed
key order or value reruns every job of the stage)."""

import json

from genbrain.bwas.plan import BwasSite
from genbrain.diagnosis.plan import DiagnosisSite
from genbrain.jobs import fwhm_suffix, split_path_label

DX = DiagnosisSite("main", "disorder", "Site A", "SiteA", ("CN", "SCZ"), "T1w", "dx/SiteA", 30,
                   90)
BWAS = BwasSite("an", "disorder", "Site B", "SiteB", "VBM", "t/SiteB", ("Site A", "C"), "CN",
                "gm", 0.2, 20, 40, 40)


def test_site_jobs_name_their_synthetic_cohort_and_results_folder():
    assert (DX.name, DX.synth, DX.out_dir) == ("main/SiteA", "dx-main-SiteA",
                                               "results/diagnosis/main/site-SiteA")
    assert (BWAS.name, BWAS.synth, BWAS.out_dir) == ("an/SiteB", "bwas-an-SiteB",
                                                     "results/bwas/an/site-SiteB")


def test_site_jobs_round_trip_through_their_params_json():
    assert json.dumps(DX.to_dict()) == (
        '{"analysis": "main", "cohort": "disorder", "site": "Site A", "label": "SiteA", '
        '"levels": ["CN", "SCZ"], "modality": "T1w", "model": "dx/SiteA", "n_train": 30, '
        '"n_pool": 90}')
    assert json.dumps(BWAS.to_dict()) == (
        '{"analysis": "an", "cohort": "disorder", "site": "Site B", "label": "SiteB", '
        '"modality": "VBM", "model": "t/SiteB", "reference_sites": ["Site A", "C"], '
        '"control": "CN", "mask": "gm", "gm_threshold": 0.2, "n_real": 20, "n_reference": 40, '
        '"n_synthetic": 40}')
    for job in (DX, BWAS):
        back = type(job).from_dict(json.loads(json.dumps(job.to_dict())))
        assert back == job and hash(back) == hash(job)  # tuples again, so hashable
        assert type(job).from_dict(job.to_dict()) == job


def test_a_smoothing_kernel_is_written_into_a_path_label_and_read_back():
    assert fwhm_suffix(0) == "" and fwhm_suffix(7.06) == "_fwhm-7p06"
    assert split_path_label("SiteS1_fwhm-7p06") == ("SiteS1", 7.06)
    assert split_path_label("SiteS1") == ("SiteS1", 0.0)
