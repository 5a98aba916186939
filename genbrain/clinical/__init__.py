"""Clinical-score regression (paper Fig. 6c-f): a 3D ResNet predicts a clinical score (NIHSS,
WAB-AQ) from one image per subject, with its training set augmented by synthetic images at each
synthetic:real ratio. Engines, not yet wired into the workflow.

- :mod:`genbrain.clinical.config`: a fit's settings (``RegressConfig``) and seeded streams.
- :mod:`genbrain.clinical.data`: images with a score, their split, the cropped input volumes.
- :mod:`genbrain.clinical.network`: the regressor (a MONAI 3D ResNet with a bounded head).
- :mod:`genbrain.clinical.fit`: its resumable fit (epoch chosen by validation MAE), prediction.
- :mod:`genbrain.clinical.sweep`: the synthetic:real ratio sweep, its summary and t-tests, and
  the matched real/synthetic pairs.
- :mod:`genbrain.clinical.figures`: the sweep's figures and the matched real/synthetic pairs.
"""
