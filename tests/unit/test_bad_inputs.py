"""Every bad input named in the foundation issue gets a one-line error naming the culprit."""

import gzip
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

from genbrain.config import load_yaml, validate_config
from genbrain.errors import GenbrainInputError
from genbrain.io import load_volume
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
    raw = open(good, "rb").read()
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
    img, data = load_volume(_nifti(tmp_path / "one.nii.gz", np.zeros((10, 10, 10, 1))))
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
    assert "line 3: column 'participant_id' value '02' does not match" in one_line(e)


# --- config -------------------------------------------------------------------------------

@pytest.fixture
def demo_config():
    return load_yaml(ROOT / "config" / "demo.yaml")


def test_both_shipped_configs_validate(demo_config):
    validate_config(demo_config, SCHEMA, "demo.yaml")
    validate_config(load_yaml(ROOT / "config" / "config.yaml"), SCHEMA, "config.yaml")


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


def test_real_cohort_without_participants(demo_config):
    demo_config["cohorts"]["scz"].pop("simulate")
    with pytest.raises(GenbrainInputError) as e:
        validate_config(demo_config, SCHEMA, "demo.yaml")
    assert "missing key 'cohorts.scz.participants'" in one_line(e)
    assert "config/demo.yaml" in one_line(e)


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
