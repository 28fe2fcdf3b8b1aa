"""Transformer blocks shared by two families: the language model (causal) and the diffusion
family's DiT (bidirectional, with adaLN conditioning)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SelfAttention(nn.Module):
    """Multi-head self-attention; causal for the language model, bidirectional for DiT."""

    def __init__(self, d_model: int, n_heads: int, causal: bool = True) -> None:
        super().__init__()
        self.n_heads, self.causal = n_heads, causal
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (z.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-norm transformer block: attention then a 4x GELU MLP, each on a residual branch.

    ``forward(x, mod)`` with ``mod`` = (shift1, scale1, gate1, shift2, scale2, gate2), each
    [B, 1, d], applies DiT's adaLN conditioning (Peebles & Xie 2023): the normalised input
    of each branch is shifted and scaled, and the branch output is gated."""

    def __init__(self, d_model: int, n_heads: int, causal: bool = True) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, n_heads, causal)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 4 * d_model),
            nn.GELU(),
            nn.Linear(4 * d_model, d_model),
        )

    def forward(self, x: torch.Tensor, mod: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
        if mod is None:
            x = x + self.attn(self.ln1(x))
            return x + self.mlp(self.ln2(x))
        shift1, scale1, gate1, shift2, scale2, gate2 = mod
        x = x + gate1 * self.attn(self.ln1(x) * (1 + scale1) + shift1)
        return x + gate2 * self.mlp(self.ln2(x) * (1 + scale2) + shift2)
