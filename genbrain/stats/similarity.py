"""Age/sex similarity (the paper's Fig. 2a): do small cohorts carry the population's patterns?

Definitions (DESIGN.md section 7):

- For a cohort of n images, the **t-map** of a covariate y (age in years; sex coded M = 0,
  F = 1) is, per voxel, the t statistic of the Pearson correlation r between intensity and y:
  ``t = r * sqrt((n - 2) / (1 - r**2))`` (the marginal association, not a partial one; the
  paper's "voxel-wise t-statistic maps between image intensity and age/sex"). A voxel whose
  intensity is constant across the cohort gets r = 0 (no measurable association).
- The **similarity** of a cohort with a reference cohort is the cosine similarity of their
  t-maps over all voxels of the vectors (or a mask).
- The **protocol** for one modality: five non-overlapping real cohorts of n = 100 from the
  hold-out, synthetic cohorts with the same ages and sexes (single samples, and the mean of
  k = 5 samples per subject), each compared with the t-maps of a large real reference cohort
  (paper: 18,345 pretraining subjects). ``relative_to_real`` = 100 * cosine / mean cosine of
  the real cohorts, so the mean over a kind's replicates is the paper's "relative similarity
  score" (mean synthetic / mean real, in %).

Everything is vectorised over voxels (one matrix product per voxel chunk for both
covariates) and streamed over voxel chunks, so a memory-mapped reference cohort of any size
is read once in blocks of bounded size.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sstats

from genbrain.covariates import SEXES
from genbrain.errors import GenbrainInputError
from genbrain.stats.rows import ImageRows
from genbrain.store import ImageStore

log = logging.getLogger(__name__)

EFFECTS = ("age", "sex")
KINDS = ("real", "synthetic", "synthetic_avg")
SEX_CODES = {s: float(i) for i, s in enumerate(SEXES)}  # the model's coding: M = 0, F = 1
COLUMNS = ["modality", "effect", "kind", "replicate", "n", "cosine", "relative_to_real"]


def sex_codes(sex: Sequence | pd.Series, source: str = "covariates") -> np.ndarray:
    """(n,) float64 codes of a sex column: M = 0, F = 1 (0/1 numbers are taken as codes)."""
    values = pd.Series(sex).reset_index(drop=True)
    codes = values.map(lambda s: SEX_CODES.get(s, SEX_CODES.get(str(s).strip().upper(),
                                                                s if s in (0, 1) else None)))
    bad = codes.isna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise GenbrainInputError(f"{source}: row {i + 1}: sex '{values.iloc[i]}' is not M or F")
    return codes.to_numpy(np.float64)


@dataclass
class Cohort:
    """A cohort's images and covariates, one covariate row per member (same order).

    ``images`` reads the members (see :class:`ImageRows`: an array, store rows, or k-sample
    averages); ``covariates`` has at least ``age`` (years) and ``sex`` (M/F), and
    ``participant_id`` when known (used to check that cohorts do not overlap). ``label`` names
    the cohort in error messages.
    """

    images: ImageRows
    covariates: pd.DataFrame
    label: str = "cohort"

    def __post_init__(self) -> None:
        self.covariates = self.covariates.reset_index(drop=True)
        missing = [c for c in ("age", "sex") if c not in self.covariates.columns]
        if missing:
            raise GenbrainInputError(f"{self.label}: covariates lack column(s) {missing}")
        if len(self.covariates) != len(self.images):
            raise GenbrainInputError(f"{self.label}: {len(self.covariates)} covariate rows for "
                                     f"{len(self.images)} images")

    def __len__(self) -> int:
        return len(self.images)

    @classmethod
    def of(cls, images: np.ndarray | ImageStore, covariates: pd.DataFrame | None = None,
           label: str = "cohort") -> Cohort:
        """All images of an (N, V) array or a store; covariates default to the store's index."""
        if covariates is None:
            if not isinstance(images, ImageStore):
                raise GenbrainInputError(f"{label}: an image array needs a covariate table")
            covariates = images.table
        return cls(ImageRows(images), covariates, label)

    @classmethod
    def from_store(cls, store: ImageStore, selection: pd.DataFrame | None = None,
                   average_by: str | None = None, label: str | None = None) -> Cohort:
        """Members = rows of ``selection``, a subset of ``store.table`` (its index gives the
        items). With ``average_by`` (e.g. ``"participant_id"``) the rows sharing a value form one
        member, the mean of their images (k-sample averaging; every group must hold the same
        number of rows and one age and sex)."""
        label = label or str(store.index_path)
        sel = store.table if selection is None else selection
        if not sel.index.isin(store.table.index).all():
            raise GenbrainInputError(f"{label}: the selection is not a subset of the store index")
        if average_by is None:
            return cls(ImageRows(store, sel.index.to_numpy()), sel, label)
        if average_by not in sel.columns:
            raise GenbrainInputError(f"{label}: no column '{average_by}' to average over")
        groups = sel.groupby(average_by, sort=False)
        sizes = groups.size()
        if sizes.nunique() > 1:
            raise GenbrainInputError(f"{label}: groups of '{average_by}' hold {sizes.min()} to "
                                     f"{sizes.max()} images; averaging needs equal k")
        varying = groups[["age", "sex"]].nunique().max()
        if (varying > 1).any():
            raise GenbrainInputError(f"{label}: images averaged into one member (same "
                                     f"'{average_by}') differ in age or sex")
        items = np.stack([g.index.to_numpy() for _, g in groups])
        return cls(ImageRows(store, items), groups.head(1), label)

    def subset(self, members: np.ndarray | Sequence[int], label: str | None = None) -> Cohort:
        """Some members of this cohort (positions 0..n-1)."""
        members = np.asarray(members, dtype=np.int64)
        return Cohort(self.images.subset(members), self.covariates.iloc[members],
                      label or self.label)


def t_from_r(r: np.ndarray, n: int) -> np.ndarray:
    """t statistic (n - 2 degrees of freedom) of Pearson correlations ``r`` over ``n`` pairs.
    |r| = 1 is clipped just below 1 so a perfect fit gives a large finite t, not inf."""
    r = np.clip(np.asarray(r, dtype=np.float64), -1 + 1e-12, 1 - 1e-12)
    return r * np.sqrt((n - 2) / (1.0 - r * r))


def _chunk_for(n_rows: int, n_voxels: int, memory_mb: float) -> int:
    """Voxels per chunk so that ~3 float64 copies of an (n_rows, chunk) block fit the budget."""
    return int(np.clip(memory_mb * 2**20 // (24 * max(n_rows, 1)), 256, max(n_voxels, 1)))


def correlation_maps(images: ImageRows, y: np.ndarray, chunk_voxels: int | None = None,
                     memory_mb: float = 512) -> np.ndarray:
    """Pearson r of every voxel with every column of ``y`` -> (q, V) float64.

    images: n members of V voxels; y: (n,) or (n, q) covariates. Streamed over voxel chunks of
    ``chunk_voxels`` (default: what ``memory_mb`` allows); each chunk is centred exactly (two
    passes over an in-memory block), so results do not depend on the chunk size. Voxels or
    covariates without variance give r = 0.
    """
    y = np.asarray(y, dtype=np.float64)
    y = y[:, None] if y.ndim == 1 else y
    n, v = len(images), images.n_voxels
    if y.shape[0] != n:
        raise ValueError(f"y has {y.shape[0]} rows for {n} images")
    yc = y - y.mean(axis=0)
    y_norm = np.sqrt((yc * yc).sum(axis=0))  # (q,)
    y_unit = np.divide(yc, y_norm, out=np.zeros_like(yc), where=y_norm > 0)  # (n, q)
    chunk = chunk_voxels or _chunk_for(n * images.k, v, memory_mb)
    r = np.empty((y.shape[1], v), dtype=np.float64)
    for start in range(0, v, chunk):
        x = images.read(slice(None), slice(start, min(start + chunk, v)))  # (n, c) float64
        x -= x.mean(axis=0)
        x_norm = np.sqrt(np.einsum("ij,ij->j", x, x))  # (c,)
        num = y_unit.T @ x  # (q, c): one product for all covariates
        r[:, start:start + x.shape[1]] = np.divide(num, x_norm, out=np.zeros_like(num),
                                                   where=x_norm > 0)
    return np.clip(r, -1.0, 1.0)


def tmaps(cohort: Cohort, chunk_voxels: int | None = None, memory_mb: float = 512) -> np.ndarray:
    """(2, V) t-maps of age and of sex (rows in :data:`EFFECTS` order) for a cohort of n >= 3."""
    n = len(cohort)
    if n < 3:
        raise GenbrainInputError(f"{cohort.label}: a t-map needs at least 3 images, got {n}")
    age = pd.to_numeric(cohort.covariates["age"], errors="coerce").to_numpy(np.float64)
    if not np.isfinite(age).all():
        i = int(np.flatnonzero(~np.isfinite(age))[0])
        raise GenbrainInputError(f"{cohort.label}: row {i + 1}: age "
                                 f"'{cohort.covariates['age'].iloc[i]}' is not a number")
    y = np.column_stack([age, sex_codes(cohort.covariates["sex"], cohort.label)])
    for name, col in zip(EFFECTS, y.T):
        if np.ptp(col) == 0:
            log.warning("%s: %s is constant; its t-map is zero and its similarity undefined",
                        cohort.label, name)
    return t_from_r(correlation_maps(cohort.images, y, chunk_voxels, memory_mb), n)


def cosine_similarity(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Cosine of the angle between two maps (V,), optionally inside a boolean mask (V,);
    NaN when either map is zero there."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if mask is not None:
        a, b = a[mask], b[mask]
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else float("nan")


def draw_cohorts(n_pool: int, n: int, n_cohorts: int = 5, seed: int = 0) -> list[np.ndarray]:
    """``n_cohorts`` non-overlapping cohorts of ``n`` members drawn without replacement from a
    pool of ``n_pool`` (positions, each sorted), by a generator seeded with ``seed``."""
    if n < 3 or n_cohorts < 1:
        raise GenbrainInputError(f"similarity cohorts need n >= 3 and at least one cohort, got "
                                 f"n = {n}, n_cohorts = {n_cohorts}")
    if n * n_cohorts > n_pool:
        raise GenbrainInputError(f"{n_cohorts} non-overlapping cohorts of {n} need "
                                 f"{n * n_cohorts} images; the real pool holds {n_pool}")
    picked = np.random.default_rng(seed).permutation(n_pool)[: n * n_cohorts]
    return [np.sort(c) for c in picked.reshape(n_cohorts, n)]


def _check_mirrors(synth: Cohort, real: Cohort) -> None:
    """A synthetic cohort must carry the ages and sexes of the real cohort it mirrors."""
    def key(c: Cohort) -> np.ndarray:
        k = np.column_stack([sex_codes(c.covariates["sex"], c.label),
                             c.covariates["age"].to_numpy(np.float64)])
        return k[np.lexsort(k.T[::-1])]

    if len(synth) != len(real) or not np.allclose(key(synth), key(real), atol=1e-6):
        raise GenbrainInputError(f"{synth.label}: does not carry the ages and sexes of "
                                 f"{real.label} ({len(synth)} vs {len(real)} members)")


def _check_disjoint(reference: Cohort, real: Sequence[Cohort]) -> None:
    if "participant_id" not in reference.covariates.columns:
        return
    ref_ids = set(reference.covariates["participant_id"])
    for c in real:
        if "participant_id" in c.covariates.columns:
            both = sorted(ref_ids.intersection(c.covariates["participant_id"]))
            if both:
                raise GenbrainInputError(f"{c.label}: {len(both)} participants (e.g. {both[0]}) "
                                         "are also in the reference cohort; the real cohorts "
                                         "must come from outside it (the hold-out)")


def similarity_protocol(modality: str, reference: Cohort, real: Cohort | Sequence[Cohort],
                        synthetic: Sequence[Cohort] = (), synthetic_avg: Sequence[Cohort] = (),
                        *, n: int = 100, n_cohorts: int = 5, seed: int = 0,
                        chunk_voxels: int | None = None, memory_mb: float = 512,
                        check_mirrors: bool = True) -> pd.DataFrame:
    """The paper's age/sex similarity for one modality -> tidy table with columns
    :data:`COLUMNS` (modality, effect, kind, replicate, n, cosine, relative_to_real).

    ``real`` is either the real cohorts already drawn (e.g. with :func:`draw_cohorts`, as the
    synthesis stage does to mirror them) or one real pool to draw ``n_cohorts`` non-overlapping
    cohorts of ``n`` from with ``seed``. ``synthetic[i]`` / ``synthetic_avg[i]`` mirror real
    cohort i (same ages and sexes; checked unless ``check_mirrors`` is False). Every cohort's
    t-maps are compared with the reference cohort's by cosine similarity.
    """
    if isinstance(real, Cohort):
        real = [real.subset(m, f"{real.label} real cohort {i}")
                for i, m in enumerate(draw_cohorts(len(real), n, n_cohorts, seed))]
    real = list(real)
    if not real:
        raise GenbrainInputError(f"{modality}: the similarity protocol needs real cohorts")
    _check_disjoint(reference, real)
    for kind, cohorts in (("synthetic", synthetic), ("synthetic_avg", synthetic_avg)):
        if len(cohorts) > len(real):
            raise GenbrainInputError(f"{modality}: {len(cohorts)} {kind} cohorts for "
                                     f"{len(real)} real ones")
        if check_mirrors:
            for s, r in zip(cohorts, real):
                _check_mirrors(s, r)
    ref = tmaps(reference, chunk_voxels, memory_mb)
    v = ref.shape[1]
    rows = []
    for kind, cohorts in (("real", real), ("synthetic", synthetic),
                          ("synthetic_avg", synthetic_avg)):
        for i, cohort in enumerate(cohorts):
            if cohort.images.n_voxels != v:
                raise GenbrainInputError(f"{cohort.label}: {cohort.images.n_voxels} voxels per "
                                         f"image, the reference cohort has {v}")
            t = tmaps(cohort, chunk_voxels, memory_mb)
            for e, effect in enumerate(EFFECTS):
                rows.append((modality, effect, kind, i, len(cohort),
                             cosine_similarity(t[e], ref[e])))
    table = pd.DataFrame(rows, columns=COLUMNS[:-1])
    real_mean = table[table["kind"] == "real"].groupby("effect")["cosine"].mean()
    table["relative_to_real"] = 100.0 * table["cosine"] / table["effect"].map(real_mean)
    return table


def summarise_similarity(table: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Per (modality, effect, kind): replicates, mean and sd of the cosine, its ``level`` CI
    over replicates (t distribution; the paper's error bars), and the mean relative score (%)."""
    def one(g: pd.DataFrame) -> pd.Series:
        c = g["cosine"].to_numpy(np.float64)
        m, sd = float(np.mean(c)), float(np.std(c, ddof=1)) if len(c) > 1 else float("nan")
        half = sstats.t.ppf(0.5 + level / 2, len(c) - 1) * sd / np.sqrt(len(c)) if len(c) > 1 \
            else float("nan")
        return pd.Series({"replicates": len(c), "cosine_mean": m, "cosine_sd": sd,
                          "ci_low": m - half, "ci_high": m + half,
                          "relative_to_real": float(g["relative_to_real"].mean())})

    keys = ["modality", "effect", "kind"]
    out = table.groupby(keys, sort=False)[["cosine", "relative_to_real"]].apply(one)
    return out.reset_index()
