"""Discrimination CNN (Chen & Dou, VALDO 2021, Table 2): the screening trunk on a larger block, then two fully
connected layers."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from cmbunet.errors import InvalidValueError
from cmbunet.networks.blocks import init_weights, valid_trunk


class DiscriminationCNN(nn.Module):
    """C1(BN) C2(BN) M1 C3(BN) C4(BN) -> FC(512, dropout) -> FC(2).

    The flattened size follows from ``block_size`` (Chen & Dou: 24x24x20 gives 128x4x4x4).
    """

    def __init__(
        self,
        block_size: Sequence[int],
        in_channels: int = 1,
        features: Sequence[int] = (64, 64, 128, 128),
        first_kernels: Sequence[int] = (5, 5, 3),
        fc_features: int = 512,
        dropout: float = 0.5,
        num_classes: int = 2,
        negative_slope: float = 0.01,
    ):
        super().__init__()
        f4 = features[3]
        self.features = valid_trunk(in_channels, features, first_kernels, negative_slope)
        trunk = [((b - 2 * (k - 1)) // 2) - 4 for b, k in zip(block_size, first_kernels)]
        if min(trunk) < 1:
            raise InvalidValueError(f"discrimination block {tuple(block_size)} is too small for kernels {tuple(first_kernels)}")
        self.trunk_size = tuple(trunk)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(f4 * trunk[0] * trunk[1] * trunk[2], fc_features),
            nn.LeakyReLU(negative_slope, inplace=True),
            nn.Dropout(dropout),
            nn.Linear(fc_features, num_classes),
        )
        init_weights(self, negative_slope)

    #: C1 and C2 (stride-1 valid convolutions before the first pooling) commute with shifts of the block, so one
    #: pass over a block grown by ``2 s`` serves every block shifted by up to ``s`` voxels; they hold about 90%
    #: of the network's FLOPs.
    num_shared_layers = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def shift_invariant_features(self, x: torch.Tensor) -> torch.Tensor:
        """C1 and C2 on ``x``: the part of the network that is computed once for all shifted blocks."""
        return self.features[: self.num_shared_layers](x)

    def shifted_logits(self, y: torch.Tensor, shifts: Sequence[Sequence[int]], reach: int) -> torch.Tensor:
        """``(n, S, classes)`` logits of every block moved by each of ``shifts`` (``S`` offsets within ``reach``),
        from :meth:`shift_invariant_features` of the ``n`` blocks grown by ``reach`` per side.

        After C2 every layer is local except the first fully connected one, which is a convolution whose kernel
        covers the whole C4 map. So the rest of the network runs fully convolutionally over the grown map, once
        per phase of the 2x2x2 max-pooling (a block moved by an odd number of voxels pools on the other phase: 8
        passes for 27 shifts), and each shift reads its logits at its own position: the numbers of ``forward``
        on each shifted block, in about a third of the operations of one pass per shifted window. Evaluation only
        (dropout and batch statistics act per block in training).
        """
        if self.training:
            raise RuntimeError("shifted_logits is for evaluation: call .eval() first")
        offsets = [[reach + int(a) for a in shift] for shift in shifts]
        fc1, fc2 = self.classifier[1], self.classifier[4]
        kernel = fc1.weight.reshape(fc1.out_features, -1, *self.trunk_size)
        slope = self.classifier[2].negative_slope
        out = y.new_empty((len(y), len(offsets), fc2.out_features), dtype=torch.float32)
        rest = self.features[self.num_shared_layers :]
        for phase in {tuple(o % 2 for o in off) for off in offsets}:
            z = rest(y[:, :, phase[0] :, phase[1] :, phase[2] :])
            hidden = nn.functional.leaky_relu(nn.functional.conv3d(z, kernel, fc1.bias), slope)
            logits = nn.functional.conv3d(hidden, fc2.weight[:, :, None, None, None], fc2.bias)
            for j, off in enumerate(offsets):
                if tuple(o % 2 for o in off) == phase:
                    a, b, c = ((o - q) // 2 for o, q in zip(off, phase))
                    out[:, j] = logits[:, :, a, b, c].float()
        return out
