"""The baseline for the model benchmarks: the public GenBrain code's DiT, i.e.
facebookresearch/DiT's ``models.py`` with a Conv1d patch embedder, built from timm's
``Attention`` and ``Mlp`` (``from timm.models.vision_transformer import Attention, Mlp``).

timm is not installed: timm 1.0.31 needs torchvision, and the only torchvision matching
torch==2.13.0 on the project's indexes (0.28.0, PyPI) is a CUDA build whose ``_C.so`` links
``libtorch_cuda.so``; with our CPU torch ``import torchvision`` (hence ``import timm``) fails.
So ``Attention``, ``Mlp`` and their helpers below are copied verbatim from timm 1.0.31
(``timm/layers/attention.py``, ``timm/layers/mlp.py``, ``timm/layers/helpers.py``, Apache-2.0,
Copyright Ross Wightman), minus the ``torch.fx`` tracing decorators, which do nothing in eager
mode. ``use_fused_attn()`` reads ``TIMM_FUSED_ATTN`` as timm's ``layers/config.py`` does.

Which attention path. timm added the fused ``scaled_dot_product_attention`` branch in 0.9
(2023); the DiT code (Dec 2022) and the public GenBrain code were written against timm 0.6,
whose Attention always ran the explicit ``softmax(q k^T * scale) v``. :func:`public_dit` builds
that path by default (``fused_attn=False``, what timm 1.0.31 runs under ``TIMM_FUSED_ATTN=0``).
Note timm 1.0.31's explicit branch scales q before the product (T x d multiplies) where 0.6
scaled the T x T scores, so this baseline is, if anything, slightly faster than the original.

Everything else follows DiT's ``models.py`` (TimestepEmbedder, LabelEmbedder with token_drop,
DiTBlock, FinalLayer, unpatchify) with GenBrain's labels (age through a continuous embedder,
sex, modality); :func:`load_from_genbrain` copies a :class:`genbrain.model.dit.DiT`'s weights in,
so the two models compute the same function and the benchmarks can check that they agree.
"""

from __future__ import annotations

import collections.abc
import math
import os
from functools import partial
from itertools import repeat
from typing import Final, Optional, Tuple, Type, Union

import torch
import torch.nn.functional as F
from torch import nn

# ------------------------------------------------------------------ timm 1.0.31, verbatim
# Kept as timm writes it (typing.Optional/Tuple/Type/Union, unused unpacked names), so ruff's
# pyupgrade rewrites and RUF059 are off for this file; all their findings lie in this section.
# ruff: noqa: UP006, UP007, UP035, UP045, RUF059

_HAS_FUSED_ATTN = hasattr(torch.nn.functional, 'scaled_dot_product_attention')
if 'TIMM_FUSED_ATTN' in os.environ:
    _USE_FUSED_ATTN = int(os.environ['TIMM_FUSED_ATTN'])
else:
    _USE_FUSED_ATTN = 1  # 0 == off, 1 == on (for tested use), 2 == on (for experimental use)
_EXPORTABLE = False


def use_fused_attn(experimental: bool = False) -> bool:
    # NOTE: ONNX export cannot handle F.scaled_dot_product_attention as of pytorch 2.0
    if not _HAS_FUSED_ATTN or _EXPORTABLE:
        return False
    if experimental:
        return _USE_FUSED_ATTN > 1
    return _USE_FUSED_ATTN > 0


def _ntuple(n):
    def parse(x):
        if isinstance(x, collections.abc.Iterable) and not isinstance(x, str):
            return tuple(x)
        return tuple(repeat(x, n))
    return parse


to_2tuple = _ntuple(2)


def maybe_add_mask(scores: torch.Tensor, attn_mask: Optional[torch.Tensor] = None):
    return scores if attn_mask is None else scores + attn_mask


def resolve_self_attn_mask(
        seq_len: int,
        attn: torch.Tensor,
        attn_mask: Optional[torch.Tensor] = None,
        is_causal: bool = False,
) -> Optional[torch.Tensor]:
    # Build additive bias matching SDPA semantics for self-attention
    # is_causal and attn_mask are mutually exclusive (is_causal takes precedence)
    if is_causal:
        attn_bias = attn.new_full((seq_len, seq_len), float('-inf')).triu_(1)
    elif attn_mask is None:
        attn_bias = None
    elif attn_mask.dtype == torch.bool:
        attn_bias = torch.zeros_like(attn_mask, dtype=attn.dtype)
        attn_bias.masked_fill_(~attn_mask, float('-inf'))
    else:
        attn_bias = attn_mask
    return attn_bias


class Attention(nn.Module):
    """Standard Multi-head Self Attention module with QKV projection.

    This module implements the standard multi-head attention mechanism used in transformers.
    It supports both the fused attention implementation (scaled_dot_product_attention) for
    efficiency when available, and a manual implementation otherwise. The module includes
    options for QK normalization, attention dropout, and projection dropout.
    """
    fused_attn: Final[bool]

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            attn_head_dim: Optional[int] = None,
            dim_out: Optional[int] = None,
            qkv_bias: bool = False,
            qk_norm: bool = False,
            scale_norm: bool = False,
            proj_bias: bool = True,
            gated: bool = False,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            norm_layer: Optional[Type[nn.Module]] = None,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        dim_out = dim_out or dim
        head_dim = attn_head_dim
        if head_dim is None:
            assert dim % num_heads == 0, 'dim should be divisible by num_heads'
            head_dim = dim // num_heads
        if qk_norm or scale_norm:
            assert norm_layer is not None, 'norm_layer must be provided if qk_norm or scale_norm is True'

        self.num_heads = num_heads
        self.head_dim = head_dim
        self.attn_dim = num_heads * head_dim
        self.scale = head_dim ** -0.5
        self.fused_attn = use_fused_attn()

        self.qkv = nn.Linear(dim, self.attn_dim * 3, bias=qkv_bias, **dd)
        self.q_norm = norm_layer(head_dim, **dd) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(head_dim, **dd) if qk_norm else nn.Identity()
        self.attn_drop = nn.Dropout(attn_drop)
        self.norm = norm_layer(self.attn_dim, **dd) if scale_norm else nn.Identity()
        self.gate = nn.Linear(dim, self.attn_dim, bias=qkv_bias, **dd) if gated else None
        self.proj = nn.Linear(self.attn_dim, dim_out, bias=proj_bias, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(
            self,
            x: torch.Tensor,
            attn_mask: Optional[torch.Tensor] = None,
            is_causal: bool = False,
    ) -> torch.Tensor:
        B, N, C = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)

        if self.fused_attn:
            x = F.scaled_dot_product_attention(
                q, k, v,
                attn_mask=attn_mask,
                dropout_p=self.attn_drop.p if self.training else 0.,
                is_causal=is_causal,
            )
        else:
            q = q * self.scale
            attn = q @ k.transpose(-2, -1)
            attn_bias = resolve_self_attn_mask(N, attn, attn_mask, is_causal)
            attn = maybe_add_mask(attn, attn_bias)
            attn = attn.softmax(dim=-1)
            attn = self.attn_drop(attn)
            x = attn @ v

        x = x.transpose(1, 2).reshape(B, N, self.attn_dim)
        x = self.norm(x)
        if gate is not None:
            x = x * gate
        x = self.proj(x)
        x = self.proj_drop(x)
        return x


class Mlp(nn.Module):
    """ MLP as used in Vision Transformer, MLP-Mixer and related networks

    NOTE: When use_conv=True, expects 2D NCHW tensors, otherwise N*C expected.
    """
    def __init__(
            self,
            in_features: int,
            hidden_features: Optional[int] = None,
            out_features: Optional[int] = None,
            act_layer: Type[nn.Module] = nn.GELU,
            norm_layer: Optional[Type[nn.Module]] = None,
            bias: Union[bool, Tuple[bool, bool]] = True,
            drop: Union[float, Tuple[float, float]] = 0.,
            use_conv: bool = False,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        bias = to_2tuple(bias)
        drop_probs = to_2tuple(drop)
        linear_layer = partial(nn.Conv2d, kernel_size=1) if use_conv else nn.Linear

        self.fc1 = linear_layer(in_features, hidden_features, bias=bias[0], **dd)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop_probs[0])
        self.norm = norm_layer(hidden_features, **dd) if norm_layer is not None else nn.Identity()
        self.fc2 = linear_layer(hidden_features, out_features, bias=bias[1], **dd)
        self.drop2 = nn.Dropout(drop_probs[1])

    def forward(self, x):
        x = self.fc1(x)
        x = self.act(x)
        x = self.drop1(x)
        x = self.norm(x)
        x = self.fc2(x)
        x = self.drop2(x)
        return x


# ------------------------------------------------------------------ DiT models.py, 1-D


def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden_size, frequency_embedding_size=256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t, dim, max_period=10000):
        half = dim // 2
        freqs = torch.exp(
            -math.log(max_period) * torch.arange(start=0, end=half, dtype=torch.float32) / half
        ).to(device=t.device)
        args = t[:, None].float() * freqs[None]
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
        return embedding

    def forward(self, t):
        t_freq = self.timestep_embedding(t, self.frequency_embedding_size)
        t_emb = self.mlp(t_freq)
        return t_emb


class LabelEmbedder(nn.Module):
    def __init__(self, num_classes, hidden_size, dropout_prob):
        super().__init__()
        use_cfg_embedding = dropout_prob > 0
        self.embedding_table = nn.Embedding(num_classes + use_cfg_embedding, hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def token_drop(self, labels, force_drop_ids=None):
        if force_drop_ids is None:
            drop_ids = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
        else:
            drop_ids = force_drop_ids == 1
        labels = torch.where(drop_ids, self.num_classes, labels)
        return labels

    def forward(self, labels, train, force_drop_ids=None):
        use_dropout = self.dropout_prob > 0
        if (train and use_dropout) or (force_drop_ids is not None):
            labels = self.token_drop(labels, force_drop_ids)
        embeddings = self.embedding_table(labels)
        return embeddings


class AgeEmbedder(nn.Module):
    """GenBrain's continuous age label: Linear-SiLU-Linear-tanh; dropped age = 0."""

    def __init__(self, hidden_size, dropout_prob):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(1, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))
        self.dropout_prob = dropout_prob

    def forward(self, age, train, force_drop_ids=None):
        if force_drop_ids is not None:  # the benchmarks always pass the drop mask
            age = torch.where(force_drop_ids == 1, torch.zeros_like(age), age)
        return torch.tanh(self.mlp(age.float().reshape(-1, 1)))


class DiTBlock(nn.Module):
    """
    A DiT block with adaptive layer norm zero (adaLN-Zero) conditioning.
    """
    def __init__(self, hidden_size, num_heads, mlp_ratio=4.0, **block_kwargs):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads=num_heads, qkv_bias=True, **block_kwargs)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        mlp_hidden_dim = int(hidden_size * mlp_ratio)
        approx_gelu = lambda: nn.GELU(approximate="tanh")
        self.mlp = Mlp(in_features=hidden_size, hidden_features=mlp_hidden_dim,
                       act_layer=approx_gelu, drop=0)
        self.adaLN_modulation = nn.Sequential(
            nn.SiLU(),
            nn.Linear(hidden_size, 6 * hidden_size, bias=True)
        )

    def forward(self, x, c):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = \
            self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    def __init__(self, hidden_size, patch_size, out_channels):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(
            nn.SiLU(),
            nn.Linear(hidden_size, 2 * hidden_size, bias=True)
        )

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        x = modulate(self.norm_final(x), shift, scale)
        x = self.linear(x)
        return x


class PublicDiT(nn.Module):
    """DiT over voxel vectors (N, 1, V): Conv1d patches of ``patch_size``, learned sigma."""

    def __init__(self, n_voxels, hidden_size, depth, num_heads, patch_size=256, mlp_ratio=4.0,
                 n_modalities=34, class_dropout_prob=0.1, fused_attn=False):
        super().__init__()
        self.n_voxels, self.patch_size = n_voxels, patch_size
        self.num_patches = math.ceil(n_voxels / patch_size)
        self.out_channels = 2  # learn_sigma
        self.x_embedder = nn.Conv1d(1, hidden_size, patch_size, stride=patch_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.age_embedder = AgeEmbedder(hidden_size, class_dropout_prob)
        self.sex_embedder = LabelEmbedder(2, hidden_size, class_dropout_prob)
        self.modality_embedder = LabelEmbedder(n_modalities, hidden_size, class_dropout_prob)
        # Will use fixed sin-cos embedding (copied in from the genbrain model):
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, hidden_size),
                                      requires_grad=False)
        self.blocks = nn.ModuleList([
            DiTBlock(hidden_size, num_heads, mlp_ratio=mlp_ratio) for _ in range(depth)
        ])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        for block in self.blocks:
            block.attn.fused_attn = fused_attn

    def unpatchify(self, x):
        """x: (N, T, patch_size * C) -> (N, C, V)"""
        c, p = self.out_channels, self.patch_size
        x = x.reshape(shape=(x.shape[0], self.num_patches, p, c))
        x = torch.einsum('ntpc->nctp', x)
        return x.reshape(shape=(x.shape[0], c, self.num_patches * p))[..., :self.n_voxels]

    def forward(self, x, t, age, sex, modality, force_drop=None):
        drop = None if force_drop is None else force_drop.long()
        x = F.pad(x, (0, self.num_patches * self.patch_size - x.shape[-1]))
        x = self.x_embedder(x).transpose(1, 2) + self.pos_embed  # (N, T, D)
        t = self.t_embedder(t)  # (N, D)
        y = (self.age_embedder(age, self.training, drop)
             + self.sex_embedder(sex.long(), self.training, drop)
             + self.modality_embedder(modality.long(), self.training, drop))  # (N, D)
        c = t + y  # (N, D)
        for block in self.blocks:
            x = block(x, c)  # (N, T, D)
        x = self.final_layer(x, c)  # (N, T, patch_size * out_channels)
        x = self.unpatchify(x)  # (N, out_channels, V)
        return x


def public_dit(model: nn.Module, fused_attn: bool = False) -> PublicDiT:
    """A :class:`PublicDiT` with the architecture and weights of a genbrain ``DiT``
    (1 input channel, no fine-tuning heads)."""
    n_mod = model.modality_embedder.num_embeddings - 1
    base = PublicDiT(model.n_voxels, model.hidden_size, model.depth, model.num_heads,
                     model.patch_size, model.mlp_ratio, n_mod, model.label_dropout, fused_attn)
    load_from_genbrain(base, model)
    return base


def load_from_genbrain(base: PublicDiT, model: nn.Module) -> None:
    """Copy a genbrain DiT's weights into ``base`` (only the label tables are named apart)."""
    state = {}
    for key, value in model.state_dict().items():
        for name in ("sex_embedder", "modality_embedder"):
            key = key.replace(f"{name}.weight", f"{name}.embedding_table.weight")
        state[key] = value
    base.load_state_dict(state, strict=True)


def perturb_(model: nn.Module, std: float = 0.02, seed: int = 0) -> None:
    """Add seeded noise to every trainable weight, so the zero-initialised adaLN and output
    layers do not make the model an identity (a benchmark model must compute something)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
