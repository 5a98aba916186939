"""genbrain: the computational core of genbrain-pipeline.

Everything that computes lives here so that it can be tested without Snakemake.
The package never imports snakemake and never touches the network.

Architecture
------------
A *stage* is one step of the pipeline: one ``rules/<stage>.smk``, the code its scripts
(``workflow/scripts/``) call, its folder(s) under ``results/`` and its unit tests. Every rule
also writes ``results/benchmarks/`` and its report figures under ``results/figures/``.

==========  ==========================  ======================  ==================================
stage       code (``genbrain/``)        ``results/``            ``tests/unit/``
==========  ==========================  ======================  ==================================
simulate    ``simulate/``               ``simulated/``          ``test_simulate.py``
preprocess  ``preprocess/``, ``qc.py``  ``stores/``, ``qc/``    ``test_preprocess_chunk.py``,
                                                                ``test_registration.py``,
                                                                ``test_qc.py``
pretrain    ``pretrain.py``             ``pretrain/``           ``test_pretrain.py``
finetune    ``finetune.py``             ``finetune/``,          ``test_finetune.py``
                                        ``splits/``
synthesize  ``synthesize.py``           ``synthetic/``          ``test_synthesize.py``
evaluate    ``evaluate.py``,            ``evaluate/``,          ``test_evaluate.py``,
            ``audit.py``,               ``export/``             ``test_audit.py``
            ``export.py``
bwas        ``bwas/``                   ``bwas/``               ``bwas/``
diagnosis   ``diagnosis/``              ``diagnosis/``,         ``diagnosis/``
                                        ``volumes/``
report      ``fidelity.py``,            ``fidelity/``,          ``test_fidelity.py``,
            ``provenance.py``           ``provenance/``         ``test_provenance.py``
imaging     ``imaging/``                ``imaging/``            ``imaging/``
clinical    ``clinical/``               (not wired yet)         ``clinical/``
==========  ==========================  ======================  ==================================

The DAG is planned at parse time by ``rules/common.smk`` with :mod:`genbrain.workflow` and
each stage's planner (:func:`genbrain.finetune.plan_finetunes`, :mod:`genbrain.bwas.plan`,
:mod:`genbrain.diagnosis.plan`, :mod:`genbrain.imaging.plan`): the glue above the stages, which may import any of them.

*Layers* are what several stages share: :mod:`~genbrain.errors`, :mod:`~genbrain.io`,
:mod:`~genbrain.config`, :mod:`~genbrain.tables`, :mod:`~genbrain.modalities`,
:mod:`~genbrain.space`, :mod:`~genbrain.anatomy` (atlas and tissue priors on the grid),
:mod:`~genbrain.layout`, :mod:`~genbrain.store`, :mod:`~genbrain.chunks`,
:mod:`~genbrain.covariates`, :mod:`~genbrain.conditions`, :mod:`~genbrain.splits` (every
participant splitter), :mod:`~genbrain.seeds` (every seeded stream), :mod:`~genbrain.jobs`
(per-site jobs and their path labels), :mod:`genbrain.stats` (Pearson r, bootstrap p-values, d
maps, overlap, similarity), :mod:`~genbrain.figures`, :mod:`~genbrain.precision` (when model
calls run in bf16), :mod:`~genbrain.progress` (durations in progress lines),
:mod:`genbrain.model`, :mod:`genbrain.training` (the one trainer) and :mod:`~genbrain.sampling` (the one sampler:
synthesis, the pretraining sample panel and the paired-sample checks).

The rule: **stages never import stages; stages import layers** (and layers import no stage).
What two stages need moves down into a layer (``tests/unit/test_stage_imports.py``).
"""

from genbrain.errors import GenbrainInputError

__all__ = ["GenbrainInputError"]
__version__ = "0.1.0"
