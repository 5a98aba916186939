"""Every bad input named in the foundation issue gets a one-line error naming the culprit."""


import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from genbrain.config import load_yaml, validate_config
from genbrain.errors import GenbrainInputError
from genbrain.io import load_volume
from genbrain.modalities import DEFAULT_REGISTRY
from genbrain.preprocess.chunk import _standardise_grid
from genbrain.space import AFFINE, standard_space
from genbrain.tables import validate_participants
from tests.conftest import ROOT

SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
PSCHEMA = ROOT / "workflow" / "schemas" / "participants.schema.yaml"


def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


def _nifti(path, data, affine=AFFINE):
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), affine), path)
    return str(path)


# --- images -------------------------------------------------------------------------------

def test_corrupt_nifti(tmp_path):
    p = tmp_path / "corrupt.nii.gz"
    p.write_bytes(b"this is not an image at all")
    with pytest.raises(GenbrainInputError) as e:
        load_volume(p)
    assert "corrupt.nii.gz: cannot read NIfTI image" in one_line(e)


def test_truncated_nifti(tmp_path):
    good = _nifti(tmp_path / "good.nii.gz", np.ones(standard_space().shape))
    raw = Path(good).read_bytes()
    p = tmp_path / "truncated.nii.gz"
    p.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(GenbrainInputError) as e:
        load_volume(p)
    assert "truncated.nii.gz: cannot read NIfTI image (corrupt or truncated" in one_line(e)


def test_4d_where_3d_expected(tmp_path):
    p = _nifti(tmp_path / "bold.nii.gz", np.zeros((10, 10, 10, 5)))
    with pytest.raises(GenbrainInputError) as e:
        load_volume(p)
    assert "bold.nii.gz: expected a 3D image, got shape (10, 10, 10, 5)" in one_line(e)
    # a 4D file with a single volume is fine
    _, data = load_volume(_nifti(tmp_path / "one.nii.gz", np.zeros((10, 10, 10, 1))))
    assert data.shape == (10, 10, 10)


def test_nan_voxels(tmp_path):
    data = np.zeros(standard_space().shape)
    data[40, 50, 30] = np.nan
    p = _nifti(tmp_path / "nan.nii.gz", data)
    with pytest.raises(GenbrainInputError) as e:
        load_volume(p)
    assert "nan.nii.gz: 1 NaN/inf voxels (first at voxel 40,50,30)" in one_line(e)


def test_missing_image(tmp_path):
    with pytest.raises(GenbrainInputError) as e:
        load_volume(tmp_path / "nope.nii.gz")
    assert "nope.nii.gz: image not found" in one_line(e)


def test_wrong_grid_in_a_standard_space_input(tmp_path):
    shape = standard_space().shape
    rotated = AFFINE.copy()
    rotated[:3, :3] = np.array([[0, 2.0, 0], [2.0, 0, 0], [0, 0, 2.0]])
    p = _nifti(tmp_path / "rotated.nii.gz", np.ones(shape), rotated)
    with pytest.raises(GenbrainInputError) as e:
        _standardise_grid(p)
    assert "rotated.nii.gz: expected an image in MNI152NLin6Asym space" in one_line(e)
    assert "native_sites" in one_line(e)
    small = AFFINE.copy()
    small[:3, 3] += 60  # shifted field of view: most of the brain outside
    p = _nifti(tmp_path / "shifted.nii.gz", np.ones((40, 40, 40)), small)
    with pytest.raises(GenbrainInputError) as e:
        _standardise_grid(p)
    assert "shifted.nii.gz: grid (40, 40, 40)" in one_line(e)


def test_standard_space_image_on_another_grid_is_resampled(tmp_path):
    space = standard_space()
    one_mm = np.diag([1.0, 1.0, 1.0, 1.0])
    one_mm[:3, 3] = [-91, -127, -73]
    ijk = np.indices((182, 218, 182)).reshape(3, -1)
    world_x = (one_mm[:3, :3] @ ijk + one_mm[:3, 3:4])[0].reshape(182, 218, 182)
    p = _nifti(tmp_path / "mni1mm.nii.gz", world_x, one_mm)
    vol, how = _standardise_grid(p)
    assert how == "resampled"
    np.testing.assert_allclose(space.to_vector(vol), space.world_coords[:, 0], atol=1e-3)


# --- participants tables ------------------------------------------------------------------

def _table(**overrides):
    t = pd.DataFrame({"participant_id": ["sub-01", "sub-02", "sub-03"],
                      "site": ["A", "A", "B"], "age": [30.0, 41.5, 52.0],
                      "sex": ["M", "F", "F"], "diagnosis": ["CN", "SCZ", "CN"]})
    for k, v in overrides.items():
        t[k] = v
    return t


def test_valid_table_passes():
    out = validate_participants(_table(), PSCHEMA, "p.tsv", sites=["A", "B"],
                                diagnosis_levels=["CN", "SCZ"])
    assert out["age"].dtype == float


def test_missing_participants_column():
    with pytest.raises(GenbrainInputError) as e:
        validate_participants(_table().drop(columns="sex"), PSCHEMA, "p.tsv")
    assert "p.tsv: missing column 'sex'" in one_line(e)


def test_duplicate_participant_ids():
    with pytest.raises(GenbrainInputError) as e:
        validate_participants(_table(participant_id=["sub-01", "sub-02", "sub-01"]), PSCHEMA,
                              "p.tsv")
    assert "p.tsv: line 4: duplicate participant_id 'sub-01' (first at line 2)" in one_line(e)


def test_unknown_site():
    with pytest.raises(GenbrainInputError) as e:
        validate_participants(_table(), PSCHEMA, "p.tsv", sites=["A"])
    assert "p.tsv: line 4 (sub-03): unknown site 'B'; expected one of ['A']" in one_line(e)


def test_ages_out_of_range():
    with pytest.raises(GenbrainInputError) as e:
        validate_participants(_table(age=[30, 41, 152]), PSCHEMA, "p.tsv")
    assert "p.tsv: line 4 (sub-03): age 152 is out of range; expected 0 to 120" in one_line(e)
    with pytest.raises(GenbrainInputError) as e:
        validate_participants(_table(), PSCHEMA, "p.tsv", age_range=[40, 90])
    assert "line 2 (sub-01): age 30 is out of range; expected 40 to 90" in one_line(e)


def test_non_numeric_age_and_bad_sex_and_diagnosis():
    with pytest.raises(GenbrainInputError) as e:
        validate_participants(_table(age=["30", "forty", "52"]), PSCHEMA, "p.tsv")
    assert "line 3 (sub-02): column 'age' must be a number, got 'forty'" in one_line(e)
    with pytest.raises(GenbrainInputError) as e:
        validate_participants(_table(sex=["M", "female", "F"]), PSCHEMA, "p.tsv")
    assert "line 3 (sub-02): column 'sex' must be one of ['M', 'F'], got 'female'" in one_line(e)
    with pytest.raises(GenbrainInputError) as e:
        validate_participants(_table(), PSCHEMA, "p.tsv", diagnosis_levels=["CN"])
    assert "line 3 (sub-02): unknown diagnosis 'SCZ'" in one_line(e)


def test_missing_value_and_bad_id_pattern():
    with pytest.raises(GenbrainInputError) as e:
        validate_participants(_table(age=[30, None, 52]), PSCHEMA, "p.tsv")
    assert "line 3 (sub-02): missing value in required column 'age'" in one_line(e)
    with pytest.raises(GenbrainInputError) as e:
        validate_participants(_table(participant_id=["sub-01", "02", "sub-03"]), PSCHEMA,
                              "p.tsv")
    assert "line 3: participant_id '02' lacks the BIDS prefix 'sub-'" in one_line(e)


def test_real_site_names_are_accepted_and_labelled_for_paths():
    from genbrain.tables import site_label, site_labels

    sites = ["SH_JZ2", "KKI_1", "Site A", "nyu-2", "siteb"]
    out = validate_participants(_table(site=sites[:3]), PSCHEMA, "p.tsv")
    assert list(out["site"]) == sites[:3]  # the table keeps the names
    assert [site_label(s) for s in sites] == ["SHJZ2", "KKI1", "SiteA", "nyu2", "siteb"]
    assert site_labels(sites + ["SH_JZ2"], "p.tsv") == dict(zip(sites, map(site_label, sites)))


def test_two_sites_with_one_label_are_an_error_naming_both():
    with pytest.raises(GenbrainInputError) as e:
        validate_participants(_table(site=["KKI_1", "KKI_1", "KKI-1"]), PSCHEMA, "p.tsv")
    assert ("p.tsv: sites 'KKI_1' and 'KKI-1' both map to the file-name label 'KKI1'"
            in one_line(e))
    with pytest.raises(GenbrainInputError) as e:  # one folder on a case-insensitive disk
        validate_participants(_table(site=["SiteA", "site_a", "B"]), PSCHEMA, "p.tsv")
    assert "sites 'SiteA' and 'site_a' both map to the file-name label 'sitea'" in one_line(e)


def test_a_site_without_letters_or_digits_is_refused():
    with pytest.raises(GenbrainInputError) as e:
        validate_participants(_table(site=["A", "__", "B"]), PSCHEMA, "p.tsv")
    assert "p.tsv: line 3 (sub-02): site '__' has no letter or digit" in one_line(e)
    with pytest.raises(GenbrainInputError) as e:
        validate_participants(_table(site=["A", "  ", "B"]), PSCHEMA, "p.tsv")
    assert "p.tsv: line 3 (sub-02): the site is blank; expected a site name" in one_line(e)


def test_participant_id_without_sub_prefix_says_how_to_fix_it():
    with pytest.raises(GenbrainInputError) as e:
        validate_participants(_table(participant_id=["sub-01", "1000123", "sub-03"]), PSCHEMA,
                              "p.tsv")
    msg = one_line(e)
    assert ("p.tsv: line 3: participant_id '1000123' lacks the BIDS prefix 'sub-'; write it "
            "as 'sub-1000123'") in msg
    assert "{subject}" in msg
    with pytest.raises(GenbrainInputError) as e:
        validate_participants(_table(participant_id=["sub-01", "sub-KKI_0050772", "sub-03"]),
                              PSCHEMA, "p.tsv")
    assert ("participant_id 'sub-KKI_0050772': the label after 'sub-' must be letters and "
            "digits only (BIDS), e.g. 'sub-KKI0050772'") in one_line(e)


def test_cohort_converts_between_site_names_and_path_labels(tmp_path):
    from genbrain.chunks import assign_chunks
    from genbrain.workflow import Cohort

    table = assign_chunks(validate_participants(_table(site=["SH_JZ2", "SH_JZ2", "KKI_1"]),
                                                PSCHEMA, "p.tsv"), 1)
    c = Cohort("scz", {"modalities": ["T1w"], "role": "disorder"}, table, "p.tsv",
               "/d/{site}/{participant_id}_{modality}.nii.gz", False, frozenset())
    assert c.site_label("SH_JZ2") == "SHJZ2" and c.site_of_label("KKI1") == "KKI_1"
    assert c.chunks() == [("KKI_1", 0), ("SH_JZ2", 0), ("SH_JZ2", 1)]
    assert c.image_paths("SH_JZ2", 1) == ["/d/SH_JZ2/sub-02_T1w.nii.gz"]  # files keep names
    with pytest.raises(GenbrainInputError) as e:
        c.site_of_label("SH_JZ2")
    assert "cohort 'scz' has no site labelled 'SH_JZ2'; expected one of ['KKI1', 'SHJZ2']" \
        in one_line(e)


# --- config -------------------------------------------------------------------------------

@pytest.fixture
def demo_config():
    return load_yaml(ROOT / "config" / "demo.yaml")


def _demo_gpu_config():
    """config/demo.yaml with the config/demo-gpu.yaml overlay, merged as Snakemake merges
    `--configfile config/demo.yaml config/demo-gpu.yaml`."""
    from snakemake.utils import update_config

    config = load_yaml(ROOT / "config" / "demo.yaml")
    update_config(config, load_yaml(ROOT / "config" / "demo-gpu.yaml"))
    return config


def test_both_shipped_configs_validate(demo_config):
    validate_config(demo_config, SCHEMA, "demo.yaml")
    validate_config(load_yaml(ROOT / "config" / "config.yaml"), SCHEMA, "config.yaml")
    validate_config(_demo_gpu_config(), SCHEMA, "demo.yaml + demo-gpu.yaml")


def test_shipped_gpu_overlay_changes_budgets_only(demo_config):
    """The one-GPU overlay keeps the demo's cohorts, seed, simulator, preprocessing, model and
    learning recipe (issue 28: never change the data to make a result appear); it sets
    steps, batches, sample counts and job sizes."""
    overlay = load_yaml(ROOT / "config" / "demo-gpu.yaml")
    assert set(overlay) <= {"pretrain", "finetune", "synthesize", "bwas", "diagnosis",
                            "evaluate"}
    merged = _demo_gpu_config()
    for key in ("seed", "cohorts", "preprocess", "qc", "export"):
        assert merged[key] == demo_config[key], key
    recipe = ("preset", "patch_size", "pos_embed", "prediction", "modality_templates", "lr",
              "weight_decay", "label_dropout", "sampling_weights", "precision", "seed")
    assert not set(overlay["pretrain"]["train"]) & set(recipe)
    assert not set(overlay["finetune"]["train"]) & set(recipe)
    assert merged["pretrain"]["train"]["steps"] > demo_config["pretrain"]["train"]["steps"]
    for key in ("ddim_steps", "guidance", "precision", "weights", "cohorts"):
        assert merged["synthesize"].get(key) == demo_config["synthesize"].get(key), key


def test_config_typo_at_top_level(demo_config):
    demo_config["preprocss"] = demo_config.pop("preprocess")
    with pytest.raises(GenbrainInputError) as e:
        validate_config(demo_config, SCHEMA, "demo.yaml")
    assert ("demo.yaml: unknown key 'preprocss' at the top level (did you mean 'preprocess'?)"
            in one_line(e))


def test_config_typo_in_a_cohort(demo_config):
    demo_config["cohorts"]["scz"]["modalites"] = demo_config["cohorts"]["scz"].pop("modalities")
    with pytest.raises(GenbrainInputError) as e:
        validate_config(demo_config, SCHEMA, "demo.yaml")
    msg = one_line(e)
    assert "demo.yaml:" in msg and "'modalites'" in msg and "cohorts.scz" in msg


def test_config_bad_value_names_the_key(demo_config):
    demo_config["preprocess"]["backend"] = "spm"
    with pytest.raises(GenbrainInputError) as e:
        validate_config(demo_config, SCHEMA, "demo.yaml")
    assert "config key 'preprocess.backend': 'spm' is not one of ['ants', 'fsl']" in one_line(e)


def test_config_unknown_modality(demo_config):
    demo_config["cohorts"]["scz"]["modalities"] = ["T1w", "DWI"]
    with pytest.raises(GenbrainInputError) as e:
        validate_config(demo_config, SCHEMA, "demo.yaml")
    assert "unknown modality 'DWI'" in one_line(e)


def test_config_modality_the_simulator_cannot_write(demo_config):
    assert "SWI" in DEFAULT_REGISTRY
    demo_config["cohorts"]["scz"]["modalities"] = ["T1w", "SWI"]
    with pytest.raises(GenbrainInputError) as e:
        validate_config(demo_config, SCHEMA, "demo.yaml")
    assert ("demo.yaml: 'cohorts.scz.modalities': 'SWI' cannot be simulated; expected some of "
            "['T1w', 'VBM', 'FLAIR', 'FA', 'fc01'") in one_line(e)


def test_real_cohort_without_participants(demo_config):
    demo_config["cohorts"]["scz"].pop("simulate")
    with pytest.raises(GenbrainInputError) as e:
        validate_config(demo_config, SCHEMA, "demo.yaml")
    assert "missing key 'cohorts.scz.participants'" in one_line(e)
    assert "config/demo.yaml" in one_line(e)


def test_a_cohort_name_with_an_underscore_gets_a_suggestion(demo_config):
    demo_config["cohorts"]["SH_JZ"] = demo_config["cohorts"].pop("scz")
    with pytest.raises(GenbrainInputError) as e:
        validate_config(demo_config, SCHEMA, "demo.yaml")
    msg = one_line(e)
    assert msg.startswith("demo.yaml: key 'SH_JZ' under 'cohorts' is not a valid name")
    assert msg.endswith("e.g. 'SHJZ')")


def test_malformed_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("seed: 1\ncohorts: [unclosed\n")
    with pytest.raises(GenbrainInputError) as e:
        load_yaml(p)
    assert "c.yaml: line" in one_line(e) and "not valid YAML" in one_line(e)


def test_image_pattern_with_an_unknown_placeholder(demo_config):
    scz = demo_config["cohorts"]["scz"]
    scz.pop("simulate")
    scz["participants"] = "p.tsv"
    scz["images"] = "/data/{participant_id}/{session}_{modality}.nii.gz"
    with pytest.raises(GenbrainInputError) as e:
        validate_config(demo_config, SCHEMA, "demo.yaml")
    assert "'cohorts.scz.images' uses unknown placeholder {session}" in one_line(e)


# --- image content: units and modality mix-ups (issue 13) -----------------------------------

def _subject_vectors(small_cohort):
    """(pid, {modality: raw in-mask vector}) of a standard-space simulated subject."""
    space = standard_space()
    pid = small_cohort["table"].query("site == 'std'")["participant_id"].iloc[0]
    return pid, {m: space.to_vector(load_volume(small_cohort["pattern"].format(
        participant_id=pid, modality=m))[1]) for m in ("T1w", "VBM")}


@pytest.mark.parametrize("probe", ["T1w as VBM", "VBM in percent", "FA x 1000", "FA above 1"])
def test_an_image_mostly_outside_its_modality_range_is_refused(small_cohort, probe):
    from genbrain.qc import check_content

    _, vec = _subject_vectors(small_cohort)
    vbm = vec["VBM"]
    fa = np.clip(0.15 + 0.5 * vbm, 0, 0.95)  # an FA-like map in [0, 1]
    modality, values, found = {
        "T1w as VBM": ("VBM", vec["T1w"] * 1000, "outside [0, 1]"),  # raw scanner intensities
        "VBM in percent": ("VBM", vbm * 100, "outside [0, 1]"),
        "FA x 1000": ("FA", fa * 1000, "outside [0, 1]"),
        "FA above 1": ("FA", fa + 1, "outside [0, 1]"),
    }[probe]
    for ok in (vbm, fa):  # the correct maps pass
        check_content(ok, DEFAULT_REGISTRY["VBM" if ok is vbm else "FA"], "ok.nii.gz")
    with pytest.raises(GenbrainInputError) as e:
        check_content(values, DEFAULT_REGISTRY[modality], "/data/sub-01_x.nii.gz (participant "
                      "sub-01)")
    msg = one_line(e)
    assert msg.startswith(f"/data/sub-01_x.nii.gz (participant sub-01): {modality} image has ")
    assert found in msg and "median" in msg
    assert f"expected {modality} (" in msg and f"'modalities.{modality}.clamp'" in msg


def test_a_few_outliers_are_clamped_not_refused(small_cohort):
    from genbrain.qc import check_content

    _, vec = _subject_vectors(small_cohort)
    vbm = vec["VBM"].copy()
    vbm[: len(vbm) // 10] = 1.7  # 10% of the brain above the range: clamped, kept
    check_content(vbm, DEFAULT_REGISTRY["VBM"], "few.nii.gz")
    row = DEFAULT_REGISTRY["VBM"].normalise(vbm)
    assert row.std() > 0.5


@pytest.mark.parametrize("modality,value", [("VBM", 0.0), ("VBM", 0.4), ("T1w", 0.0),
                                            ("T1w", 812.0), ("FA", 1.0)])
def test_a_constant_map_is_refused_in_every_modality(modality, value):
    from genbrain.qc import check_content

    values = np.full(standard_space().n_voxels, value, np.float32)
    with pytest.raises(GenbrainInputError) as e:
        check_content(values, DEFAULT_REGISTRY[modality], "flat.nii.gz")
    assert (f"flat.nii.gz: {modality} image is constant inside the brain mask (every voxel "
            f"{value:g})") in one_line(e)


def test_a_t1w_given_as_vbm_stops_its_chunk_although_qc_looks_at_t1w(small_cohort, tmp_path):
    # The probe: a VBM file holding a T1 (raw intensities) entered the store as a
    # constant row (every voxel clamped to 1, i.e. 2.5996 after normalising) and passed QC,
    # which registers T1w only. Every modality of every subject is checked now.
    from genbrain.preprocess.chunk import preprocess_chunk

    rows = small_cohort["table"].query("site == 'std'")
    images = {pid: {m: small_cohort["pattern"].format(participant_id=pid, modality=m)
                    for m in ("T1w", "VBM")} for pid in rows["participant_id"]}
    pid = rows["participant_id"].iloc[1]
    img, t1 = load_volume(images[pid]["T1w"])
    images[pid]["VBM"] = _nifti(tmp_path / f"{pid}_VBM.nii.gz", t1 * 1000, img.affine)
    out = tmp_path / "chunk"
    with pytest.raises(GenbrainInputError) as e:
        preprocess_chunk(rows, images, [False] * len(rows), DEFAULT_REGISTRY, out,
                         qc_modality="T1w")
    msg = one_line(e)
    assert msg.startswith(f"{tmp_path / f'{pid}_VBM.nii.gz'} (participant {pid}): VBM image")
    assert "outside [0, 1]" in msg
    assert not out.exists()


def test_an_image_pattern_may_use_the_bare_subject_label(demo_config):
    from genbrain.simulate.write import image_path

    scz = demo_config["cohorts"]["scz"]
    scz.pop("simulate")
    scz["participants"] = "p.tsv"
    scz["images"] = "/ukb/{subject}/{site}/{modality}.nii.gz"
    validate_config(demo_config, SCHEMA, "demo.yaml")
    assert image_path(scz["images"], "sub-1000123", "SH_JZ2", "T1w") == \
        "/ukb/1000123/SH_JZ2/T1w.nii.gz"
    scz["images"] = "/ukb/{site}/{modality}.nii.gz"  # names no subject at all
    with pytest.raises(GenbrainInputError) as e:
        validate_config(demo_config, SCHEMA, "demo.yaml")
    assert "cohorts.scz.images" in one_line(e)


# --- declared score ranges (issue 34 item 3) ----------------------------------------------

NIHSS = [{"name": "nihss", "range": [0, 42]}]


def test_a_score_outside_its_declared_range_names_the_file_line_and_participant():
    typo = _table(nihss=[3.0, 420.0, 12.0])
    # a bare name keeps accepting any number
    assert validate_participants(typo, PSCHEMA, "p.tsv", scores=["nihss"])["nihss"].max() == 420
    with pytest.raises(GenbrainInputError) as e:
        validate_participants(typo, PSCHEMA, "p.tsv", scores=NIHSS)
    assert one_line(e) == ("p.tsv: line 3 (sub-02): nihss 420 is outside its declared range "
                           "[0, 42] (the cohort's 'scores' in the config)")
    ends = validate_participants(_table(nihss=[0, 42, 7]), PSCHEMA, "p.tsv", scores=NIHSS)
    assert ends["nihss"].tolist() == [0.0, 42.0, 7.0]
    with pytest.raises(GenbrainInputError, match="p.tsv: missing column 'nihss'"):
        validate_participants(_table(), PSCHEMA, "p.tsv", scores=NIHSS)


def test_scores_with_ranges_validate_and_read_as_names(demo_config):
    from genbrain.workflow import load_cohorts

    demo_config["cohorts"]["stroke"]["scores"] = [{"name": "score", "range": [0, 42]}]
    cfg = validate_config(demo_config, SCHEMA, "demo.yaml")
    cohorts = load_cohorts(cfg, PSCHEMA, 60)
    assert cohorts["stroke"].scores == ["score"] and cohorts["scz"].scores == []
    cfg["cohorts"]["stroke"]["scores"] = [{"name": "score", "range": [0, 1]}]
    with pytest.raises(GenbrainInputError) as e:
        load_cohorts(cfg, PSCHEMA, 60)
    assert re.fullmatch(r"simulated cohort 'stroke': line \d+ \(sub-\w+\): score [\d.]+ is "
                        r"outside its declared range \[0, 1\] \(the cohort's 'scores' in the "
                        r"config\)", one_line(e)), one_line(e)
    cfg["cohorts"]["stroke"]["scores"] = [{"name": "score", "range": [42, 0]}]
    with pytest.raises(GenbrainInputError, match=r"'cohorts\.stroke\.scores': the range of "
                       r"'score' is \[42, 0\]; expected \[low, high\]"):
        load_cohorts(cfg, PSCHEMA, 60)
    demo_config["cohorts"]["stroke"]["scores"] = [{"name": "score", "rnage": [0, 42]}]
    with pytest.raises(GenbrainInputError) as e:
        validate_config(demo_config, SCHEMA, "demo.yaml")
    assert ("unknown key 'rnage' under 'cohorts.stroke.scores.0' (did you mean 'range'?)"
            in one_line(e)), one_line(e)


def test_the_demographics_caption_names_scores_declared_with_a_range(demo_config):
    # The caption used to join the config's raw 'scores' entries, printing a {name, range}
    # score as a dict (and, under the report's trim_blocks, ran ")and" together); it reads the
    # rule's params instead: the names, as get_cohort_scores gives them.
    from types import SimpleNamespace

    import jinja2

    from genbrain.workflow import load_cohorts

    demo_config["cohorts"]["stroke"]["scores"] = [{"name": "score", "range": [0, 42]}]
    cfg = validate_config(demo_config, SCHEMA, "demo.yaml")
    cohorts = load_cohorts(cfg, PSCHEMA, 60)
    caption = (ROOT / "workflow" / "report" / "qc_demographics.rst").read_text()
    with_scores = ("``qc.min_corr``) and the mean and SD of the clinical score(s)\nscore "
                   "(``cohorts.stroke.scores``).")
    for name, shown in (("stroke", with_scores), ("scz", "``qc.min_corr``).")):
        smk = SimpleNamespace(config=cfg, wildcards=SimpleNamespace(cohort=name),
                              params=SimpleNamespace(scores=cohorts[name].scores))
        # the environment Snakemake's report renders captions in
        env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
        text = env.from_string(caption).render(snakemake=smk)
        assert text.rstrip().endswith(shown), text
        assert "'range'" not in text and "{" not in text, text  # no dict printed


def test_brain_extracted_names_known_sites_and_is_per_site_for_simulated_cohorts(demo_config):
    scz = demo_config["cohorts"]["scz"]
    scz["brain_extracted"] = True
    with pytest.raises(GenbrainInputError) as e:
        validate_config(demo_config, SCHEMA, "demo.yaml")
    assert "'cohorts.scz.brain_extracted' is set from 'cohorts.scz.simulate.sites." in one_line(e)
    scz.pop("simulate")
    scz.update(participants="p.tsv", images="/d/{participant_id}_{modality}.nii.gz",
               sites=["siteA", "siteB"], native_sites=["siteA"], brain_extracted=["siteZ"])
    with pytest.raises(GenbrainInputError) as e:
        validate_config(demo_config, SCHEMA, "demo.yaml")
    assert "'cohorts.scz.brain_extracted' lists unknown site 'siteZ'" in one_line(e)
    scz["brain_extracted"] = ["siteA"]
    validate_config(demo_config, SCHEMA, "demo.yaml")
    scz["brain_extracted"] = "yes"
    with pytest.raises(GenbrainInputError) as e:
        validate_config(demo_config, SCHEMA, "demo.yaml")
    assert "brain_extracted" in one_line(e)
