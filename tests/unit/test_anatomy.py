"""The template-space anatomy (genbrain.anatomy): tissue priors and atlas resampled onto the
standard grid."""

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from genbrain.anatomy import _resample_to_standard
from genbrain.space import package_dir, standard_space


def test_tissue_priors_resampled_inside_the_mask_keep_the_whole_grid_maximum():
    space = standard_space()
    path = (package_dir("nilearn") / "datasets" / "data"
            / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz")
    img = nib.load(path)
    ijk = np.indices(space.shape, dtype=np.float64).reshape(3, -1)
    world = space.affine[:3, :3] @ ijk + space.affine[:3, 3:4]
    src = np.linalg.inv(img.affine)
    vox = src[:3, :3] @ world + src[:3, 3:4]
    full = ndi.map_coordinates(np.asanyarray(img.dataobj).astype(np.float32), vox, order=1,
                               mode="constant", cval=0).reshape(space.shape)
    vol, peak = _resample_to_standard(path, 1)
    np.testing.assert_array_equal(vol[space.mask], full[space.mask])
    assert not vol[~space.mask].any()
    assert peak == full.max()
