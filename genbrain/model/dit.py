"""A 1-D Diffusion Transformer (DiT) over brain voxel vectors, after facebookresearch/DiT.

Tokens. An input ``x`` of shape (N, C, V) (V in-mask voxels in voxel-vector order) is
right-padded with zeros to ``T * P`` entries, ``T = ceil(V / P)``, and a ``Conv1d(C, D, P,
stride=P)`` turns each run of P consecutive entries into one token: 228,483 voxels with P = 256
give T = 893 tokens (the last one holds 131 voxels and 125 zeros). The output is un-patchified
and cropped back to V.

Positional embedding: fixed sin-cos, stored as a buffer (in the state dict, never trained).
- ``raster2d``: tokens laid row by row on a raster 30 wide (``ceil(T/30)`` rows), embedded with
  DiT's ``get_2d_sincos_pos_embed``: the first D/2 dims encode the column, the last D/2 the row.
  This is what the GenBrain reference does; it ignores the tokens' real 3-D position.
- ``centroid3d``: each token's mean voxel coordinate (a (T, 3) array given at construction, see
  :func:`token_centroids`), one 1-D sin-cos embedding per axis; the D dims are split across the
  three axes in even-sized parts as equal as possible (for D = 64: 22 + 22 + 20).

Modality templates (optional, ``modality_templates=True``; off in the paper's presets). Each
modality's population-mean image (the mean of its training images, a buffer set with
:meth:`DiT.set_modality_template`, saved in the state dict) is patchified by its own
``Conv1d(1, D, P, stride=P)`` and added to the tokens: the modality label is then embedded as an
image as well as a vector, and every token knows the anatomy it covers. Why: a token's only other
source of position is the fixed sin-cos embedding, from which a shallow, briefly trained network
cannot build brain-specific spatial maps (the mean brain, a regional age effect); adaLN then
modulates a shared per-channel scale and shift, which with anatomy-aware tokens directly gives
effects that follow the anatomy. Measured on the demo (2 layers of width 256, 300 steps on 2 CPU
cores): the x_0 estimate's age effect correlated r = 0.51 with the true regional age map with
templates, r = 0.03-0.08 without (300-900 steps, learned positional embeddings included). A
dropped (null) modality takes a zero template, consistently in training and sampling.

Conditioning. ``c = t_emb + age_emb + sex_emb + modality_emb (+ heads)`` (N, D) drives adaLN-Zero
in every block, exactly as DiT's ``c = t + y``. Age is continuous: the caller standardises it
(z-score over the training cohort) and the embedder is Linear(1, D)-SiLU-Linear(D, D)-tanh.

Classifier-free guidance. One boolean mask per sample (p = ``label_dropout`` = 0.1 while
training, or ``force_drop`` given explicitly) drops every label of that sample together:
class-type labels (sex, modality, disease, part) take their embedding table's last row, the null
row; continuous labels (age, score) take the standardised value 0. The null age is therefore
standardised 0 both in training and at sampling, where the sampler asks for the null branch with
``force_drop`` and so goes through this same code (the reference used raw age 0 when sampling).
Extra input channels beyond the ``out_channels`` target channels (image conditioning added by
:meth:`DiT.widen_input`) are zeroed for dropped samples, so the guided null branch is one the
model was trained on.

Label tokens (optional, :meth:`DiT.add_label_tokens`; not in the paper). Through c a label only
scales and shifts channels, the same for every token, so a regional effect (a disease's map)
has to be built indirectly: the demo's disease fine-tunes carried 0-8% of the planted disease
effect into their samples (issue 28). Label tokens give the disease and score labels a spatial
path, added to the tokens after the modality templates (outside the blocks): a learned (T, D)
map per disease level (``disease_tokens``, (n_classes, T, D)) for the samples with that level,
and a (T, D) map times the standardised score (``score_tokens``). A dropped sample, a null
disease label and a label not given keep their tokens as they are, so the guided null branch is
unchanged. Both start at zero: right after the surgery the model computes exactly what it did.

Fine-tuning surgery. :meth:`DiT.add_disease_head`, :meth:`~DiT.add_score_head`,
:meth:`~DiT.add_part_head`, :meth:`~DiT.extend_modalities`, :meth:`~DiT.widen_input` and
:meth:`~DiT.add_label_tokens` add or enlarge layers whose new weights are zero, so right after
surgery the model computes exactly what the pretrained one did. Load the pretrained state dict
first, operate, then build the optimiser (surgery replaces parameters). :meth:`DiT.spec` /
:func:`dit_from_spec` rebuild a model, heads included, from a checkpoint's config before
``load_state_dict``.

Output: (N, 2 * out_channels, V): the predicted noise epsilon, then the learned-variance
interpolation ``v`` in [-1, 1] read by :class:`genbrain.model.diffusion.GaussianDiffusion`.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genbrain.errors import GenbrainInputError

log = logging.getLogger(__name__)

# Capacity: a token carries its P voxels through D dims, so with D < P (tiny: 128, nano: 64 vs
# P = 256) the noise estimate of a patch has rank <= D and, at high noise, the epsilon MSE cannot
# fall below about 1 - D/P (nano measured 0.78). tiny/nano exercise code paths and the demo's
# plumbing, not image quality; DiT(..., patch_size=16) with the same widths learns fine.
PRESETS: dict[str, dict[str, int]] = {
    "L/256": {"depth": 24, "hidden_size": 1024, "num_heads": 16, "patch_size": 256},  # paper, ~460M
    "B/256": {"depth": 12, "hidden_size": 768, "num_heads": 12, "patch_size": 256},
    "S/256": {"depth": 12, "hidden_size": 384, "num_heads": 6, "patch_size": 256},
    "demo/256": {"depth": 2, "hidden_size": 256, "num_heads": 4, "patch_size": 256},  # make demo
    "tiny/256": {"depth": 4, "hidden_size": 128, "num_heads": 4, "patch_size": 256},  # CPU tests
    "nano/256": {"depth": 2, "hidden_size": 64, "num_heads": 2, "patch_size": 256},  # unit tests
}
POS_EMBEDS = ("raster2d", "centroid3d")
RASTER_WIDTH = 30
LABEL_DROPOUT = 0.1
N_SEXES = 2
N_MODALITIES = 34
TIMESTEP_FREQUENCY_DIMS = 256  # sinusoidal features of t fed to the timestep MLP (as DiT)
#: keys :meth:`DiT.spec` gained later -> what a spec without them (an older checkpoint) means
SPEC_DEFAULTS: dict[str, Any] = {"label_tokens": False}
#: the parameters :meth:`DiT.add_label_tokens` adds (None until then)
LABEL_TOKEN_PARAMS = ("disease_tokens", "score_tokens")
#: the label heads' embedders (:meth:`DiT.add_disease_head`, :meth:`~DiT.add_score_head`): the
#: parameters whose names start so
LABEL_HEAD_PREFIXES = ("disease_embedder.", "score_embedder.")


# --------------------------------------------------------------------------------------------
# Fixed sin-cos positional embeddings (numpy float64, cast to float32 by the model)
# --------------------------------------------------------------------------------------------


def sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    """Positions (M,) -> (M, dim) embedding ``[sin(p w_k), cos(p w_k)]``, ``w_k =
    10000^(-k / (dim/2))``, k < dim/2 (DiT's ``get_1d_sincos_pos_embed_from_grid``)."""
    assert dim % 2 == 0, dim
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))  # (dim/2,)
    out = np.outer(np.asarray(pos, dtype=np.float64).reshape(-1), omega)  # (M, dim/2)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)  # (M, dim)


def raster2d_pos_embed(dim: int, n_tokens: int, width: int = RASTER_WIDTH) -> np.ndarray:
    """(T, dim) embedding of tokens laid row by row on a ``width``-wide raster: token k sits at
    column ``k % width``, row ``k // width``; first dim/2 dims encode the column and the last
    dim/2 the row, as DiT's ``meshgrid(w, h)`` ordering does."""
    if dim % 4:
        raise GenbrainInputError(
            f"raster2d positional embedding needs hidden size % 4 == 0, got {dim}")
    k = np.arange(n_tokens)
    return np.concatenate([sincos_1d(dim // 2, k % width), sincos_1d(dim // 2, k // width)], 1)


def centroid3d_pos_embed(dim: int, centroids: np.ndarray) -> np.ndarray:
    """(T, 3) token centroids (voxel units) -> (T, dim) concatenated per-axis sin-cos
    embeddings; even-sized parts as equal as possible (dim 64 -> 22 + 22 + 20)."""
    if dim % 2 or dim < 6:
        raise GenbrainInputError(
            f"centroid3d positional embedding needs an even hidden size >= 6, got {dim}")
    pairs = dim // 2
    sizes = [2 * (pairs // 3 + (i < pairs % 3)) for i in range(3)]
    return np.concatenate([sincos_1d(s, centroids[:, i]) for i, s in enumerate(sizes)], axis=1)


def token_centroids(coords: np.ndarray, patch_size: int = 256) -> np.ndarray:
    """Voxel coordinates (V, 3) in voxel-vector order (e.g. ``np.argwhere(mask)``) -> (T, 3)
    mean coordinate of the voxels of each token (padding excluded), T = ceil(V / patch_size)."""
    coords = np.asarray(coords, dtype=np.float64)
    token = np.arange(len(coords)) // patch_size  # (V,)
    counts = np.bincount(token)  # (T,)
    return np.stack([np.bincount(token, weights=coords[:, a]) / counts for a in range(3)], 1)


# --------------------------------------------------------------------------------------------
# Building blocks (DiT, with timm's Attention/Mlp written out)
# --------------------------------------------------------------------------------------------


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN modulation ``x (1 + scale) + shift`` of tokens (N, T, D) by per-sample shift/scale
    (N, 1, D). One fused pass over the tokens instead of a multiply and an add (on CPU these
    elementwise passes are a large share of a small model's time)."""
    return torch.addcmul(shift, x, 1 + scale)  # (N, T, D)


class TimestepEmbedder(nn.Module):
    """Diffusion timesteps (N,) -> (N, D): sinusoidal features, then Linear-SiLU-Linear."""

    def __init__(self, hidden_size: int,
                 frequency_embedding_size: int = TIMESTEP_FREQUENCY_DIMS):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))

    @staticmethod
    def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
        """(N,) possibly fractional timesteps -> (N, dim) ``[cos(t f), sin(t f)]``."""
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32,
                                                               device=t.device) / half)  # (dim/2,)
        args = t[:, None].float() * freqs[None]  # (N, dim/2)
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (N, dim)
        return F.pad(emb, (0, dim % 2))  # (N, dim)

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(self.timestep_embedding(t, self.frequency_embedding_size))  # (N, D)


class ContinuousEmbedder(nn.Module):
    """A standardised scalar (N,) -> (N, D): Linear(1, D)-SiLU-Linear(D, D)-tanh (age, scores)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(1, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))

    def forward(self, value: Tensor) -> Tensor:
        return torch.tanh(self.mlp(value.float().reshape(-1, 1)))  # (N, D)


class Attention(nn.Module):
    """Multi-head self-attention with qkv bias, fused via ``scaled_dot_product_attention``."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        N, T, D = x.shape
        qkv = self.qkv(x).reshape(N, T, 3, self.num_heads, D // self.num_heads)  # (N, T, 3, H, D/H)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (N, H, T, D/H)
        x = F.scaled_dot_product_attention(q, k, v)  # (N, H, T, D/H)
        return self.proj(x.transpose(1, 2).reshape(N, T, D))  # (N, T, D)


class Mlp(nn.Module):
    """Linear-GELU(tanh)-Linear feed-forward."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))  # (N, T, D)


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero conditioning."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            self.adaLN_modulation(c).unsqueeze(1).chunk(6, dim=2))  # 6 x (N, 1, D)
        # gated residuals x + gate * f(x), each one fused pass
        x = torch.addcmul(x, gate_msa, self.attn(modulate(self.norm1(x), shift_msa, scale_msa)))
        x = torch.addcmul(x, gate_mlp, self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp)))
        return x  # (N, T, D)


class FinalLayer(nn.Module):
    """adaLN then a linear map of each token to its P x C_out output values."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).unsqueeze(1).chunk(2, dim=2)  # 2 x (N, 1, D)
        return self.linear(modulate(self.norm_final(x), shift, scale))  # (N, T, P * C_out)


def _zero_embedding(n: int, like: nn.Module, dim: int) -> nn.Embedding:
    p = next(like.parameters())
    emb = nn.Embedding(n, dim, device=p.device, dtype=p.dtype)
    nn.init.zeros_(emb.weight)  # zero-init: a new head adds nothing until it is trained
    return emb


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


class DiT(nn.Module):
    """Diffusion transformer over voxel vectors; see the module docstring.

    Args:
        n_voxels: V, the voxel-vector length (228,483 for the 2 mm MNI mask).
        hidden_size, depth, num_heads, patch_size, mlp_ratio: architecture (see ``PRESETS``).
        in_channels: input channels (target channels + image-conditioning channels).
        out_channels: target channels C_out; the output has 2 * C_out (epsilon, variance).
        n_modalities: rows of the modality table, excluding the null row.
        pos_embed: ``"raster2d"`` or ``"centroid3d"``.
        token_centroids: (T, 3) mean voxel coordinates per token, needed for ``centroid3d``.
        label_dropout: probability of dropping all labels of a sample while training (CFG).
        modality_templates: embed each modality's mean image into the tokens (see the module
            docstring); the images start at zero and are set with :meth:`set_modality_template`.
    """

    #: the voxel layout record (``config["layout"]``, :mod:`genbrain.layout`) of the checkpoint
    #: the model was loaded from (set by ``load_for_sampling``); None = none recorded (standard)
    voxel_layout: dict[str, Any] | None = None

    def __init__(self, n_voxels: int, *, hidden_size: int, depth: int, num_heads: int,
                 patch_size: int = 256, mlp_ratio: float = 4.0, in_channels: int = 1,
                 out_channels: int = 1, n_modalities: int = N_MODALITIES,
                 pos_embed: str = "raster2d", token_centroids: Any = None,
                 label_dropout: float = LABEL_DROPOUT, modality_templates: bool = False):
        super().__init__()
        if pos_embed not in POS_EMBEDS:
            raise GenbrainInputError(
                f"pos_embed '{pos_embed}' is unknown; expected one of: {', '.join(POS_EMBEDS)}")
        if in_channels < out_channels:
            raise GenbrainInputError(f"in_channels ({in_channels}) < out_channels ({out_channels})")
        self.n_voxels, self.patch_size = n_voxels, patch_size
        self.n_tokens = math.ceil(n_voxels / patch_size)
        self.hidden_size, self.depth, self.num_heads = hidden_size, depth, num_heads
        self.mlp_ratio = mlp_ratio
        self.in_channels, self.out_channels = in_channels, out_channels
        self.label_dropout = label_dropout
        self.pos_embed_kind = pos_embed
        self.token_centroids: np.ndarray | None = None  # (T, 3), kept for spec()

        self.x_embedder = nn.Conv1d(in_channels, hidden_size, patch_size, stride=patch_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.age_embedder = ContinuousEmbedder(hidden_size)
        self.sex_embedder = nn.Embedding(N_SEXES + 1, hidden_size)  # last row = null
        self.modality_embedder = nn.Embedding(n_modalities + 1, hidden_size)  # last row = null
        for name in ("disease_embedder", "score_embedder", "part_embedder"):
            self.register_module(name, None)  # fine-tuning heads, added by surgery
        # spatial maps of the disease and score heads (add_label_tokens); every head added
        # after that surgery gets its own
        self.label_tokens = False
        for name in LABEL_TOKEN_PARAMS:
            self.register_parameter(name, None)

        if pos_embed == "raster2d":
            pe = raster2d_pos_embed(hidden_size, self.n_tokens)
        else:
            if token_centroids is None:
                raise GenbrainInputError(
                    "pos_embed 'centroid3d' needs token_centroids, a (T, 3) array")
            cen = np.asarray(token_centroids.cpu() if isinstance(token_centroids, Tensor)
                             else token_centroids, dtype=np.float64)
            if cen.shape != (self.n_tokens, 3):
                raise GenbrainInputError(
                    f"token_centroids has shape {cen.shape}; expected ({self.n_tokens}, 3) "
                    f"for {n_voxels} voxels and patch size {patch_size}")
            pe = centroid3d_pos_embed(hidden_size, cen)
            self.token_centroids = cen
        # A buffer: saved with the weights (centroids included) but never trained.
        pe = torch.tensor(pe, dtype=torch.float32).unsqueeze(0)  # (1, T, D)
        self.register_buffer("pos_embed", pe)

        self.template_embedder: nn.Conv1d | None = None
        if modality_templates:  # row m = modality m's mean image; the last (null) row stays 0
            self.register_buffer("modality_templates",
                                 torch.zeros(n_modalities + 1, n_voxels))  # (M + 1, V)
            self.template_embedder = nn.Conv1d(1, hidden_size, patch_size, stride=patch_size,
                                               bias=False)  # x_embedder's bias serves both
        else:
            self.modality_templates = None

        self.blocks = nn.ModuleList(
            [DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, 2 * out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's initialisation (the reasons are in the comments)."""
        def _basic_init(m: nn.Module) -> None:
            if isinstance(m, nn.Linear):  # xavier keeps activations' scale through the depth
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        self.apply(_basic_init)
        w = self.x_embedder.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # patch embed is a linear map of a patch
        nn.init.zeros_(self.x_embedder.bias)
        if self.template_embedder is not None:  # a patch embedding too: the same init
            w = self.template_embedder.weight.data
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        for emb in (self.sex_embedder, self.modality_embedder):
            nn.init.normal_(emb.weight, std=0.02)  # label tables: DiT's small normal init
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)  # as DiT's timestep MLP
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        # age MLP keeps xavier: its input is one scalar, and 0.02 would make age vanish beside t.
        for block in self.blocks:  # adaLN-Zero: each block starts as the identity
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        # zero output layer: the untrained model predicts eps = 0 and v = 0 (mid-range variance)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    # ---------------------------------------------------------------- conditioning
    def drop_mask(self, n: int, device: torch.device, force_drop: Tensor | None = None,
                  generator: torch.Generator | None = None) -> Tensor:
        """(n,) bool: which samples lose all their labels. ``force_drop`` wins; otherwise
        Bernoulli(``label_dropout``) in training mode (drawn from ``generator``), else none."""
        if force_drop is not None:
            return force_drop.to(device=device, dtype=torch.bool).reshape(n)
        if self.training and self.label_dropout > 0:
            gdev = generator.device if generator is not None else device
            return (torch.rand(n, generator=generator, device=gdev) < self.label_dropout).to(device)
        return torch.zeros(n, dtype=torch.bool, device=device)

    @staticmethod
    def _class_label(emb: nn.Embedding, label: Tensor | None, drop: Tensor) -> Tensor:
        null = torch.full_like(drop, emb.num_embeddings - 1, dtype=torch.long)  # (N,)
        return emb(null if label is None else torch.where(drop, null, label.long().reshape(-1)))

    @staticmethod
    def _value_label(emb: nn.Module, value: Tensor | None, drop: Tensor) -> Tensor:
        value = torch.zeros(drop.shape, device=drop.device) if value is None else value.reshape(-1)
        return emb(torch.where(drop, torch.zeros_like(value), value))  # null = standardised 0

    def condition(self, t: Tensor, age: Tensor, sex: Tensor, modality: Tensor, *,
                  disease: Tensor | None = None, score: Tensor | None = None,
                  part: Tensor | None = None, force_drop: Tensor | None = None,
                  generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Labels (each (N,)) -> conditioning vector c (N, D) and the drop mask (N,) bool.
        Age and score are standardised floats; a head label left ``None`` is null for all."""
        for name, label in (("disease", disease), ("score", score), ("part", part)):
            if label is not None and getattr(self, f"{name}_embedder") is None:
                raise GenbrainInputError(f"label '{name}' given but the model has no {name} head")
        drop = self.drop_mask(t.shape[0], t.device, force_drop, generator)  # (N,)
        c = (self.t_embedder(t)  # (N, D)
             + self._value_label(self.age_embedder, age, drop)
             + self._class_label(self.sex_embedder, sex, drop)
             + self._class_label(self.modality_embedder, modality, drop))
        if self.disease_embedder is not None:
            c = c + self._class_label(self.disease_embedder, disease, drop)
        if self.score_embedder is not None:
            c = c + self._value_label(self.score_embedder, score, drop)
        if self.part_embedder is not None:
            c = c + self._class_label(self.part_embedder, part, drop)
        return c, drop

    # ---------------------------------------------------------------- forward
    def unpatchify(self, x: Tensor) -> Tensor:
        """Tokens (N, T, P * C) -> voxel vectors (N, C, V), padding cropped."""
        N, T, _ = x.shape
        x = x.reshape(N, T, self.patch_size, -1).permute(0, 3, 1, 2)  # (N, C, T, P)
        return x.reshape(N, x.shape[1], T * self.patch_size)[..., : self.n_voxels]  # (N, C, V)

    def forward(self, x: Tensor, t: Tensor, age: Tensor, sex: Tensor, modality: Tensor, *,
                disease: Tensor | None = None, score: Tensor | None = None,
                part: Tensor | None = None, force_drop: Tensor | None = None,
                generator: torch.Generator | None = None) -> Tensor:
        """Noisy voxel vectors x (N, C_in, V), timesteps t (N,) in the original 0..999 scale,
        labels (N,) -> (N, 2 * C_out, V): predicted epsilon then variance interpolation v."""
        _N, C, V = x.shape
        if C != self.in_channels or V != self.n_voxels:
            raise GenbrainInputError(f"DiT input has shape {tuple(x.shape)}; expected "
                                     f"(N, {self.in_channels}, {self.n_voxels})")
        c, drop = self.condition(t, age, sex, modality, disease=disease, score=score, part=part,
                                 force_drop=force_drop, generator=generator)  # (N, D), (N,)
        if C > self.out_channels:  # image-conditioning channels are dropped with the labels
            cond = x[:, self.out_channels:]  # (N, C_in - C_out, V)
            cond = torch.where(drop[:, None, None], torch.zeros_like(cond), cond)
            x = torch.cat([x[:, : self.out_channels], cond], dim=1)  # (N, C_in, V)
        x = F.pad(x, (0, self.n_tokens * self.patch_size - V))  # (N, C_in, T * P)
        # contiguous (N, T, D): the transposed conv output would otherwise set the layout of the
        # whole residual stream (elementwise ops keep their first input's strides), and every
        # LayerNorm and Linear would copy it
        x = self.x_embedder(x).transpose(1, 2).contiguous() + self.pos_embed  # (N, T, D)
        if self.template_embedder is not None:
            null = self.modality_templates.shape[0] - 1
            rows = torch.where(drop, null, modality.long().reshape(-1))  # dropped: zero image
            tmpl = F.pad(self.modality_templates[rows].unsqueeze(1),
                         (0, self.n_tokens * self.patch_size - V))  # (N, 1, T * P)
            x = x + self.template_embedder(tmpl.to(x.dtype)).transpose(1, 2)  # (N, T, D)
        x = self._add_label_tokens(x, drop, disease, score)  # (N, T, D)
        x = self._run_blocks(x, c)  # (N, T, D)
        x = self.final_layer(x, c)  # (N, T, P * 2 * C_out)
        return self.unpatchify(x)  # (N, 2 * C_out, V)

    def _add_label_tokens(self, x: Tensor, drop: Tensor, disease: Tensor | None,
                          score: Tensor | None) -> Tensor:
        """Tokens (N, T, D) plus each sample's label tokens (:meth:`add_label_tokens`).
        Dropped samples, the null disease label and labels not given keep their tokens
        bitwise (``where``, not an added zero), so the guided null branch is unchanged."""
        if self.disease_tokens is not None and disease is not None:
            n = self.disease_tokens.shape[0]
            label = disease.long().reshape(-1)  # (N,)
            keep = ~drop & (label < n)  # index n is the null row: no tokens
            # F.embedding of the flattened table, not advanced indexing: the indexing's
            # backward (index_put_ accumulate) made fine-tunes with label tokens differ between
            # two runs on a CPU (weights 1.8e-5 apart at 120 steps); embedding's does not
            tok = F.embedding(label.clamp(0, n - 1), self.disease_tokens.flatten(1))
            tok = tok.view(-1, *self.disease_tokens.shape[1:]).to(x.dtype)  # (N, T, D)
            x = torch.where(keep[:, None, None], x + tok, x)
        if self.score_tokens is not None and score is not None:
            s = score.reshape(-1, 1, 1).to(x.dtype)  # (N, 1, 1) standardised
            x = torch.where(~drop[:, None, None],
                            torch.addcmul(x, s, self.score_tokens.to(x.dtype)), x)
        return x  # (N, T, D)

    # ---------------------------------------------------------------- torch.compile
    @property
    def blocks_compiled(self) -> bool:
        """Whether the DiT blocks run through ``torch.compile`` (:meth:`compile_blocks`)."""
        return any(b._compiled_call_impl is not None for b in self.blocks)

    def compile_blocks(self, enabled: bool | None = None, **options: Any) -> bool:
        """Run every DiT block through ``torch.compile`` (``enabled`` True; None = only when
        the model's weights are on CUDA) or eager again (False); ``options`` go to
        ``torch.compile``. Returns whether the blocks are now compiled.

        The blocks, not the whole model: they hold nearly all the compute (1.39x for L/256 on an
        H200). ``nn.Module.compile`` compiles each block's call in place, so the state dict keeps
        its keys (no ``_orig_mod.`` prefix) and checkpoints do not depend on the option.
        Compilation happens at the first call with a new input shape; where it fails (no C
        compiler, no Triton) that call logs one warning and the blocks run eager from then on.
        """
        if enabled is None:
            enabled = next(self.parameters()).is_cuda
        if not enabled:
            for block in self.blocks:
                block._compiled_call_impl = None  # what nn.Module.compile set: eager again
            return False
        if not self.blocks_compiled:
            try:
                for block in self.blocks:
                    block.compile(**options)
            except (RuntimeError, ImportError) as err:  # e.g. an unsupported Python version
                self._compile_failed(err)
        return self.blocks_compiled

    def _compile_failed(self, err: Exception) -> None:
        lines = [line.strip() for line in str(err).splitlines()
                 if line.strip() and not line.startswith("Set TORCHDYNAMO_VERBOSE")]
        log.warning("torch.compile of the DiT blocks failed, running them eager: %s: %s",
                    type(err).__name__, " ".join(lines)[:300])
        self.compile_blocks(False)

    def _run_blocks(self, x: Tensor, c: Tensor) -> Tensor:
        """Tokens (N, T, D) through every block, conditioned on c (N, D)."""
        if self.blocks_compiled:
            try:
                h = x
                for block in self.blocks:
                    h = block(h, c)  # (N, T, D)
                return h
            except Exception as err:
                from torch._dynamo.exc import TorchDynamoException  # loaded by the compile
                if not isinstance(err, TorchDynamoException):
                    raise
                self._compile_failed(err)
        for block in self.blocks:
            x = block(x, c)  # (N, T, D)
        return x

    # ---------------------------------------------------------------- fine-tuning surgery
    def add_disease_head(self, n_classes: int) -> None:
        """Add a zero-initialised disease-label table (n_classes + null row), and its label
        tokens when the model has them."""
        self.disease_embedder = _zero_embedding(n_classes + 1, self, self.hidden_size)
        if self.label_tokens:
            self.disease_tokens = self._zero_tokens(n_classes)

    def add_part_head(self, n_parts: int) -> None:
        """Add a zero-initialised part-label table (n_parts + null row)."""
        self.part_embedder = _zero_embedding(n_parts + 1, self, self.hidden_size)

    def add_score_head(self) -> None:
        """Add a continuous (standardised) score embedder whose last Linear is zero."""
        p = next(self.parameters())
        head = ContinuousEmbedder(self.hidden_size).to(device=p.device, dtype=p.dtype)
        nn.init.xavier_uniform_(head.mlp[0].weight)  # as the age embedder
        nn.init.zeros_(head.mlp[0].bias)
        nn.init.zeros_(head.mlp[2].weight)  # zero-init: tanh(0) = 0 adds nothing until trained
        nn.init.zeros_(head.mlp[2].bias)
        self.score_embedder = head
        if self.label_tokens:
            self.score_tokens = self._zero_tokens()

    def add_label_tokens(self) -> None:
        """Give the disease and score heads label tokens (see the module docstring): a
        zero-initialised ``disease_tokens`` (n_classes, T, D) and ``score_tokens`` (T, D), so the
        model's outputs are unchanged until they train. Heads added later get theirs too."""
        if self.disease_embedder is None and self.score_embedder is None:
            raise GenbrainInputError("add_label_tokens needs a disease or score head; add the "
                                     "head first")
        self.label_tokens = True
        if self.disease_embedder is not None and self.disease_tokens is None:
            self.disease_tokens = self._zero_tokens(self.disease_embedder.num_embeddings - 1)
        if self.score_embedder is not None and self.score_tokens is None:
            self.score_tokens = self._zero_tokens()

    def _zero_tokens(self, *rows: int) -> nn.Parameter:
        """A zero (*rows, T, D) parameter on the model's device and dtype."""
        p = next(self.parameters())
        # zero-init: the tokens add nothing until they are trained
        return nn.Parameter(torch.zeros(*rows, self.n_tokens, self.hidden_size,
                                        device=p.device, dtype=p.dtype))

    def set_modality_template(self, index: int, image: Tensor | np.ndarray) -> None:
        """Store modality ``index``'s mean image (V,) (in the model's data space)."""
        if self.modality_templates is None:
            raise GenbrainInputError("this model was built without modality_templates")
        n_mod = self.modality_templates.shape[0] - 1
        if not 0 <= index < n_mod:
            raise GenbrainInputError(f"modality index {index} is outside the model's table "
                                     f"(0..{n_mod - 1})")
        image = torch.as_tensor(np.asarray(image, dtype=np.float32)).reshape(-1)
        if image.shape[0] != self.n_voxels:
            raise GenbrainInputError(f"modality template has {image.shape[0]} voxels; the model "
                                     f"has {self.n_voxels}")
        with torch.no_grad():
            self.modality_templates[index] = image.to(self.modality_templates.device)

    def has_modality_template(self, index: int) -> bool:
        """Whether modality ``index``'s template has been set (a zero image counts as unset)."""
        return self.modality_templates is not None and bool(
            self.modality_templates[index].abs().max() > 0)

    def extend_modalities(self, n_new: int) -> None:
        """Grow the modality table by ``n_new`` rows (indices n_old..n_old+n_new-1), keeping the
        pretrained rows; new rows start at zero; the null row moves to the new last index."""
        old = self.modality_embedder
        n_old = old.num_embeddings - 1
        new = _zero_embedding(n_old + n_new + 1, self, self.hidden_size)
        with torch.no_grad():
            new.weight[:n_old] = old.weight[:n_old]
            new.weight[-1] = old.weight[-1]
        self.modality_embedder = new
        if self.modality_templates is not None:  # new rows unset (zero) until trained on
            grown = self.modality_templates.new_zeros(n_old + n_new + 1, self.n_voxels)
            grown[:n_old] = self.modality_templates[:n_old]
            self.modality_templates = grown

    def widen_input(self, n_extra_channels: int) -> None:
        """Accept ``n_extra_channels`` more input (image-conditioning) channels: the patch
        embedding keeps its weights for the existing channels; the new ones start at zero."""
        old = self.x_embedder
        new = nn.Conv1d(self.in_channels + n_extra_channels, self.hidden_size, self.patch_size,
                        stride=self.patch_size, device=old.weight.device, dtype=old.weight.dtype)
        with torch.no_grad():
            new.weight.zero_()  # zero-init: extra channels are ignored until trained
            new.weight[:, : self.in_channels] = old.weight
            new.bias.copy_(old.bias)
        self.x_embedder = new
        self.in_channels += n_extra_channels

    def flops_per_image(self) -> dict[str, int]:
        """Analytic forward FLOPs of one image through this model, by part (heads and modality
        templates included); see :func:`forward_flops`."""
        return forward_flops(self.n_voxels, hidden_size=self.hidden_size, depth=self.depth,
                             patch_size=self.patch_size, mlp_ratio=self.mlp_ratio,
                             in_channels=self.in_channels, out_channels=self.out_channels,
                             modality_templates=self.template_embedder is not None,
                             score_head=self.score_embedder is not None)

    def spec(self) -> dict[str, Any]:
        """Everything :func:`dit_from_spec` needs to rebuild this model, heads included."""
        cen = None if self.token_centroids is None else self.token_centroids.tolist()
        return {
            "n_voxels": self.n_voxels, "hidden_size": self.hidden_size, "depth": self.depth,
            "num_heads": self.num_heads, "patch_size": self.patch_size, "mlp_ratio": self.mlp_ratio,
            "out_channels": self.out_channels, "pos_embed": self.pos_embed_kind,
            "label_dropout": self.label_dropout, "token_centroids": cen,
            "in_channels": self.in_channels,
            "n_modalities": self.modality_embedder.num_embeddings - 1,
            "n_diseases": _n_classes(self.disease_embedder),
            "n_parts": _n_classes(self.part_embedder),
            "score": self.score_embedder is not None,
            "modality_templates": self.template_embedder is not None,
            "label_tokens": self.label_tokens,
        }


def _n_classes(table: nn.Embedding | None) -> int | None:
    return None if table is None else table.num_embeddings - 1


def dit_from_spec(spec: dict[str, Any]) -> DiT:
    """Rebuild a :class:`DiT` (heads included) from :meth:`DiT.spec`; then load its state dict.
    (The positional embedding is also a persistent buffer, so the state dict restores it.) A key
    of :data:`SPEC_DEFAULTS` that an older spec lacks takes its default."""
    s = {**SPEC_DEFAULTS, **spec}
    heads = {k: s.pop(k) for k in ("n_diseases", "n_parts", "score", "label_tokens")}
    model = DiT(**s)
    if heads["n_diseases"] is not None:
        model.add_disease_head(heads["n_diseases"])
    if heads["n_parts"] is not None:
        model.add_part_head(heads["n_parts"])
    if heads["score"]:
        model.add_score_head()
    if heads["label_tokens"]:
        model.add_label_tokens()
    return model


def build_dit(preset: str, n_voxels: int, n_modalities: int = N_MODALITIES, in_channels: int = 1,
              pos_embed: str = "raster2d", token_centroids: Any = None, out_channels: int = 1,
              label_dropout: float = LABEL_DROPOUT, modality_templates: bool = False) -> DiT:
    """A :class:`DiT` of a named size from ``PRESETS`` (e.g. ``"L/256"``) for V = n_voxels."""
    if preset not in PRESETS:
        raise GenbrainInputError(
            f"model preset '{preset}' is unknown; expected one of: {', '.join(PRESETS)}")
    return DiT(n_voxels, **PRESETS[preset], in_channels=in_channels, out_channels=out_channels,
               n_modalities=n_modalities, pos_embed=pos_embed, token_centroids=token_centroids,
               label_dropout=label_dropout, modality_templates=modality_templates)


#: A training step's FLOPs per image, in forward passes: the backward pass takes the gradients
#: with respect to both the inputs and the weights of every matrix product, twice the forward.
TRAIN_FLOPS_FACTOR = 3


def forward_flops(n_voxels: int, *, hidden_size: int, depth: int, patch_size: int = 256,
                  mlp_ratio: float = 4.0, in_channels: int = 1, out_channels: int = 1,
                  modality_templates: bool = False, score_head: bool = False,
                  num_heads: int | None = None) -> dict[str, int]:
    """Analytic FLOPs of one image's forward pass through a :class:`DiT`, by part.

    FLOPs = 2 x the multiply-adds of the matrix products: the linear layers, the patch
    convolution(s) and attention's ``q k^T`` and ``scores v``; norms, softmax, activations and
    elementwise passes are left out, as ``torch.utils.flop_counter.FlopCounterMode`` counts.
    With T = ceil(V / P) tokens, width D, MLP width M = int(D * mlp_ratio), per block: MLP
    ``4 T D M``, qkv ``6 T D^2``, proj ``2 T D^2``, attention ``4 T^2 D``; once: final linear
    ``2 T D P 2 C_out``, patch ``2 T P C_in D`` (twice with modality templates); adaLN, per
    image rather than per token, ``2 D 6D`` per block + ``2 D 2D`` for the final layer, with
    the embedders that feed it, timestep ``2 (256 + D) D`` and age (and score) ``2 (1 + D) D``.
    L/256 on 228,483 voxels: 619.46 GFLOP (MLP 359.57, qkv 134.84, proj 44.95, attention
    78.39, final 0.94, patch 0.47, adaLN 0.31 of which the embedders 0.005). A training step
    costs ``TRAIN_FLOPS_FACTOR`` (3) x this per image; guided DDIM sampling 2 x steps x this
    per image (conditional and null rows).

    Called with a preset's entries (``forward_flops(V, **PRESETS["L/256"])``; ``num_heads`` does
    not change the count), or for a built model through :meth:`DiT.flops_per_image`. Returns
    FLOPs per image by part; their sum is the total.
    """
    T, D = math.ceil(n_voxels / patch_size), hidden_size
    M = int(hidden_size * mlp_ratio)
    continuous = 2 * (1 + D) * D  # Linear(1, D) + Linear(D, D)
    return {
        "mlp": depth * 2 * 2 * T * D * M,  # fc1 + fc2
        "qkv": depth * 2 * T * D * 3 * D,
        "proj": depth * 2 * T * D * D,
        "attention": depth * 2 * 2 * T * T * D,  # q k^T and scores v, all heads together
        "final": 2 * T * D * patch_size * 2 * out_channels,
        "patch": 2 * T * patch_size * D * (in_channels + modality_templates),
        "adaLN": depth * 2 * D * 6 * D + 2 * D * 2 * D  # + the embedders of c
        + 2 * (TIMESTEP_FREQUENCY_DIMS + D) * D + continuous * (1 + score_head),
    }
