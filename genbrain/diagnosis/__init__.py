"""The cross-site diagnosis stage (paper Fig. 6a-b): per training site, a LightGBM classifier
of regional volumes, real-only, augmented with the site's disease-conditioned synthetic images,
and on ComBat-harmonised features, evaluated within and across sites. Rules:
``rules/diagnosis.smk``.

- :mod:`genbrain.diagnosis.plan`: the stage's planning (``plan_diagnosis``, at DAG build
  time), the synthetic pools, the per-site sweep and the summary.
- :mod:`genbrain.diagnosis.classify`: splits, the LightGBM sweep over synthetic:real ratios,
  bootstrap CIs and SHAP.
- :mod:`genbrain.diagnosis.figures`: the stage's figures, drawn from the tidy tables.
- :mod:`genbrain.diagnosis.volumes`: regional volumes (WMH-SynthSeg's 32 structures).
- :mod:`genbrain.diagnosis.harmonize`: ComBat harmonisation of the features.
"""
