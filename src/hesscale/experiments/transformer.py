"""A small GPT-style language model (token and position embeddings, pre-norm blocks with
causal self-attention and a GELU MLP, the output layer tied to the token embedding), written
with the functional operations such models use: ``F.scaled_dot_product_attention``,
``F.layer_norm`` via nn.LayerNorm, reshapes and transposes between them; and a small
transformer classifier of images (``RowTransformer``, for the approximation-quality study)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SelfAttention(nn.Module):
    """Multi-head self-attention: softmax(q k^T / sqrt(d)) v per head (``causal``: each token
    attends to itself and earlier ones), then an output projection.

    ``fused``: with ``F.scaled_dot_product_attention`` (one fused autograd node); otherwise
    written out as its primitive operations, which the approximation-quality study needs: the
    CPU flash-attention kernel has no second derivative, so exact Hessian-vector products
    cannot go through it."""

    def __init__(self, width: int, heads: int, causal: bool = False, fused: bool = True) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads, self.causal, self.fused = heads, causal, fused
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(x).split(width, dim=2)
        q, k, v = (t.view(batch, length, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        if self.fused:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        else:
            scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
            if self.causal:
                later = torch.ones(length, length, dtype=torch.bool, device=x.device).triu_(1)
                scores = scores.masked_fill(later, -math.inf)
            y = scores.softmax(dim=-1) @ v
        return self.proj(y.transpose(1, 2).reshape(batch, length, width))


class Block(nn.Module):
    """Pre-norm transformer block: x + attention(LN(x)), then x + MLP(LN(x)) with a GELU MLP
    of 4 x width hidden units."""

    def __init__(self, width: int, heads: int, causal: bool = False, fused: bool = True) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attention = SelfAttention(width, heads, causal, fused)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    """tokens (batch, length) -> logits (batch, length, vocab).

    Initialised as GPT-2: every linear and embedding weight ~ N(0, 0.02^2), the projections
    that write into the residual stream (attention output, second MLP layer) ~ N(0, (0.02 /
    sqrt(2 depth))^2), biases 0, LayerNorm 1 and 0. The initial logits are then near 0 and the
    loss near ln(vocab); torch's default N(0, 1) embedding, tied to the output, would give
    logits of standard deviation ~ sqrt(width)."""

    def __init__(
        self,
        vocab: int = 512,
        length: int = 64,
        width: int = 128,
        depth: int = 2,
        heads: int = 4,
        fused: bool = True,
    ) -> None:
        """``fused``: attention by ``F.scaled_dot_product_attention`` (else written out, which
        Hessian-vector products, e.g. AdaHessian's, need on CPU; see SelfAttention)."""
        super().__init__()
        self.tokens = nn.Embedding(vocab, width)
        self.positions = nn.Embedding(length, width)
        blocks = (Block(width, heads, causal=True, fused=fused) for _ in range(depth))
        self.blocks = nn.Sequential(*blocks)
        self.norm = nn.LayerNorm(width)
        self.reset_parameters()

    def reset_parameters(self, std: float = 0.02) -> None:
        """The GPT-2 initialisation of the class docstring."""
        residual = {block.attention.proj.weight for block in self.blocks}
        residual |= {block.mlp[2].weight for block in self.blocks}
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                scale = 1 / math.sqrt(2 * len(self.blocks)) if module.weight in residual else 1
                nn.init.normal_(module.weight, std=std * scale)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, tokens: Tensor) -> Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.tokens(tokens) + self.positions(positions)
        x = self.norm(self.blocks(x))
        return F.linear(x, self.tokens.weight)  # tied to the token embedding


class SequenceCrossEntropy(nn.Module):
    """Cross-entropy of next-token logits (batch, length, vocab) against (batch, length)."""

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


class RowTransformer(nn.Module):
    """A small transformer classifier of images (C, H, W) read as H tokens, one per row of
    C x W pixels: linear token embedding + learned position embedding, ``depth`` pre-norm
    blocks (``Block``, ``heads`` attention heads written out as primitive operations), a final
    LayerNorm, the mean over tokens, a linear head. Inputs may come flattened, (batch, C*H*W).
    For 8x8 digits with width 16 and 1 block: 3,754 parameters."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        n_outputs: int,
        width: int = 16,
        depth: int = 1,
        heads: int = 2,
    ) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"RowTransformer needs image inputs (C, H, W), got {input_shape}")
        if width < 1 or depth < 0:
            raise ValueError(f"RowTransformer: width >= 1 and depth >= 0, got {width}, {depth}")
        channels, self.length, columns = input_shape
        self.image_shape = tuple(input_shape)
        self.embed = nn.Linear(channels * columns, width)
        self.positions = nn.Embedding(self.length, width)
        self.blocks = nn.Sequential(*(Block(width, heads, fused=False) for _ in range(depth)))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, n_outputs)

    def forward(self, x: Tensor) -> Tensor:
        images = x.reshape(-1, *self.image_shape)  # (batch, C, H, W)
        rows = images.permute(0, 2, 1, 3).flatten(2)  # (batch, H, C*W): one token per row
        positions = torch.arange(self.length, device=x.device)
        h = self.embed(rows) + self.positions(positions)
        h = self.norm(self.blocks(h))
        return self.head(h.mean(dim=1))
