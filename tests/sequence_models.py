"""Sequence models for the engine's tests and benchmarks: a nanoGPT-style GPT and recurrent
language models (embedding -> recurrent layers -> linear)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


class OneHotEmbedding(nn.Module):
    """An embedding as one_hot(indices) @ weight: the same function as nn.Embedding, recorded
    as a matrix product (for graphs that should not depend on the embedding rule)."""

    def __init__(self, num_embeddings: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_embeddings, dim))

    def forward(self, indices: Tensor) -> Tensor:
        classes = torch.arange(self.weight.shape[0], device=indices.device)
        return (indices.unsqueeze(-1) == classes).to(self.weight.dtype) @ self.weight


def embedding(num: int, dim: int, one_hot: bool) -> nn.Module:
    return OneHotEmbedding(num, dim) if one_hot else nn.Embedding(num, dim)


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.c_attn = nn.Linear(dim, 3 * dim)
        self.c_proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        batch, steps, dim = x.shape
        q, k, v = self.c_attn(x).split(dim, dim=2)
        q, k, v = (t.view(batch, steps, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(batch, steps, dim))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x)) with a GELU MLP."""

    def __init__(self, dim: int, heads: int, layer_norm: bool = True) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim) if layer_norm else nn.Identity()
        self.attn = CausalSelfAttention(dim, heads)
        self.ln_2 = nn.LayerNorm(dim) if layer_norm else nn.Identity()
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """nanoGPT-style: token + position embeddings, pre-norm blocks with causal
    scaled_dot_product_attention and a GELU MLP, a final LayerNorm, and the output weight tied
    to the token embedding. ``one_hot`` / ``layer_norm=False`` swap the embeddings / norms
    for graphs without those operations."""

    def __init__(
        self,
        vocab: int,
        block_size: int,
        dim: int,
        heads: int,
        layers: int,
        one_hot: bool = False,
        layer_norm: bool = True,
    ) -> None:
        super().__init__()
        self.wte = embedding(vocab, dim, one_hot)
        self.wpe = embedding(block_size, dim, one_hot)
        self.blocks = nn.ModuleList(Block(dim, heads, layer_norm) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim) if layer_norm else nn.Identity()
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tied

    def forward(self, indices: Tensor) -> Tensor:
        positions = torch.arange(indices.shape[1], device=indices.device)
        x = self.wte(indices) + self.wpe(positions)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


class RecurrentLM(nn.Module):
    """Embedding -> ``layers`` recurrent layers (nn.LSTM, nn.GRU or nn.RNN) -> linear."""

    def __init__(
        self,
        kind: str,
        vocab: int,
        dim: int,
        hidden: int,
        layers: int = 2,
        batch_first: bool = True,
        one_hot: bool = False,
        **options,
    ) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.embedding = embedding(vocab, dim, one_hot)
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[kind]
        self.rnn = rnn(dim, hidden, layers, batch_first=batch_first, **options)
        directions = 2 if options.get("bidirectional") else 1
        self.head = nn.Linear((options.get("proj_size") or hidden) * directions, vocab)

    def forward(self, indices: Tensor) -> Tensor:
        """``indices`` (batch, time) when batch_first, else (time, batch)."""
        out, _ = self.rnn(self.embedding(indices))
        return self.head(out)


def lm_loss(logits: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
