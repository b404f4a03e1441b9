"""Small building blocks shared by the models."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn


class MLP(nn.Module):
    """Linear layers with tanh-approximated GELU between them.

    Args:
        dims: Widths ``(in, hidden..., out)``.
        activate_last: Apply GELU after the last layer too.
    """

    def __init__(self, dims: Sequence[int], activate_last: bool = False) -> None:
        super().__init__()
        if len(dims) < 2:
            raise ValueError(f"MLP needs at least (in, out) widths, got {tuple(dims)}")
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims[:-1], dims[1:]))
        self.activate_last = activate_last

    def forward(self, x: Tensor) -> Tensor:
        """``[..., dims[0]]`` → ``[..., dims[-1]]``."""
        last = len(self.layers) - 1
        for n, layer in enumerate(self.layers):
            x = layer(x)
            if n < last or self.activate_last:
                x = F.gelu(x, approximate="tanh")
        return x


def reference_init_(module: nn.Module) -> None:
    """Orthogonal Linear weights (gain 1) and zero biases, as the reference initialises."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.orthogonal_(m.weight)
            nn.init.zeros_(m.bias)
