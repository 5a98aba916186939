"""The modality registry: name, embedding index, clamp range and normalisation.

The default registry is the paper's 34 UK Biobank modalities with indices 0..33, in the order the
Methods list them (15 resting-state seed maps, 3 emotion-task contrasts, 6 DTI, 3 NODDI, T1w /
VBM / Jacobian, SWI / T2* / QSM, T2-FLAIR). New modalities (unseen at pretraining, e.g. a new FC
seed map or DTI-ADC) get new indices from 34 up, declared in the config.

Normalisation:
- ``zscore``: per image, (x - mean) / std over the brain mask. Used for raw intensities (T1w,
  FLAIR, SWI), whose scale is arbitrary and scanner dependent.
- ``fixed``: (x - mean) / std with constants of the modality, the same for every image.
  Used for derived maps (FA, VBM, FC...) whose absolute values carry meaning.
Values are clamped to ``clamp`` (in the modality's native units) before normalising.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from genbrain.errors import GenbrainInputError

NORMALISATIONS = ("zscore", "fixed")
#: The modalities the embedded simulator writes (:class:`genbrain.simulate.cohort.Generator`):
#: a simulated cohort may ask for these only (config check). All are in the default registry
#: but ``ADC``, the acute-stroke map the paper's pretraining never saw (:data:`SIMULATED_NEW`).
SIMULATED_MODALITIES = (
    "T1w", "VBM", "FLAIR", "FA", "fc01", "fc02", "fc03", "task_shapes", "task_faces", "ADC",
)
#: The simulated modalities outside the default registry: a config using them declares them
#: under ``modalities:`` with a new index (config/demo.yaml: ADC, index 34, the paper config's).
SIMULATED_NEW = ("ADC",)


@dataclass(frozen=True)
class Modality:
    """One image modality.

    Attributes:
        name: identifier used in file names and config (letters, digits, underscore).
        index: integer fed to the modality embedder (0..33 for the pretrained table).
        clamp: (low, high) range of raw values kept; ``None`` for no clamping.
        norm: ``"zscore"`` (per image) or ``"fixed"`` (``mean``/``std`` constants).
        mean, std: constants for ``fixed`` normalisation.
        description: human-readable description for tables and the report.
    """

    name: str
    index: int
    clamp: tuple[float, float] | None
    norm: str
    mean: float = 0.0
    std: float = 1.0
    description: str = ""

    def normalise(self, x: np.ndarray) -> np.ndarray:
        """Raw in-mask values (..., V) -> clamped, normalised float32 values (..., V)."""
        x = np.asarray(x, dtype=np.float32)
        if self.clamp is not None:
            x = np.clip(x, self.clamp[0], self.clamp[1])
        if self.norm == "zscore":
            mu = x.mean(axis=-1, keepdims=True)
            sd = x.std(axis=-1, keepdims=True)
            return ((x - mu) / np.where(sd > 0, sd, 1.0)).astype(np.float32)
        return ((x - self.mean) / self.std).astype(np.float32)

    def denormalise(self, z: np.ndarray) -> np.ndarray:
        """Inverse of ``fixed`` normalisation (``zscore`` images stay in z units)."""
        z = np.asarray(z, dtype=np.float32)
        if self.norm == "zscore":
            return z
        return z * np.float32(self.std) + np.float32(self.mean)


def _ukb_default() -> list[Modality]:
    mods: list[Modality] = []
    for k in range(1, 16):
        mods.append(
            Modality(f"fc{k:02d}", len(mods), (-1.0, 1.0), "fixed", 0.0, 0.25,
                     f"resting-state seed-based FC map, DU15NET network {k}")
        )
    for name, desc in [
        ("task_shapes", "emotion task contrast: shapes"),
        ("task_faces", "emotion task contrast: faces"),
        ("task_faces_gt_shapes", "emotion task contrast: faces > shapes"),
    ]:
        mods.append(Modality(name, len(mods), (-50.0, 50.0), "fixed", 0.0, 10.0, desc))
    dti = [
        ("FA", (0.0, 1.0), 0.3, 0.15, "DTI fractional anisotropy"),
        ("MD", (0.0, 4e-3), 8e-4, 3e-4, "DTI mean diffusivity (mm^2/s)"),
        ("MO", (-1.0, 1.0), 0.1, 0.4, "DTI mode of anisotropy"),
        ("L1", (0.0, 4e-3), 1.1e-3, 3e-4, "DTI first eigenvalue (mm^2/s)"),
        ("L2", (0.0, 4e-3), 7e-4, 3e-4, "DTI second eigenvalue (mm^2/s)"),
        ("L3", (0.0, 4e-3), 5e-4, 3e-4, "DTI third eigenvalue (mm^2/s)"),
        ("OD", (0.0, 1.0), 0.3, 0.15, "NODDI orientation dispersion"),
        ("ICVF", (0.0, 1.0), 0.5, 0.2, "NODDI intra-cellular volume fraction"),
        ("ISOVF", (0.0, 1.0), 0.15, 0.15, "NODDI isotropic volume fraction"),
    ]
    for name, clamp, mean, std, desc in dti:
        mods.append(Modality(name, len(mods), clamp, "fixed", mean, std, desc))
    mods.append(Modality("T1w", len(mods), None, "zscore", description="T1-weighted image"))
    mods.append(Modality("VBM", len(mods), (0.0, 1.0), "fixed", 0.35, 0.25,
                         "grey-matter volume (VBM, modulated GM probability)"))
    mods.append(Modality("jacobian", len(mods), (0.0, 5.0), "fixed", 1.0, 0.2,
                         "Jacobian determinant of the nonlinear warp to MNI152"))
    mods.append(Modality("SWI", len(mods), None, "zscore", description="susceptibility-weighted"))
    mods.append(Modality("T2star", len(mods), (0.0, 200.0), "fixed", 40.0, 15.0, "T2* (ms)"))
    mods.append(Modality("QSM", len(mods), (-0.5, 0.5), "fixed", 0.0, 0.05, "QSM (ppm)"))
    mods.append(Modality("FLAIR", len(mods), None, "zscore", description="T2-FLAIR image"))
    return mods


class ModalityRegistry(Mapping[str, Modality]):
    """Name -> :class:`Modality`, with unique names and indices."""

    def __init__(self, modalities: Iterable[Modality]):
        self._by_name: dict[str, Modality] = {}
        seen: dict[int, str] = {}
        for m in modalities:
            if m.norm not in NORMALISATIONS:
                raise GenbrainInputError(
                    f"modality '{m.name}': norm must be one of {NORMALISATIONS}, got '{m.norm}'"
                )
            if m.name in self._by_name:
                raise GenbrainInputError(f"modality '{m.name}' is declared twice")
            if m.index in seen:
                raise GenbrainInputError(
                    f"modality '{m.name}': index {m.index} is already used by '{seen[m.index]}'"
                )
            if m.norm == "fixed" and not m.std > 0:
                raise GenbrainInputError(f"modality '{m.name}': std must be > 0, got {m.std}")
            seen[m.index] = m.name
            self._by_name[m.name] = m

    def __getitem__(self, name: str) -> Modality:
        try:
            return self._by_name[name]
        except KeyError:
            raise GenbrainInputError(
                f"unknown modality '{name}': expected one of {sorted(self._by_name)} "
                "or a new modality declared under 'modalities:' in the config"
            ) from None

    def __iter__(self):
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    @property
    def n_indices(self) -> int:
        """Size of the embedding table needed: max index + 1."""
        return max(m.index for m in self._by_name.values()) + 1

    def extended(self, extra: Mapping[str, Mapping]) -> ModalityRegistry:
        """A registry with new modalities from a config mapping ``name -> {index, clamp, norm,
        mean, std, description}``; an entry whose name exists overrides those fields."""
        mods = dict(self._by_name)
        for name, spec in extra.items():
            base = mods.get(name)
            index = spec.get("index", base.index if base else None)
            if index is None:
                raise GenbrainInputError(f"config key 'modalities.{name}.index' is required "
                                         "for a new modality (use 34 or above)")
            clamp = spec.get("clamp", base.clamp if base else None)
            mods[name] = Modality(
                name=name,
                index=int(index),
                clamp=tuple(clamp) if clamp is not None else None,
                norm=spec.get("norm", base.norm if base else "zscore"),
                mean=float(spec.get("mean", base.mean if base else 0.0)),
                std=float(spec.get("std", base.std if base else 1.0)),
                description=spec.get("description", base.description if base else ""),
            )
        return ModalityRegistry(mods.values())


DEFAULT_REGISTRY = ModalityRegistry(_ukb_default())


def registry_from_config(config: Mapping | None) -> ModalityRegistry:
    """The default 34-modality registry extended/overridden by ``config['modalities']``."""
    extra = (config or {}).get("modalities") or {}
    return DEFAULT_REGISTRY.extended(extra) if extra else DEFAULT_REGISTRY
