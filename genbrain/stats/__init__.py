"""Statistics of the evaluation stages: voxelwise maps streamed over memory-mapped cohorts.

- :mod:`genbrain.stats.correlation`: :func:`~genbrain.stats.correlation.pearson`, the one
  Pearson r of the package (NaN for a constant input).
- :mod:`genbrain.stats.resampling`: the bootstrap p-values (counting and t) and the
  augmentation sweeps' :func:`~genbrain.stats.resampling.ratio_grid`.
- :mod:`genbrain.stats.rows`: :class:`ImageRows`, (members x voxel range) blocks of an array
  or an image store (k-sample averages included), without holding a cohort in memory.
- :mod:`genbrain.stats.similarity`: age/sex t-maps, cosine similarity with a reference cohort
  and the paper's real-vs-synthetic protocol (Fig. 2a).

The memorisation audit (Fig. 2b) is :mod:`genbrain.audit`.
"""

from genbrain.stats.rows import ImageRows
from genbrain.stats.similarity import (
    Cohort,
    correlation_maps,
    cosine_similarity,
    draw_cohorts,
    sex_codes,
    similarity_protocol,
    summarise_similarity,
    t_from_r,
    tmaps,
)

__all__ = ["Cohort", "ImageRows", "correlation_maps", "cosine_similarity", "draw_cohorts",
           "sex_codes", "similarity_protocol", "summarise_similarity", "t_from_r", "tmaps"]
