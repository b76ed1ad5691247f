"""Character-level language modelling on text that ships with Python, for the optimizer study.

The corpus is the Python reference documentation that every CPython installation carries for
``help()`` (``pydoc_data.topics``: about 0.47 M characters of English prose and code examples,
the text of each topic in sorted order; its exact size depends on the Python version). It is
read as ASCII bytes (anything else becomes ``?``), 128 symbols. The first 90% is the training
text, the rest the validation text.

- ``char_text``: a task whose mini-batches are ``batch_size`` windows of ``length`` characters
  drawn at random offsets of the training text, inputs (batch, length) int64 and targets the
  next characters, flattened to (batch * length,); ``test_batches`` cuts the validation text
  into consecutive windows (at most ``validation_windows``). Loss: cross-entropy per character
  in nats (divide by ln 2 for bits per character).
- ``char_gpt`` / ``char_lstm``: networks mapping (batch, length) to logits (batch * length,
  vocab), so that the supervised runs' cross-entropy and accuracy are per character.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from hesscale.experiments.tasks import TaskSettings

VOCAB = 128
VALIDATION_FRACTION = 0.1


@functools.cache
def corpus() -> Tensor:
    """The whole text as int64 character codes in [0, 128)."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[name] for name in sorted(topics))
    data = text.encode("ascii", errors="replace")  # non-ASCII -> b"?"
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).to(torch.int64)


def split() -> tuple[Tensor, Tensor]:
    """(training text, validation text)."""
    data = corpus()
    cut = int(len(data) * (1 - VALIDATION_FRACTION))
    return data[:cut], data[cut:]


class CharText:
    """Windows of the training text at random offsets (see the module docstring)."""

    n_outputs = VOCAB

    def __init__(self, settings: TaskSettings, length: int = 64, validation_windows: int = 256):
        if length < 1 or validation_windows < 1:
            raise ValueError(
                f"char_text: need length >= 1 and validation_windows >= 1, got {length}, "
                f"{validation_windows}."
            )
        self.train, self.validation = split()
        self.length, self.batch_size = length, settings.batch_size
        self.validation_windows = validation_windows
        self.input_shape = (length,)
        self._generator = torch.Generator().manual_seed(settings.seed)

    def next_batch(self) -> tuple[Tensor, Tensor]:
        starts = torch.randint(
            0, len(self.train) - self.length, (self.batch_size,), generator=self._generator
        )
        return self._windows(self.train, starts)

    def _windows(self, text: Tensor, starts: Tensor) -> tuple[Tensor, Tensor]:
        index = starts[:, None] + torch.arange(self.length + 1)
        chunk = text[index]
        return chunk[:, :-1], chunk[:, 1:].flatten()

    def test_batches(self, batch_size: int = 64) -> Iterator[tuple[Tensor, Tensor]]:
        count = min(self.validation_windows, (len(self.validation) - 1) // self.length)
        starts = torch.arange(count) * self.length
        for first in range(0, count, batch_size):
            yield self._windows(self.validation, starts[first : first + batch_size])

    def describe(self) -> dict[str, Any]:
        return {
            "name": "char_text",
            "corpus": "pydoc_data.topics",
            "characters": len(corpus()),
            "length": self.length,
            "batch_size": self.batch_size,
            "validation_characters": self.length
            * min(self.validation_windows, (len(self.validation) - 1) // self.length),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self._generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._generator.set_state(state["generator"])


def char_text(settings: TaskSettings, /, length: int = 64, validation_windows: int = 256):
    """The char_text task of the module docstring."""
    return CharText(settings, length, validation_windows)


class CharGPT(nn.Module):
    """hesscale.experiments.transformer.GPT over the 128 characters, its logits flattened to
    (batch * length, vocab). Initialised as GPT-2 (std 0.02). ``fused=False`` writes the
    attention out (AdaHessian's Hessian-vector products need that on CPU)."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        n_outputs: int,
        width: int = 64,
        depth: int = 2,
        heads: int = 4,
        fused: bool = True,
    ) -> None:
        from hesscale.experiments.transformer import GPT

        super().__init__()
        (length,) = input_shape
        self.gpt = GPT(n_outputs, length, width, depth, heads, fused)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.gpt(tokens).flatten(0, 1)


class CharLSTM(nn.Module):
    """Embedding -> ``depth`` LSTM layers of ``width`` -> linear, logits flattened to
    (batch * length, vocab)."""

    def __init__(
        self, input_shape: tuple[int, ...], n_outputs: int, width: int = 64, depth: int = 1
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_outputs, width)
        self.lstm = nn.LSTM(width, width, depth, batch_first=True)
        self.head = nn.Linear(width, n_outputs)

    def forward(self, tokens: Tensor) -> Tensor:
        out, _ = self.lstm(self.embedding(tokens))
        return self.head(out).flatten(0, 1)
