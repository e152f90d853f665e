"""Feed-forward blocks."""

from __future__ import annotations

from torch import Tensor, nn

from .fused import fast_inference, linear, linear_act, linear_add

__all__ = ["Mlp"]


class Mlp(nn.Module):
    """Linear -> activation -> dropout -> Linear -> dropout, on the last dimension (channels-last)."""

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        out_dim: int | None = None,
        *,
        act_layer: type[nn.Module] | None = None,
        drop: float = 0.0,
    ):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = act_layer() if act_layer is not None else nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_dim, out_dim or dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        if fast_inference(x, self):  # eval, no autograd: activation fused into fc1 (dropout is the identity)
            return linear(linear_act(x, self.fc1, self.act), self.fc2)
        return self.drop2(linear(self.drop1(self.act(linear(x, self.fc1))), self.fc2))

    def forward_add(self, x: Tensor, residual: Tensor) -> Tensor:
        """``residual + self(x)``; in inference the add happens in fc2's matmul epilogue."""
        if fast_inference(x, self):
            return linear_add(linear_act(x, self.fc1, self.act), self.fc2, residual)
        return residual + self(x)
