"""Typed streaming state shared by every incremental module.

A state is a frozen dataclass whose fields are tensors with the batch (stream) dimension first,
or nested states. States are values: ``stream`` returns a new state and never mutates its input.

Stacking follows icefall's ``stack_states``: streams that started at different times can be
batched because every state carries its own per-stream counters (frames processed, valid cache
length, ...). Fields whose size grows with the stream (e.g. the recompute baseline's whole
prefix) are left-aligned and right-padded with zeros when stacked; the state's own lengths say
what is valid. Fixed-size caches (Emformer, cached Conformer) stack with a plain concatenation.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

import torch
import torch.nn.functional as F

S = TypeVar("S", bound="StreamState")


def _pad_to(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    pad: list[int] = []
    for have, want in zip(reversed(x.shape[1:]), reversed(shape[1:]), strict=True):
        pad += [0, want - have]
    return F.pad(x, pad) if any(pad) else x


def _stack_values(values: list[Any]) -> Any:
    first = values[0]
    if isinstance(first, StreamState):
        return type(first).stack(values)
    if isinstance(first, torch.Tensor):
        shape = tuple(max(v.shape[i] for v in values) for i in range(first.dim()))
        return torch.cat([_pad_to(v, shape) for v in values], dim=0)
    if all(v == first for v in values):
        return first
    raise ValueError(f"cannot stack non-tensor state fields that differ: {values!r}")


def _split_value(value: Any, n: int) -> list[Any]:
    if isinstance(value, StreamState):
        return value.unstack()
    if isinstance(value, torch.Tensor):
        return list(value.split(1, dim=0))
    return [value] * n


def _index_value(value: Any, index: torch.Tensor) -> Any:
    if isinstance(value, StreamState):
        return value.select(index)
    if isinstance(value, torch.Tensor):
        return value.index_select(0, index.to(value.device))
    return value


@dataclasses.dataclass(frozen=True)
class StreamState:
    """Base class: subclasses are frozen dataclasses of batch-first tensors / nested states."""

    @classmethod
    def stack(cls: type[S], states: list[S]) -> S:
        """Concatenate states of independent streams along the batch dimension."""
        if not states:
            raise ValueError("stack() needs at least one state")
        kwargs = {
            f.name: _stack_values([getattr(s, f.name) for s in states])
            for f in dataclasses.fields(cls)
        }
        return cls(**kwargs)

    def select(self: S, index: torch.Tensor | list[int]) -> S:
        """The sub-batch of streams ``index`` (a state of ``len(index)`` streams)."""
        index = torch.as_tensor(index, dtype=torch.long)
        return type(self)(
            **{f.name: _index_value(getattr(self, f.name), index) for f in dataclasses.fields(self)}
        )

    def unstack(self: S) -> list[S]:
        """One state per stream (inverse of :meth:`stack` up to padding of growing fields).

        The per-stream tensors are views into this state's (one ``split`` per field instead of
        an ``index_select`` per field and stream): states are never mutated, so sharing storage
        is safe, and the next :meth:`stack` copies anyway."""
        n = self.batch_size
        columns = {f.name: _split_value(getattr(self, f.name), n) for f in dataclasses.fields(self)}
        return [type(self)(**{k: v[b] for k, v in columns.items()}) for b in range(n)]

    @property
    def batch_size(self) -> int:
        for value in self._values():
            if isinstance(value, StreamState):
                return value.batch_size
            if isinstance(value, torch.Tensor):
                return value.shape[0]
        raise ValueError(f"{type(self).__name__} has no tensor field")

    def nbytes(self) -> int:
        """Bytes held by all tensors of the state (all streams)."""
        total = 0
        for value in self._values():
            if isinstance(value, StreamState):
                total += value.nbytes()
            elif isinstance(value, torch.Tensor):
                total += value.numel() * value.element_size()
        return total

    def _values(self) -> list[Any]:
        return [getattr(self, f.name) for f in dataclasses.fields(self)]

    def replace(self: S, **changes: Any) -> S:
        return dataclasses.replace(self, **changes)
