"""The regressor network.

:class:`ScoreRegressor` is a MONAI ResNet trunk with a dropout + linear head whose output is
``sigmoid(z) * score_max`` (scores live in [0, score_max]). ``arch``:
- ``resnet10-narrow`` (default): ``ResNet("basic", [1, 1, 1, 1], [32, 32, 64, 128],
  conv1_t_size=3)``, the closest MONAI build of the GenBrain code's regressor (widths 32/32/64/128,
  3^3 stem, dropout 0.5 before the head). The default because it is the network the authors ran
  and because the demo must fit 2 CPU cores: 0.95 M parameters against resnet10's 14.4 M; one
  Adam step on 8 images of 72 x 90 x 76 took 9 s against 36 s on 2 shared CPU cores.
- ``resnet10``: MONAI's ``resnet10`` widths (64/128/256/512, 7^3 stem; MedicalNet's ResNet-10),
  always ``pretrained=False``: the pretrained weights download at run time.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from genbrain.clinical.config import ARCHS, STREAM_INIT, RegressConfig
from genbrain.errors import GenbrainInputError
from genbrain.seeds import seed_of


class ScoreRegressor(nn.Module):
    """MONAI 3D ResNet trunk + dropout + linear head; (n, 1, X, Y, Z) -> (n,) scores in
    [0, score_max] (sigmoid x score_max)."""

    def __init__(self, arch: str, score_max: float, dropout: float = 0.5):
        super().__init__()
        from monai.networks.nets import ResNet, resnet10  # ~1 s import, only when a model is made

        if arch == "resnet10-narrow":  # the GenBrain code's widths and 3^3 stem
            self.trunk = ResNet("basic", [1, 1, 1, 1], [32, 32, 64, 128], spatial_dims=3,
                                n_input_channels=1, conv1_t_size=3, feed_forward=False)
            width = 128
        elif arch == "resnet10":
            # pretrained=False always: MedicalNet weights would download at run time
            self.trunk = resnet10(pretrained=False, spatial_dims=3, n_input_channels=1,
                                  feed_forward=False)
            width = 512
        else:
            raise GenbrainInputError(f"regression config: 'arch' is {arch!r}; expected one of "
                                     f"{', '.join(ARCHS)}")
        # The head replaces MONAI's fc (num_classes=1) so dropout can sit in front of it.
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, 1))
        self.register_buffer("score_max", torch.tensor(float(score_max)), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        z = self.head(self.trunk(x))[:, 0]  # (n,)
        return torch.sigmoid(z) * self.score_max  # bounded like the score


def build_regressor(config: RegressConfig) -> ScoreRegressor:
    """A :class:`ScoreRegressor` for ``config``, its initial weights seeded by (seed, init)."""
    with torch.random.fork_rng(devices=[]):  # seeded init that leaves the caller's RNG alone
        torch.manual_seed(seed_of(config.seed, STREAM_INIT))
        return ScoreRegressor(config.arch, config.score_max, config.dropout)
