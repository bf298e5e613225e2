"""Where a codec call's CPU time goes: explicit per-stage timers patched around llmzip's functions.

    with StageTimer() as timer:
        codec.compress(data, model)
    timer.seconds()   # {stage: CPU seconds}, every stage of STAGES, "other" the remainder

While the ``with`` block runs, the functions listed in ``_PATCHES`` are replaced by wrappers
that charge the calling thread's CPU time (``time.thread_time_ns``) to a stage. Time is
exclusive: a stage entered inside another pauses the outer one, so nothing is counted twice
(the int8 GEMM inside a linear layer is ``linear_gemm``, the rest of the layer
``linear_other``). Every thread keeps its own stack, so worker threads' forward passes and the
main thread's mixing and coding are each charged where they run; the sum over threads is CPU
time, which on two busy cores can exceed the wall time. ``other`` is the process's CPU time
(``time.process_time``) minus every stage: the lockstep loop, thread hand-offs, the container,
checksums. A wrapped call costs about a microsecond and two clock reads: compare the
instrumented run's time with an uninstrumented one to see the overhead.
"""

from __future__ import annotations

import functools
import threading
import time
from typing import Any, Callable

from llmzip import coder, linear8, lockstep, mix, predictor, quantize, tokens
from llmzip.engine import common, gpt2, legacy, llama

STAGES = ("linear_gemm", "linear_other", "head_gemm", "head_other", "attention", "norms_activations",
          "engine_other", "quantiser", "mixer", "coder", "tokenizer", "other")
DESCRIPTIONS = {
    "linear_gemm": "int8 GEMMs of the linear layers (torch._int_mm or float64 GEMM, int32 -> float64)",
    "linear_other": "linear layers around the GEMM: activation rows to int8, dequantise, bias, floor, and what "
                    "follows the layer (the residual add and clip, or the clip and activation table)",
    "head_gemm": "int8 GEMM of the output head",
    "head_other": "output head around the GEMM (quantise, dequantise)",
    "attention": "attention: q/k/v reshapes, rotary, int8 KV cache, scores, softmax table, weighted values",
    "norms_activations": "LayerNorm / RMSNorm, SwiGLU, activation tables looked up apart from their layer",
    "engine_other": "embeddings, clipping, predictor glue",
    "quantiser": "logits -> frequency tables, the encoder's table sums, the decoder's cumulative tables",
    "mixer": "context mixing (n-gram and match models, gates, mixture, learning)",
    "coder": "range coder (encode / decode symbols)",
    "tokenizer": "bytes <-> tokens",
    "other": "the rest: lockstep loop, thread hand-offs, container, checksums (process CPU minus the stages)",
}

# (owner, attribute, stage, stage instead when called inside the key stage)
_PATCHES: list[tuple[Any, str, str, dict[str, str]]] = [
    (linear8, "int8_matmul", "linear_gemm", {"head_other": "head_gemm"}),
    (linear8.Linear8, "_outputs", "linear_other", {"head_other": "head_other"}),
    (predictor, "head_freqs", "head_other", {}),   # with the kernels: head and quantiser at once
    (gpt2.ExactGPT2, "forward", "engine_other", {}),
    (llama.ExactLlama, "forward", "engine_other", {}),
    (gpt2.ExactGPT2, "_attention", "attention", {}),
    (llama.ExactLlama, "_attention", "attention", {}),
    (common.LayerNorm, "__call__", "norms_activations", {}),
    (common.RMSNorm, "__call__", "norms_activations", {}),
    (linear8.Linear8, "added", "linear_other", {}),       # with the residual add and clip
    (linear8.Linear8, "activated", "linear_other", {}),   # with the clip and activation table...
    (linear8, "activation_lookup", "norms_activations", {}),   # ...unless numpy looks it up apart
    (legacy, "activation_lookup", "norms_activations", {}),    # engine 1's layers
    (llama, "swiglu", "norms_activations", {}),
    (predictor.LoadedModel, "advance", "engine_other", {}),
    (quantize, "freqs_from_logits", "quantiser", {}),
    (lockstep, "table_terms", "quantiser", {}),
    (lockstep, "_decode_rows", "quantiser", {}),   # its own time: the decoder's cumulative tables
    *((mix.Mixer, name, "mixer", {}) for name in ("begin_group", "tables", "coding_terms", "prepare", "update")),
    (lockstep, "_encode_terms", "coder", {}),
    *((coder.ArithmeticEncoder, name, "coder", {}) for name in ("finish",)),
    *((coder.ArithmeticDecoder, name, "coder", {})
      for name in ("decode_rows", "decode_rows_blocked", "check_overread", "check_end")),
    (tokens.ByteTokenizer, "encode", "tokenizer", {}),
    (tokens.ByteTokenizer, "decode", "tokenizer", {}),
]


class _ThreadClock(threading.local):
    """One thread's stack of open stages and the CPU time charged so far."""

    def __init__(self) -> None:
        self.stack: list[str] = []
        self.mark = 0
        self.charged: dict[str, int] = {}


class StageTimer:
    """Context manager: patch the stage wrappers in, time, restore the originals on exit."""

    def __init__(self) -> None:
        self._clock = _ThreadClock()
        self._threads: list[dict[str, int]] = []
        self._lock = threading.Lock()
        self._saved: list[tuple[Any, str, Any]] = []
        self.cpu = 0.0
        self.wall = 0.0

    def __enter__(self) -> StageTimer:
        for owner, name, stage, inside in _PATCHES:
            original = owner.__dict__[name]
            self._saved.append((owner, name, original))
            setattr(owner, name, self._wrap(original, stage, inside))
        self.cpu, self.wall = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu, self.wall = time.process_time() - self.cpu, time.perf_counter() - self.wall
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)
        self._saved.clear()

    def seconds(self) -> dict[str, float]:
        """CPU seconds per stage (every name of STAGES), summed over threads."""
        total = {stage: 0.0 for stage in STAGES}
        with self._lock:
            for charged in self._threads:
                for stage, ns in charged.items():
                    total[stage] += ns / 1e9
        total["other"] = max(0.0, self.cpu - sum(total.values()))
        return total

    def _wrap(self, fn: Callable[..., Any], stage: str, inside: dict[str, str]) -> Callable[..., Any]:
        clock = self._clock

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if not hasattr(clock, "registered"):
                clock.registered = True
                with self._lock:
                    self._threads.append(clock.charged)
            stack = clock.stack
            now = time.thread_time_ns()
            if stack:
                clock.charged[stack[-1]] = clock.charged.get(stack[-1], 0) + now - clock.mark
            stack.append(inside.get(stack[-1], stage) if stack else stage)
            clock.mark = now
            try:
                return fn(*args, **kwargs)
            finally:
                now = time.thread_time_ns()
                top = stack.pop()
                clock.charged[top] = clock.charged.get(top, 0) + now - clock.mark
                clock.mark = now
        return timed
