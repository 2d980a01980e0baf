"""LeNet-5 as published (LeCun, Bottou, Bengio & Haffner 1998, section II.B).

Layers on a 32x32 input: C1 6@28x28 (5x5) -> S2 6@14x14 -> C3 16@10x10 (5x5, Table I's partial
connections) -> S4 16@5x5 -> C5 120@1x1 (5x5) -> F6 84 -> output, one Euclidean RBF unit per
class. Every unit up to F6 applies the paper's squashing ``f(a) = 1.7159 tanh(2/3 a)``. A
subsampling unit sums its 2x2 block, multiplies by one trainable coefficient per map and adds one
trainable bias per map. Weights (and biases) start uniform in +-2.4/F_i, F_i the unit's fan-in.

The paper's configuration (1 band, 10 classes, fixed RBF centres) has exactly 60,000 trainable
parameters: 156 + 12 + 1,516 + 32 + 48,120 + 10,164.

Deviations, on purpose:
- RBF centres: the paper draws them as stylised 7x12 bitmaps of the ASCII characters, which are
  not published. We use deterministic pseudo-random +-1 codes of the same size (84 = 7x12, seeded,
  so the same on every machine); ``trainable_rbf=True`` makes them parameters.
- Output and loss: ``forward`` returns logits = minus the squared distances. Training uses
  ``cross_entropy(logits / T, y)`` with ``T = loss_temperature = 10``: the paper's MAP criterion
  (eq. 9) without its constant "rubbish class" term ``e^-j``, on distances measured in units of
  T. The paper's MLE term keeps pulling F6 onto its class code; with T = 1 the softmax saturates
  as soon as the nearest code is right and that pull stops (digits test accuracy ~97% instead of
  ~99% with T = 10; benchmarks/lenet_digits.py). Predictions (argmax) do not depend on T.
- Inputs larger than 32 px leave C5 bigger than 1x1 (the paper notes this is why C5 is a
  convolution); we average C5 over space before F6. At 32 px this is the identity.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._base import BackboneMixin, check_declaration, feature
from ._registry import register_backbone

SQUASH_A = 1.7159
SQUASH_S = 2.0 / 3.0
RBF_SHAPE = (7, 12)
RBF_SEED = 1998

# Table I: the S2 maps feeding each C3 map. Six maps see 3 contiguous maps, six see 4 contiguous,
# three see 4 discontinuous, the last sees all six.
C3_TABLE: tuple[tuple[int, ...], ...] = (
    (0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (0, 4, 5), (0, 1, 5),
    (0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (0, 3, 4, 5), (0, 1, 4, 5), (0, 1, 2, 5),
    (0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
)  # fmt: skip


def _uniform_fan_in_(tensor: Tensor, fan_in: float | Tensor) -> None:
    """Paper init: U(-2.4/F_i, 2.4/F_i); ``fan_in`` may vary along the first dimension."""
    with torch.no_grad():
        bound = 2.4 / torch.as_tensor(fan_in, dtype=tensor.dtype)
        bound = bound.reshape(-1, *([1] * (tensor.dim() - 1))) if bound.dim() else bound
        tensor.uniform_(-1.0, 1.0).mul_(bound)


class ScaledTanh(nn.Module):
    """The paper's squashing function f(a) = A tanh(S a), A = 1.7159, S = 2/3 (f(+-1) = +-1)."""

    def forward(self, x: Tensor) -> Tensor:
        return SQUASH_A * torch.tanh(SQUASH_S * x)


class Subsampling(nn.Module):
    """S2/S4: sum of each 2x2 block, times a trainable coefficient, plus a trainable bias, per map."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels))
        self.bias = nn.Parameter(torch.empty(channels))
        _uniform_fan_in_(self.weight, 4)
        _uniform_fan_in_(self.bias, 4)

    def forward(self, x: Tensor) -> Tensor:
        summed = F.avg_pool2d(x, 2) * 4.0
        return summed * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class PartialConv2d(nn.Module):
    """A convolution where output map ``o`` sees only input maps ``table[o]``.

    Only the connected kernels are parameters (one (k, k) kernel per connection), so the parameter
    count is the paper's; they are scattered into a dense zero kernel for one ``conv2d`` call.
    """

    def __init__(self, table: tuple[tuple[int, ...], ...], in_maps: int, kernel_size: int) -> None:
        super().__init__()
        pairs = [(o, i) for o, inputs in enumerate(table) for i in inputs]
        if any(not 0 <= i < in_maps for _, i in pairs):
            raise ValueError(f"connection table refers to input maps outside 0..{in_maps - 1}")
        self.table = table
        self.in_maps = in_maps
        self.out_maps = len(table)
        self.kernel_size = kernel_size
        self.register_buffer("out_idx", torch.tensor([o for o, _ in pairs]), persistent=False)
        self.register_buffer("in_idx", torch.tensor([i for _, i in pairs]), persistent=False)
        self.weight = nn.Parameter(torch.empty(len(pairs), kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(len(table)))
        fan_in_per_map = torch.tensor([len(t) * kernel_size**2 for t in table], dtype=torch.float32)
        _uniform_fan_in_(self.weight, fan_in_per_map[self.out_idx])
        _uniform_fan_in_(self.bias, fan_in_per_map)

    def dense_weight(self) -> Tensor:
        k = self.kernel_size
        w = self.weight.new_zeros(self.out_maps, self.in_maps, k, k)
        return w.index_put((self.out_idx, self.in_idx), self.weight)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.dense_weight(), self.bias)


def rbf_codes(
    num_classes: int, length: int = RBF_SHAPE[0] * RBF_SHAPE[1], seed: int = RBF_SEED
) -> Tensor:
    """Deterministic +-1 class codes (stand-ins for the paper's 7x12 character bitmaps)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (num_classes, length), generator=g).float() * 2 - 1


class GaussianConnections(nn.Module):
    """Output layer: y_i = sum_j (x_j - w_ij)^2, one Euclidean RBF unit per class."""

    def __init__(self, in_features: int, num_classes: int, trainable: bool = False) -> None:
        super().__init__()
        codes = rbf_codes(num_classes, in_features)
        if trainable:
            self.centres = nn.Parameter(codes)
        else:
            self.register_buffer("centres", codes)

    def forward(self, x: Tensor) -> Tensor:
        return (x.unsqueeze(1) - self.centres.unsqueeze(0)).pow(2).sum(-1)


class LeNet5(BackboneMixin, nn.Module):
    head_names = ("f6", "act6", "output")
    first_conv = "c1"
    loss_temperature = 10.0

    @staticmethod
    def init_conv(conv: nn.Conv2d) -> None:
        fan_in = conv.weight[0].numel()
        _uniform_fan_in_(conv.weight, fan_in)
        if conv.bias is not None:
            _uniform_fan_in_(conv.bias, fan_in)

    def __init__(
        self, num_classes: int = 10, in_channels: int = 1, trainable_rbf: bool = False
    ) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(in_channels, 6, kernel_size=5)
        self.act1 = ScaledTanh()
        self.s2 = Subsampling(6)
        self.act2 = ScaledTanh()
        self.c3 = PartialConv2d(C3_TABLE, in_maps=6, kernel_size=5)
        self.act3 = ScaledTanh()
        self.s4 = Subsampling(16)
        self.act4 = ScaledTanh()
        self.c5 = nn.Conv2d(16, 120, kernel_size=5)
        self.act5 = ScaledTanh()
        self.f6 = nn.Linear(120, RBF_SHAPE[0] * RBF_SHAPE[1])
        self.act6 = ScaledTanh()
        self.output = GaussianConnections(
            RBF_SHAPE[0] * RBF_SHAPE[1], num_classes, trainable=trainable_rbf
        )
        for conv in (self.c1, self.c5):
            self.init_conv(conv)
        _uniform_fan_in_(self.f6.weight, 120)
        _uniform_fan_in_(self.f6.bias, 120)

        self.trunk = ["c1", "act1", "s2", "act2", "c3", "act3", "s4", "act4", "c5", "act5"]
        # Valid convolutions shrink maps without striding: reductions are the cumulative strides.
        self.feature_info = [
            feature(6, 1, "act1"),
            feature(6, 2, "act2"),
            feature(16, 2, "act3"),
            feature(16, 4, "act4"),
            feature(120, 4, "act5"),
        ]
        check_declaration(self.trunk, self.feature_info)

    def distances(self, x: Tensor) -> Tensor:
        """Squared Euclidean distance of F6's state to each class centre, (N, num_classes)."""
        c5 = self.forward_features(x)[-1]
        if c5.shape[-2:] != (1, 1):
            c5 = F.adaptive_avg_pool2d(c5, 1)
        return self.output(self.act6(self.f6(torch.flatten(c5, 1))))

    def classify(self, x: Tensor) -> Tensor:
        return -self.distances(x)


@register_backbone("lenet5")
def lenet5(
    num_classes: int = 10, in_channels: int = 1, features_only: bool = False, **kwargs: Any
) -> LeNet5:
    model = LeNet5(num_classes=num_classes, in_channels=in_channels, **kwargs)
    if features_only:
        model.remove_head()
    return model
