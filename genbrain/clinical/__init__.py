"""Clinical-score regression (paper Fig. 6c-f): a 3D ResNet predicts a clinical score (NIHSS,
WAB-AQ) from one image per subject, with its training set augmented by synthetic images at each
synthetic:real ratio. Engines, not yet wired into the workflow.

- :mod:`genbrain.clinical.regress`: the regressor, its training and the augmentation sweep.
- :mod:`genbrain.clinical.figures`: the sweep's figures and the matched real/synthetic pairs.
"""
