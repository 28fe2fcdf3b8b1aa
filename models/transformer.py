"""Decoder-only transformer language model (the ``transformer`` family).

Pre-norm blocks, causal self-attention through ``F.scaled_dot_product_attention``, a 4x MLP,
learned position embeddings, and an output head tied to the token embedding (nanoGPT-style).

Counting, as Kaplan et al. 2020 do:
- scaling N = every parameter except the token and position embeddings
  (attention and MLP matrices, their biases, the layer norms);
- training FLOPs per token = 6·N + 12·L·T·d + 6·d·V: three times a forward pass of
  2·N (every weight is one multiply-add per token), 4·L·T·d for the two attention matmuls
  (QKᵀ and AV at the full context T, no causal discount, as torch's FLOP counter counts
  them), and 2·d·V for the tied output head. Embedding lookups cost nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from analysis.records import DataUnit, Metric
from models.blocks import Block
from models.family import DataShape, ModelFamily, ParamCount, check_fields, doc_field, register


@dataclass(frozen=True, kw_only=True)
class TransformerSize:
    """One size in the spec: ``d_model`` must be a multiple of ``n_heads``."""

    d_model: int = doc_field(doc="width")
    n_layers: int = doc_field(doc="blocks")
    n_heads: int = doc_field(doc="attention heads (d_model / n_heads per head)")


@dataclass(frozen=True, kw_only=True)
class TransformerOptions:
    """The rule for sizes given as ``params`` (``TransformerFamily.shape_from_params``)."""

    aspect_ratio: int = doc_field(32, "d_model / n_layers, for sizes given as params")
    head_dim: int = doc_field(16, "d_model / n_heads, for sizes given as params")

    def __post_init__(self) -> None:
        if self.aspect_ratio < 1 or self.head_dim < 1:
            raise ValueError("aspect_ratio and head_dim must be positive")


@dataclass(frozen=True, kw_only=True)
class TransformerShape:
    """Everything that builds one transformer: its size, and the context and vocabulary the
    data fix."""

    d_model: int
    n_layers: int
    n_heads: int
    context: int = 128  # tokens per sequence (T)
    vocab: int = 256  # byte-level by default

    def __post_init__(self) -> None:
        check_fields(self, positive=("d_model", "n_layers", "n_heads", "context", "vocab"))
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be a multiple of n_heads ({self.n_heads})"
            )


class TransformerLM(nn.Module):
    """Maps token ids [B, T] to next-token logits [B, T, V]."""

    def __init__(self, shape: TransformerShape) -> None:
        super().__init__()
        self.shape = shape
        self.tok_emb = nn.Embedding(shape.vocab, shape.d_model)
        self.pos_emb = nn.Embedding(shape.context, shape.d_model)
        self.blocks = nn.ModuleList(
            Block(shape.d_model, shape.n_heads) for _ in range(shape.n_layers)
        )
        self.ln_f = nn.LayerNorm(shape.d_model)
        self.apply(self._init_weights)
        # GPT-2: scale the residual projections by 1/sqrt(2L) so deep stacks start stable.
        for name, p in self.named_parameters():
            if name.endswith("attn.proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * shape.n_layers))

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        if t > self.shape.context:
            raise ValueError(f"sequence of {t} tokens exceeds the context of {self.shape.context}")
        pos = torch.arange(t, device=idx.device)
        x = self.tok_emb(idx) + self.pos_emb(pos)
        for block in self.blocks:
            x = block(x)
        return F.linear(self.ln_f(x), self.tok_emb.weight)  # tied output head


@register("transformer")
class TransformerFamily(ModelFamily):
    """Decoder-only LMs; data unit: tokens; losses in nats per token."""

    tag = "tfm"  # prefix of trial ids
    data_unit = DataUnit.TOKENS
    loss_unit = "nats/token"
    metrics = (Metric("loss", "nats/token", "held-out next-token cross-entropy, token-weighted"),
               Metric("bits_per_token", "bits/token", "the same loss in bits"))
    size_type, options_type, shape_type = TransformerSize, TransformerOptions, TransformerShape
    supports_probes = True

    def build(self, shape: TransformerShape) -> nn.Module:
        return TransformerLM(shape)

    def loss(self, model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy (nats/token) on ``batch`` of shape [B, T+1]."""
        logits = model(batch[:, :-1])
        return F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[torch.Tensor]) -> dict[str, float]:
        """Exact token-weighted mean loss over every batch (nats/token) and bits per token."""
        total, count = 0.0, 0
        for batch in batches:
            logits = model(batch[:, :-1])
            targets = batch[:, 1:]
            total += F.cross_entropy(
                logits.float().flatten(0, 1), targets.flatten(), reduction="sum"
            ).item()
            count += targets.numel()
        if count == 0:
            raise ValueError("evaluation got no tokens")
        loss = total / count
        return {"loss": loss, "bits_per_token": loss / math.log(2)}

    def num_params(self, shape: TransformerShape) -> ParamCount:
        d, L, V, T = shape.d_model, shape.n_layers, shape.vocab, shape.context
        per_block = (
            2 * 2 * d  # two layer norms (weight and bias)
            + 3 * d * d + 3 * d  # qkv
            + d * d + d  # attention output projection
            + 4 * d * d + 4 * d + 4 * d * d + d  # MLP
        )
        scaling = L * per_block + 2 * d  # + final layer norm
        return ParamCount(scaling=scaling, total=scaling + V * d + T * d)

    def flops_per_unit(self, shape: TransformerShape) -> float:
        """Training FLOPs per token: 6·N + 12·L·T·d + 6·d·V (see the module docstring)."""
        n = self.num_params(shape).scaling
        d, L, V, T = shape.d_model, shape.n_layers, shape.vocab, shape.context
        return float(6 * n + 12 * L * T * d + 6 * d * V)

    def activation_bytes(self, shape: TransformerShape, micro_batch: int, half: bool) -> float:
        """L·T·b·d·34 bytes in 16-bit (Korthikanti et al. 2022, without recomputation and without
        the T² attention scores, which fused attention does not keep), twice that in fp32, plus
        the fp32 logits 4·T·b·V."""
        t, b = shape.context, micro_batch
        return shape.n_layers * 34 * t * b * shape.d_model * (1 if half else 2) + 4 * t * b * shape.vocab

    def next_token_logits(self, model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        return model(tokens)

    def example_batch(self, shape: TransformerShape, batch_size: int) -> torch.Tensor:
        return torch.randint(0, shape.vocab, (batch_size, shape.context + 1))

    def tiny(self) -> TransformerShape:
        return TransformerShape(d_model=32, n_layers=2, n_heads=2, context=32, vocab=256)

    def shape_from_params(self, target: int, options: TransformerOptions, data: DataShape) -> TransformerShape:
        """Shape with N ≈ ``target`` from the rule d_model ≈ aspect_ratio · n_layers.

        With N ≈ 12·L·d² and d = r·L: L = round((N / (12 r²))^(1/3)) (at least 1), then
        d = sqrt(N / (12 L)) rounded to a multiple of ``head_dim`` (at least one head).
        """
        if target < 1:
            raise ValueError(f"target parameter count must be positive, got {target}")
        r, head_dim = options.aspect_ratio, options.head_dim
        n_layers = max(1, round((target / (12 * r**2)) ** (1 / 3)))
        d_model = max(head_dim, head_dim * round(math.sqrt(target / (12 * n_layers)) / head_dim))
        return TransformerShape(d_model=d_model, n_layers=n_layers, n_heads=d_model // head_dim,
                                context=data.context, vocab=data.vocab)
