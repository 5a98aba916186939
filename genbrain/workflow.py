"""Planning helpers the Snakemake files call at parse time (no snakemake import here).

:func:`load_cohorts` validates every cohort's participants table once and groups it into
(site, chunk) batches, so input functions answer in O(chunk) without re-reading tables.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from genbrain.chunks import assign_chunks
from genbrain.errors import GenbrainInputError
from genbrain.io import read_tsv
from genbrain.simulate.cohort import participants as simulated_participants
from genbrain.simulate.write import image_path
from genbrain.tables import validate_participants

SIM_ROOT = "results/simulated"


def simulated_pattern(cohort: str) -> str:
    """Where the simulator writes a cohort's images (same placeholders as real patterns)."""
    return f"{SIM_ROOT}/{cohort}/{{participant_id}}/{{participant_id}}_{{modality}}.nii.gz"


@dataclass
class Cohort:
    """One cohort: its config entry, validated table (with ``chunk``) and image pattern."""

    name: str
    spec: Mapping
    table: pd.DataFrame
    participants: str
    pattern: str
    simulated: bool
    native_sites: frozenset[str]
    _groups: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self._groups = {(str(s), int(c)): g for (s, c), g in
                        self.table.groupby(["site", "chunk"], sort=True)}

    @property
    def modalities(self) -> list[str]:
        return list(self.spec["modalities"])

    @property
    def sites(self) -> list[str]:
        return sorted(self.table["site"].unique())

    def chunks(self) -> list[tuple[str, int]]:
        """Sorted (site, chunk) pairs."""
        return sorted(self._groups)

    def rows(self, site: str, chunk: int | str) -> pd.DataFrame:
        key = (str(site), int(chunk))
        if key not in self._groups:
            raise GenbrainInputError(f"cohort '{self.name}' has no chunk {chunk} at site '{site}'")
        return self._groups[key]

    def is_native(self, site: str) -> bool:
        return self.spec.get("space") == "native" or site in self.native_sites

    def images(self, rows: pd.DataFrame) -> dict[str, dict[str, str]]:
        """participant_id -> {modality: path} for ``rows`` (pattern placeholders:
        ``{participant_id}``, ``{site}``, ``{modality}``)."""
        return {pid: {m: image_path(self.pattern, pid, site, m) for m in self.modalities}
                for pid, site in zip(rows["participant_id"], rows["site"])}

    def image_paths(self, site: str, chunk: int | str) -> list[str]:
        return [p for d in self.images(self.rows(site, chunk)).values() for p in d.values()]


def load_cohorts(config: Mapping, schema_path: str | os.PathLike,
                 chunk_size: int) -> dict[str, Cohort]:
    """Validate and chunk every cohort of a (validated) config."""
    out = {}
    for name, spec in config["cohorts"].items():
        if "simulate" in spec:
            table = simulated_participants(name, spec["simulate"], int(config["seed"]))
            participants = f"{SIM_ROOT}/{name}/participants.tsv"
            pattern = simulated_pattern(name)
            native = {s for s, v in spec["simulate"]["sites"].items() if v.get("native")}
            source = f"simulated cohort '{name}'"
        else:
            participants = spec["participants"]
            if not Path(participants).exists():
                raise GenbrainInputError(
                    f"{participants}: participants table of cohort '{name}' not found "
                    f"(config key 'cohorts.{name}.participants'; to try the pipeline without "
                    "data use --configfile config/demo.yaml)")
            table = read_tsv(participants)
            pattern = spec["images"]
            native = set(spec.get("native_sites") or [])
            source = participants
        table = validate_participants(
            table, schema_path, source,
            sites=spec.get("sites"), age_range=spec.get("age_range"),
            diagnosis_levels=spec.get("diagnosis_levels"), scores=spec.get("scores", []),
        )
        out[name] = Cohort(name=name, spec=spec, table=assign_chunks(table, chunk_size),
                           participants=participants, pattern=pattern,
                           simulated="simulate" in spec, native_sites=frozenset(native))
    return out


def pretrain_cohort(cohorts: Mapping[str, Cohort]) -> str | None:
    """The name of the cohort with role ``pretrain`` (None without one; two is an error)."""
    names = [n for n, c in cohorts.items() if c.spec["role"] == "pretrain"]
    if len(names) > 1:
        raise GenbrainInputError(f"config: cohorts {names} both have role 'pretrain'; the model "
                                 "is pretrained on one cohort (merge their tables)")
    return names[0] if names else None


@dataclass(frozen=True)
class SyntheticCohort:
    """A synthetic cohort the workflow draws: its covariate table has ``n_rows`` rows, sampled
    in shards of ``shard_size`` rows (one job each); ``real`` is the cohort whose training
    images the memorisation audit compares it with."""

    name: str
    n_rows: int
    shard_size: int
    real: str
    modalities: tuple[str, ...]
    k: int = 1

    @property
    def n_shards(self) -> int:
        return max(1, -(-self.n_rows // self.shard_size))

    def shard_rows(self, shard: int) -> slice:
        if not 0 <= shard < self.n_shards:
            raise GenbrainInputError(f"synthetic cohort '{self.name}' has shards "
                                     f"0..{self.n_shards - 1}, not {shard}")
        return slice(shard * self.shard_size, min((shard + 1) * self.shard_size, self.n_rows))


def synthetic_cohorts(config: Mapping, cohorts: Mapping[str, Cohort],
                      pretrain: str | None) -> dict[str, SyntheticCohort]:
    """The synthetic cohorts of the configured stages, sized at parse time so that shards are
    known before any job runs:

    - ``pretrain``: the evaluation cohort of the pretrained model (the paper's Fig. 2a-b): for
      each of ``n_cohorts`` hold-out cohorts of ``cohort_size``, every member's age and sex,
      every similarity modality, ``k`` samples (one row each; the evaluation averages them);
    - every ``synthesize.cohorts.<name>``: a researcher's own covariate table or grid, drawn by
      the pretrained model with ``k`` samples averaged per row
      (:func:`genbrain.covariates.cohort_covariates`)."""
    from genbrain.covariates import cohort_covariates
    from genbrain.splits import holdout_split

    if pretrain is None:
        if config["synthesize"]["cohorts"]:
            raise GenbrainInputError("config: 'synthesize.cohorts' needs a cohort with role "
                                     "'pretrain' (its model draws the images); add one, or "
                                     "set 'synthesize.cohorts: {}'")
        return {}
    sim = config["evaluate"]["similarity"]
    own = cohorts[pretrain].modalities
    mods = sim["modalities"] or own
    for m in mods:
        if m not in own:
            raise GenbrainInputError(f"config: 'evaluate.similarity.modalities' lists '{m}', "
                                     f"which the pretraining cohort '{pretrain}' lacks; "
                                     f"expected some of {own}")
    split = holdout_split(cohorts[pretrain].table, config["pretrain"]["holdout_fraction"],
                          int(config["seed"]))
    n_hold = int((split["split"] == "holdout").sum())
    need = sim["cohort_size"] * sim["n_cohorts"]
    if n_hold < need:
        raise GenbrainInputError(
            f"config: evaluate.similarity needs {sim['n_cohorts']} x {sim['cohort_size']} = "
            f"{need} hold-out participants but pretrain.holdout_fraction "
            f"{config['pretrain']['holdout_fraction']} holds out {n_hold} of cohort "
            f"'{pretrain}'; lower cohort_size or n_cohorts, or raise the fraction")
    shard_size = config["synthesize"]["shard_size"]
    n_rows = need * len(mods) * sim["k"]
    out = {"pretrain": SyntheticCohort("pretrain", n_rows, shard_size, pretrain, tuple(mods))}
    for name, spec in config["synthesize"]["cohorts"].items():
        table = cohort_covariates(name, spec, own)
        out[name] = SyntheticCohort(name, len(table), shard_size, pretrain,
                                    tuple(sorted(table["modality"].unique())), int(spec["k"]))
    return out

