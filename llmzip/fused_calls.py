"""Calling the fused kernels: numpy arrays and numbers in, numpy arrays out, each call by the
compiled kernel that fits it (:mod:`llmzip.fused_aot`) or else by the same torch operations run
eagerly (:mod:`llmzip.fused_torch`).

A compiled kernel fits a call only if the call looks like the example it was built from: the same
dtypes and ranks, C-contiguous inputs (every input is made so first), and the same relations
between sizes (the sizes that are equal in its example, no broadcasting, the engine's fixed tables
at their length). It is not told otherwise: on a call unlike its example it computes wrong numbers
or reads out of bounds, silently. So :data:`SHAPES` states each kernel's size relations and a call
that breaks one runs eagerly (where torch broadcasts or raises, as the reference would).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch

from . import fused_torch

Signature = tuple[tuple[str, int], ...]   # (dtype, rank) of each argument


def signature(args: Sequence[torch.Tensor]) -> Signature:
    return tuple((str(a.dtype).removeprefix("torch."), a.dim()) for a in args)


def tensor(a: Any) -> torch.Tensor:
    """A C-contiguous tensor of ``a`` (a numpy array shares its memory when it is contiguous; a number
    becomes a 0-d int64, float64 or bool tensor)."""
    if isinstance(a, torch.Tensor):
        return a.contiguous()
    if isinstance(a, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(a))
    a = a.item() if isinstance(a, np.generic) else a
    kind = "bool" if isinstance(a, bool) else "int" if isinstance(a, int) else "float"
    return _number(kind, a, str(a))


@functools.lru_cache(maxsize=1024)
def _number(kind: str, value: Any, text: str) -> torch.Tensor:
    """The 0-d tensor of a number, kept: the engine passes the same few constants at every call, and
    building a tensor costs more than a small kernel (the kernels never write these inputs). Keyed by
    the text too, which tells -0.0 from 0.0."""
    dtype = {"bool": torch.bool, "int": torch.int64, "float": torch.float64}[kind]
    return torch.tensor(value, dtype=dtype)


def _linear(x: torch.Tensor, w: torch.Tensor, factor: torch.Tensor, bias: torch.Tensor) -> bool:
    return x.shape[1] == w.shape[0] and factor.shape == bias.shape == w.shape[1:]


def _attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, value_exp: torch.Tensor,
            top: torch.Tensor, add: torch.Tensor, table: torch.Tensor) -> bool:
    lead = q.shape[:2]
    return (keys.shape == values.shape and keys.shape[:2] == lead and keys.shape[3] == q.shape[3]
            and value_exp.shape == keys.shape[:3] and top.shape == q.shape[:3]
            and add.shape[-1] <= keys.shape[2] and (add.dim() == 1 or add.shape[0] == q.shape[2]))


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *_: torch.Tensor) -> bool:
    return x.shape[3] % 2 == 0 and cos.shape == sin.shape == (x.shape[1], x.shape[3] // 2)


SHAPES: dict[str, Callable[..., bool]] = {   # the size relations a compiled kernel assumes
    "linear8": _linear, "linear8_int": _linear, "attend": _attend, "rotate": _rotate,
}


class Compiled(Protocol):
    def __call__(self, args: Sequence[torch.Tensor]) -> list[torch.Tensor]: ...


class Dispatcher:
    """Runs each call by the compiled kernel of its name and signature where the call fits it, else
    eagerly. ``fixed``: the sizes of the arguments a kernel was built with at a fixed length."""

    def __init__(self, kernels: dict[tuple[str, Signature], Compiled],
                 fixed: dict[tuple[str, Signature], dict[int, tuple[int, ...]]]) -> None:
        self._kernels, self._fixed = kernels, fixed
        self.eager_calls = 0    # calls no compiled kernel fitted (approximate under threads)

    def run(self, name: str, args: Sequence[Any]) -> list[torch.Tensor]:
        tensors = [tensor(a) for a in args]
        key = (name, signature(tensors))
        kernel = self._kernels.get(key)
        if kernel is not None and self._fits(key, tensors):
            try:
                return kernel(tensors)
            except RuntimeError:   # the same operations, eagerly, give the integers or torch's own error
                pass
        self.eager_calls += 1
        return eager(name, tensors)

    def _fits(self, key: tuple[str, Signature], tensors: list[torch.Tensor]) -> bool:
        fixed = self._fixed.get(key, {})
        return (all(t.numel() for t in tensors) and all(tuple(tensors[i].shape) == s for i, s in fixed.items())
                and SHAPES[key[0]](*tensors))


def eager(name: str, args: Sequence[Any]) -> list[torch.Tensor]:
    """Kernel ``name`` as plain torch operations (the same integers, slower)."""
    out = fused_torch.KERNELS[name](*[tensor(a) for a in args])
    return list(out) if isinstance(out, tuple) else [out]


Run = Callable[[str, Sequence[Any]], list[torch.Tensor]]


def numpy_kernels(run: Run) -> dict[str, Callable[..., Any]]:
    """The kernels as the engine calls them (numpy arrays and numbers in, numpy arrays out), each
    a call of ``run`` (:meth:`Dispatcher.run` or :func:`eager`)."""
    def single(name: str) -> Callable[..., np.ndarray]:
        return lambda *args: run(name, args)[0].numpy()

    def attend(q: np.ndarray, keys: np.ndarray, values: np.ndarray, value_exp: np.ndarray, end: int,
               top: np.ndarray, add: np.ndarray, table: np.ndarray) -> np.ndarray:
        assert add.shape[-1] == end, "the mask spans the positions read"
        return run("attend", (q, keys, values, value_exp, top, add, table))[0].numpy()

    def attend_step(q: np.ndarray, keys: np.ndarray, values: np.ndarray, value_exp: np.ndarray, end: int,
                    top: np.ndarray, table: np.ndarray) -> np.ndarray:
        return run("attend", (q, keys, values, value_exp, top, _halves(end), table))[0].numpy()

    def rotate(qkv: np.ndarray, cos: np.ndarray, sin: np.ndarray, heads: int, frac: int, clip: int) -> np.ndarray:
        # Rotates every head (the value heads too, unused): one contiguous input, no copy of a slice.
        return run("rotate", (qkv, cos, sin, frac, clip))[0].numpy()[:, :, :heads]

    return {"linear8": single("linear8"), "linear8_int": single("linear8_int"), "attend": attend,
            "attend_step": attend_step, "rotate": rotate}


_HALVES = [np.zeros(0)]   # the longest row of halves asked for so far (read-only)


def _halves(end: int) -> np.ndarray:
    """(end,) halves: a decoding step's rounding, every key visible. One array, grown as needed and
    sliced (a contiguous view), rather than one per length (read once: a thread growing it meanwhile
    cannot shorten the view)."""
    held = _HALVES[0]
    if len(held) < end:
        held = np.full(max(end, 2 * len(held)), 0.5)
        held.setflags(write=False)
        _HALVES[0] = held
    return held[:end]
