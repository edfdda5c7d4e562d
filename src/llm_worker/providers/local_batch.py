"""Sequences that decode together in one left-padded batch with a shared KV cache.

No threads, no model: :class:`Batch` holds the cache, the attention mask and,
for each row, the token and position of its next input. A row joins with the
cache of its prompt, run alone; the shorter side is padded on the left and
masked out, so every row sees exactly its own tokens. A step feeds one token
per row (:meth:`Batch.inputs`), each at its own position, and the caller
reports the tokens it chose (:meth:`Batch.advance`). Rows leave with
:meth:`Batch.retire`, and padding that no row needs any more goes with them.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Generic, TypeVar

import torch

Row = TypeVar("Row")


class Batch(Generic[Row]):
    """Rows (whatever the caller keeps for each sequence), in the cache's order.

    The attention mask has a column per cached token (1 for a row's own, 0 for
    padding) and one more, for the inputs of the next step.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.rows: list[Row] = []
        self.cache: Any = None
        self._mask: torch.Tensor | None = None
        self._tokens: list[int] = []
        self._positions: list[int] = []
        """Each row's real tokens in the cache: the position of its next input."""

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def width(self) -> int:
        """Cached tokens per row, padding included."""
        return 0 if self._mask is None else self._mask.shape[1] - 1

    def add(self, row: Row, cache: Any, token: int) -> None:
        """Merge a row whose prompt ran alone into ``cache`` (a batch of one), with
        ``token`` its next input."""
        length = cache.get_seq_length()
        new_mask = torch.ones(1, length + 1, dtype=torch.long, device=self.device)
        if self._mask is None:
            self.cache = cache
            self._mask = new_mask
        else:
            target = max(self.width, length)
            for batch_layer, new_layer in zip(self.cache.layers, cache.layers, strict=True):
                batch_layer.keys = torch.cat(
                    [_pad_left(batch_layer.keys, target, 2), _pad_left(new_layer.keys, target, 2)]
                )
                batch_layer.values = torch.cat(
                    [
                        _pad_left(batch_layer.values, target, 2),
                        _pad_left(new_layer.values, target, 2),
                    ]
                )
            self._mask = torch.cat(
                [_pad_left(self._mask, target + 1, 1), _pad_left(new_mask, target + 1, 1)]
            )
        self.rows.append(row)
        self._tokens.append(token)
        self._positions.append(length)

    def inputs(self) -> dict[str, torch.Tensor]:
        """The next step's ``input_ids``, ``position_ids`` and ``attention_mask``; the
        cache (:attr:`cache`) goes with them."""
        assert self._mask is not None, "an empty batch has no step"
        return {
            "input_ids": torch.tensor([[token] for token in self._tokens], device=self.device),
            "position_ids": torch.tensor(
                [[position] for position in self._positions], device=self.device
            ),
            "attention_mask": self._mask,
        }

    def advance(self, tokens: list[int]) -> None:
        """After a step (the cache holds its inputs): ``tokens`` are the rows' next inputs."""
        assert self._mask is not None and len(tokens) == len(self.rows)
        self._tokens = tokens
        self._positions = [position + 1 for position in self._positions]
        self._mask = torch.cat([self._mask, self._mask.new_ones(len(tokens), 1)], 1)

    def retire(self, indexes: Collection[int]) -> None:
        """Drop the rows at ``indexes``, and the padding no remaining row needs."""
        keep = [i for i in range(len(self.rows)) if i not in indexes]
        if not keep:
            self.clear()
            return
        assert self._mask is not None
        self.rows = [self.rows[i] for i in keep]
        self._tokens = [self._tokens[i] for i in keep]
        self._positions = [self._positions[i] for i in keep]
        kept = torch.tensor(keep, device=self.device)
        mask = self._mask[kept]
        # Columns that are padding for every remaining row are dead weight.
        first = int(mask.any(0).nonzero()[0])
        for layer in self.cache.layers:
            layer.keys = layer.keys[kept][:, :, first:]
            layer.values = layer.values[kept][:, :, first:]
        self._mask = mask[:, first:]

    def clear(self) -> None:
        """Drop every row."""
        self.rows = []
        self.cache = None
        self._mask = None
        self._tokens = []
        self._positions = []


def _pad_left(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """``tensor`` with zeros before it along ``dim``, up to ``width``."""
    missing = width - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim)
