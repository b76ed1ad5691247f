"""Sequence models for the engine's tests and benchmarks: the package's GPT with test variants,
and recurrent language models (embedding -> recurrent layers -> linear)."""

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


def gpt(
    vocab: int,
    block_size: int,
    dim: int,
    heads: int,
    layers: int,
    one_hot: bool = False,
    layer_norm: bool = True,
) -> nn.Module:
    """hesscale.experiments.transformer.GPT (nanoGPT-style: token + position embeddings,
    pre-norm blocks with causal scaled_dot_product_attention and a GELU MLP, a final LayerNorm,
    the output weight tied to the token embedding); ``one_hot`` / ``layer_norm=False`` swap the
    embeddings / norms for graphs without those operations."""
    from hesscale.experiments.transformer import GPT

    model = GPT(vocab, block_size, dim, layers, heads)
    if one_hot:
        model.tokens, model.positions = (
            OneHotEmbedding(vocab, dim),
            OneHotEmbedding(block_size, dim),
        )
    if not layer_norm:
        model.norm = nn.Identity()
        for block in model.blocks:
            block.norm1, block.norm2 = nn.Identity(), nn.Identity()
    return model


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
