"""Small building blocks shared by the models."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

ACTIVATIONS = {"gelu": lambda x: F.gelu(x, approximate="tanh"), "relu": F.relu}


class MLP(nn.Module):
    """Linear layers with an activation between them (tanh-approximated GELU by default).

    Args:
        dims: Widths ``(in, hidden..., out)``.
        activate_last: Apply the activation after the last layer too.
        activation: ``"gelu"`` or ``"relu"``.
    """

    def __init__(self, dims: Sequence[int], activate_last: bool = False,
                 activation: str = "gelu") -> None:
        super().__init__()
        if len(dims) < 2:
            raise ValueError(f"MLP needs at least (in, out) widths, got {tuple(dims)}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got "
                             f"{activation!r}")
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims[:-1], dims[1:]))
        self.activate_last = activate_last
        self.activation = ACTIVATIONS[activation]

    def forward(self, x: Tensor) -> Tensor:
        """``[..., dims[0]]`` → ``[..., dims[-1]]``."""
        last = len(self.layers) - 1
        for n, layer in enumerate(self.layers):
            x = layer(x)
            if n < last or self.activate_last:
                x = self.activation(x)
        return x


def reference_init_(module: nn.Module) -> None:
    """Orthogonal Linear weights (gain 1) and zero biases, as the reference initialises."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.orthogonal_(m.weight)
            nn.init.zeros_(m.bias)
