"""Whole-head vs brain-extracted native T1s: which registration strategy gives the same pose and
passes QC for both versions of the same real brain (issue 34 item 1).

Inputs: Colin27, a real single-subject 1 mm T1 (Debian's ``mricron-data``:
``/usr/share/mricron/templates/ch2.nii.gz``, whole head, and ``ch2bet.nii.gz``, the same image
brain-extracted), each also with its header pose changed by a known rigid transform (12 deg,
8-15 mm), and the whole-head image resampled to 1.5 mm.

Strategies for the whole-head image (the brain-extracted one always goes to the brain-masked
template):
- ``brain``: today's, to the brain-masked template (the scalp is fitted to the brain's edge);
- ``head``: head to head (whole-head template), the brain mask applied afterwards;
- ``extract``: head-to-head affine, the template's brain mask carried back to native space, then
  the extracted brain registered like a brain-extracted image.

Printed per strategy: QC r (registered T1 vs the template inside the brain mask; the pipeline's
``qc_corr``), the pose error of the posed copy against the known transform (max over brain
voxels, mm), and the pose disagreement with the brain-extracted version (max and mean over
brain voxels, mm; the baseline being the brain-extracted version's own registration).

    python benchmarks/whole_head_registration.py [--type SyN] [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from genbrain.preprocess.registration import register_ants
from genbrain.space import standard_space, template_paths, template_t1
from genbrain.stats.correlation import pearson

COLIN = Path("/usr/share/mricron/templates")


def rigid(deg: float, axis: int, shift: tuple[float, float, float]) -> np.ndarray:
    a = np.deg2rad(deg)
    c, s = np.cos(a), np.sin(a)
    i, j = [k for k in range(3) if k != axis]
    m = np.eye(4)
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    m[:3, 3] = shift
    return m


def posed(path: Path, pose: np.ndarray, out: Path) -> Path:
    img = nib.load(path)
    new = nib.Nifti1Image(np.asanyarray(img.dataobj), pose @ img.affine, img.header)
    new.set_sform(pose @ img.affine, code=1)
    new.set_qform(pose @ img.affine, code=1)
    nib.save(new, out)
    return out


def resampled(path: Path, voxel: float, out: Path) -> Path:
    from nibabel.processing import resample_to_output

    nib.save(resample_to_output(nib.load(path), [voxel] * 3, order=1), out)
    return out


def coordinates(path: Path, out: Path) -> dict[str, str]:
    """Three images holding each native voxel's world (RAS mm) x, y, z: resampled with the
    subject's transforms they give, per standard voxel, the native point it maps to (the whole
    mapping, affine and warp)."""
    img = nib.load(path)
    ijk = np.indices(img.shape[:3], dtype=np.float32).reshape(3, -1)
    xyz = (img.affine[:3, :3] @ ijk + img.affine[:3, 3:]).astype(np.float32)
    files = {}
    for k, axis in enumerate("xyz"):
        files[axis] = str(out.with_name(f"{out.name}_{axis}.nii.gz"))
        nib.save(nib.Nifti1Image(xyz[k].reshape(img.shape[:3]), img.affine), files[axis])
    return files


def extract(path: Path, out: Path, seed: int, threads: int) -> Path:
    """The template's brain mask carried back through a head-to-head affine."""
    import ants

    head = ants.image_read(str(template_paths()["T1w"]))
    mask = ants.image_read(str(template_paths()["mask"]))
    moving = ants.image_read(str(path))
    with tempfile.TemporaryDirectory() as tmp:
        reg = ants.registration(head, moving, type_of_transform="Affine", random_seed=seed,
                                outprefix=str(Path(tmp) / "a_"))
        back = ants.apply_transforms(moving, mask, transformlist=reg["invtransforms"],
                                     whichtoinvert=[True], interpolator="linear")
    keep = ndi.binary_dilation(back.numpy() > 0.5, iterations=2)
    img = nib.load(path)
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj) * keep, img.affine, img.header), out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--type", default="SyN")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if not (COLIN / "ch2.nii.gz").exists():
        raise SystemExit(f"{COLIN}/ch2.nii.gz not found: apt-get install mricron-data")
    space = standard_space()
    pts = np.c_[space.world_coords, np.ones(space.n_voxels)]
    ref = space.to_vector(template_t1())
    pose = rigid(12.0, 0, (8.0, -10.0, 15.0))
    opts = {"type_of_transform": args.type}

    def run(path: Path, brain: bool, coords: dict[str, str]):
        t0 = time.time()
        reg = register_ants({"T1w": str(path), **coords}, "T1w", opts, seed=args.seed,
                            threads=args.threads, brain_extracted=brain)
        r = pearson(space.to_vector(reg.volumes["T1w"]), ref)
        mapped = np.stack([space.to_vector(reg.volumes[a]) for a in "xyz"], axis=1)
        return reg.std_to_native, r, time.time() - t0, mapped

    def dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.linalg.norm((pts @ a.T - pts @ b.T)[:, :3], axis=1)

    def full(mapped: np.ndarray, ref_mapped: np.ndarray, pose_: np.ndarray) -> np.ndarray:
        moved = np.c_[ref_mapped, np.ones(len(ref_mapped))] @ pose_.T
        return np.linalg.norm(mapped - moved[:, :3], axis=1)

    with tempfile.TemporaryDirectory(prefix="whole-head-") as tmp:
        t = Path(tmp)
        bet, head = COLIN / "ch2bet.nii.gz", COLIN / "ch2.nii.gz"
        inputs = {"bet": bet, "bet_posed": posed(bet, pose, t / "bet_posed.nii.gz"),
                  "head": head, "head_posed": posed(head, pose, t / "head_posed.nii.gz"),
                  "head_1.5mm": resampled(head, 1.5, t / "head15.nii.gz")}
        coords = {name: coordinates(path, t / f"c_{name}") for name, path in inputs.items()}
        base, r_bet, sec, base_map = run(inputs["bet"], True, coords["bet"])
        base_p, r_bet_p, _, base_p_map = run(inputs["bet_posed"], True, coords["bet_posed"])
        print(f"brain-extracted: QC r {r_bet:.3f} / posed {r_bet_p:.3f}; posed copy: pose error "
              f"max {dist(base_p, pose @ base).max():.2f} mm, whole mapping mean "
              f"{full(base_p_map, base_map, pose).mean():.2f} mm; {sec:.0f} s per registration")
        print("against the brain-extracted version: the affine pose (max/mean over brain voxels) "
              "and the whole mapping (mean/95th percentile); the posed copy against its unposed "
              "twin (affine max, mm)")
        print("strategy  input        QC r   pose max/mean   mapping mean/p95   posed error")
        for strategy in ("brain", "head", "extract"):
            res = {}
            for name in ("head", "head_posed", "head_1.5mm"):
                path = inputs[name]
                if strategy == "extract":
                    path = extract(path, t / f"x_{name}.nii.gz", args.seed, args.threads)
                res[name] = run(path, strategy != "head", coords[name])
            for name, (aff, r, _, mapped) in res.items():
                p = pose if name == "head_posed" else np.eye(4)
                d = dist(aff, p @ base)
                m = full(mapped, base_map, p)
                err = (f"{dist(aff, pose @ res['head'][0]).max():.2f}"
                       if name == "head_posed" else "")
                print(f"{strategy:8}  {name:11}  {r:.3f}  {d.max():5.2f} / {d.mean():4.2f}"
                      f"   {m.mean():5.2f} / {np.percentile(m, 95):5.2f}      {err}", flush=True)


if __name__ == "__main__":
    main()
