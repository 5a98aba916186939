import numpy as np
import pytest

from genbrain.space import AFFINE, SHAPE, standard_space, template_t1


def test_grid_and_mask_match_fsl():
    space = standard_space()
    assert space.shape == SHAPE == (91, 109, 91)
    np.testing.assert_array_equal(space.affine, AFFINE)
    assert space.n_voxels == 228_483


def test_vector_volume_round_trip_is_exact():
    space = standard_space()
    rng = np.random.default_rng(0)
    vec = rng.standard_normal(space.n_voxels).astype(np.float32)
    vol = space.to_volume(vec)
    assert vol.shape == SHAPE
    np.testing.assert_array_equal(space.to_vector(vol), vec)
    assert np.all(vol[~space.mask] == 0)
    batch = rng.standard_normal((3, space.n_voxels)).astype(np.float32)
    np.testing.assert_array_equal(space.to_vector(space.to_volume(batch)), batch)


def test_vector_order_is_c_order_x_slowest():
    space = standard_space()
    ijk = space.voxel_indices.T
    keys = ijk[:, 0] * 10**6 + ijk[:, 1] * 10**3 + ijk[:, 2]
    assert np.all(np.diff(keys) > 0)
    # world coordinates follow the affine
    np.testing.assert_allclose(space.world_coords[0], AFFINE[:3, :3] @ ijk[0] + AFFINE[:3, 3])


def test_wrong_shapes_are_refused():
    space = standard_space()
    with pytest.raises(ValueError, match="shape"):
        space.to_vector(np.zeros((91, 109, 90)))
    with pytest.raises(ValueError, match="length"):
        space.to_volume(np.zeros(10))


def test_template_is_brain_shaped():
    space = standard_space()
    t1 = template_t1()
    inside = t1[space.mask].mean()
    assert inside > 3 * t1[~space.mask].mean()
