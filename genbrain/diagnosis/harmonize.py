"""ComBat harmonisation of regional features: the baseline a researcher would try before
synthetic augmentation (DESIGN §7), with neuroCombat (features x samples).

What is fitted, and why:

- **Covariates: age and sex, never the diagnosis.** With class balance differing by site, a
  diagnosis covariate lets ComBat write label information into the features of the very
  subjects being classified (Nieto et al., arXiv 2410.19643); the covariate table is built
  here from the ``age`` and ``sex`` columns only (:data:`COVARIATES`), whatever else the
  caller's table holds.
- **Transductive, one fit per (training site, target site) pair.** ComBat cannot harmonise a
  site it never saw, so the target site's *features* (never its labels) enter the fit: the
  training site's training split plus every subject of the target site.
- **Expressed on the training site's scale.** The target site is mapped onto the training
  site's location and scale, and the training site's features stay as they are, so the
  classifier trained and selected on the training site (the sweep's real-only or augmented
  model) is the same model; only the target's features move, and the training site's
  validation, test and synthetic rows need no transformation. neuroCombat 0.2.12's own
  reference-batch option (``ref_batch``) fails under numpy 2 (it calls ``np.int``), so the
  usual pooled fit is run and its estimates re-express the target on the training site's
  scale: with m = stand.mean + mod.mean (grand mean plus age/sex effects), sigma^2 =
  var.pooled and the empirical-Bayes batch effects (gamma*, delta*), the harmonised value h
  of a target subject becomes ``m + (h - m) * sqrt(delta*_train) + gamma*_train * sigma``;
  the same formula returns every training subject's raw value exactly (checked).
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pandas as pd

from genbrain.errors import GenbrainInputError

COVARIATES = ("age", "sex")
BATCH = "batch"


def combat_covariates(table: pd.DataFrame, batch: str | np.ndarray,
                      source: str = "features") -> pd.DataFrame:
    """The covariates ComBat sees: batch, age (continuous), sex (categorical) -- nothing else,
    in particular never the diagnosis. One-line error when age or sex is missing."""
    missing = [c for c in COVARIATES if c not in table.columns]
    if missing:
        raise GenbrainInputError(f"{source}: ComBat needs column(s) {missing} (age and sex are "
                                 "its covariates)")
    if table[list(COVARIATES)].isna().any().any():
        raise GenbrainInputError(f"{source}: missing age or sex values; ComBat needs both for "
                                 "every subject")
    return pd.DataFrame({BATCH: np.broadcast_to(np.asarray(batch, dtype=object), len(table)),
                         "age": table["age"].to_numpy(np.float64),
                         "sex": table["sex"].astype(str).to_numpy()})


def combat_pair(train: pd.DataFrame, target: pd.DataFrame, features: list[str],
                train_site: str, target_site: str, eb: bool = True) -> pd.DataFrame:
    """ComBat-harmonise a target site's features onto a training site's.

    ``train``: the training site's training split; ``target``: every subject of the target
    site; both with ``features`` (volumes, mm^3), ``age`` and ``sex``. Returns the target's
    (n_target, F) features on the training site's scale (a copy of ``target`` with those
    columns replaced). The fit uses age and sex only and the training site as reference.
    """
    from neuroCombat import neuroCombat

    if len(train) < 2 or len(target) < 2:
        raise GenbrainInputError(f"ComBat {train_site} -> {target_site}: needs at least 2 "
                                 f"subjects per site, got {len(train)} and {len(target)}")
    both = pd.concat([train, target], ignore_index=True)
    covars = pd.concat([combat_covariates(train, train_site, f"ComBat, site '{train_site}'"),
                        combat_covariates(target, target_site, f"ComBat, site '{target_site}'")],
                       ignore_index=True)
    dat = both[features].to_numpy(np.float64).T  # (F, n): neuroCombat wants features x samples
    with contextlib.redirect_stdout(io.StringIO()):  # neuroCombat prints its progress
        out = neuroCombat(dat=dat, covars=covars, batch_col=BATCH, categorical_cols=["sex"],
                          continuous_cols=["age"], eb=eb)
    est = out["estimates"]
    b = list(np.asarray(est["batches"]).astype(str)).index(str(train_site))
    m = np.asarray(est["stand.mean"]) + np.asarray(est["mod.mean"])  # (F, n)
    sigma = np.sqrt(np.asarray(est["var.pooled"], np.float64)).reshape(-1, 1)  # (F, 1)
    gamma = np.asarray(est["gamma.star"])[b].reshape(-1, 1)
    delta = np.asarray(est["delta.star"])[b].reshape(-1, 1)
    on_train = m + (np.asarray(out["data"]) - m) * np.sqrt(delta) + gamma * sigma  # (F, n)
    # the training site must come back unchanged: the mapping is ComBat's own inverse there
    assert np.allclose(on_train[:, :len(train)], dat[:, :len(train)], rtol=1e-6,
                       atol=1e-6 * float(np.abs(dat).max())), "ComBat re-expression failed"
    harmonised = target.copy()
    harmonised[features] = on_train[:, len(train):].T
    return harmonised
