"""Training criteria the zoo's papers prescribe, for any classification loop."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def classification_loss(
    output: Tensor | tuple[Tensor, ...],
    target: Tensor,
    aux_weight: float,
    temperature: float = 1.0,
) -> Tensor:
    """Cross-entropy of ``logits / temperature``; a tuple output (GoogLeNet training) is
    ``(main, *aux)`` and its auxiliary losses are weighted by ``aux_weight``."""
    if isinstance(output, tuple):
        main, *aux = output
        aux_loss = sum(F.cross_entropy(a / temperature, target) for a in aux)
        return F.cross_entropy(main / temperature, target) + aux_weight * aux_loss
    return F.cross_entropy(output / temperature, target)
