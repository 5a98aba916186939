"""The BWAS stage (paper Fig. 5): per site, does a synthetic cohort from the site's
disease-conditioned fine-tune give a Cohen's d map closer to a large reference than the
site's own data? Rules: ``rules/bwas.smk``.

An analysis (config ``bwas.analyses.<name>``) names a per-site fine-tuning task conditioned
on diagnosis (``finetune.tasks.<task>`` with ``per_site: true``) and the modality to map.
For every site of it (:class:`genbrain.bwas.plan.BwasSite`):

- the **reference cohort** is every other site of the cohort pooled (the paper's "all
  remaining sites"), its d map fitted with site dummies; for VBM-like maps the analysis mask
  is the reference's mean grey matter > ``gm_threshold`` (0.2, in the modality's raw units);
- the **synthetic cohort** mirrors the reference cohort's covariates (each reference member's
  age, sex and diagnosis, one synthetic image each; ``max_synthetic`` caps its size by a
  seeded draw stratified by diagnosis), drawn by the site's fine-tune through the same
  synthesis jobs, memorisation audit and privacy gate as every synthetic cohort;
- with ``bwas.smoothing_fwhm``, every subject's map, real and synthetic alike, is smoothed
  inside the brain mask before the d maps (:mod:`genbrain.stats.smoothing`); each kernel of
  a list is its own analysis of the site (``site-<label>_fwhm-<mm>``) on the same synthetic
  cohort.

Modules:

- :mod:`genbrain.bwas.plan`: the stage's planning (``plan_bwas``, at DAG build time, no
  torch) and the synthetic cohorts' covariates.
- :mod:`genbrain.bwas.analysis`: one site's analysis (scores, truth recovery, effective
  sample size), its files and figures, and the pre-fine-tuning screen.
- :mod:`genbrain.bwas.compare`: the comparison statistics (score tables with bootstrap CIs
  and tests, agreement curve, effective sample size, concordance screen).
- :mod:`genbrain.bwas.figures`: the stage's figures and d maps as NIfTI.

The voxelwise statistics it builds on are layers, not part of the stage: Cohen's d maps
(:mod:`genbrain.stats.cohens_d`), map overlap scores (:mod:`genbrain.stats.overlap`) and
smoothing inside the brain mask (:mod:`genbrain.stats.smoothing`).
"""
