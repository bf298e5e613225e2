"""Code one frame (choosing its method) and decode one frame.

Choosing: every frame is coded with each fallback (they are fast), and the smallest payload
is the one to beat; stored bounds it by the frame's size. A frame the content test calls
binary never sees the model. For a text frame the model first codes a sample (the frame's
first ``sample_size`` bytes) beside the best fallback on the same sample; only when the model
wins the sample does it code the whole frame, and its payload is kept only if it is smaller
than the best fallback's. Measured (``benchmarks/frame_choice.py``, embedded model): on every
text frame of the corpus and the mixed set the model's sample was 0.56-0.79 of the best
fallback's where it won the whole frame, 1.09 where it lost (a CSV of stock prices). So a
frame is never larger than the best fallback tried on it, and the model's time goes to frames
it can win. Frames that zlib cannot shrink anywhere (random, compressed) are stored at once.
"""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable

from .. import codec
from ..errors import CorruptArchiveError, FrameError, UnsupportedFormatError
from . import lm, methods
from .format import Frame, FrameInfo, checksum
from .split import TEXT

DEFAULT_FRAME_SIZE = 1 << 20
SAMPLE_MIN, SAMPLE_MAX = 4096, 16384   # model sample: 1/32 of the frame, within these bounds
LM_SAMPLE_MARGIN = 1.0                 # the model codes the frame only if it beats the fallbacks on the sample

PROBES, PROBE_SIZE = 8, 4096            # incompressible(): 8 slices of 4 KiB
ModelSource = Callable[[], Any]        # loads the model for compression (called at most once)


FALLBACK_NAMES = tuple(methods.NAMES[m] for m in methods.FALLBACKS)


@dataclass
class Options:
    """How to code frames. ``method``: ``"auto"`` or a method name to force on every frame.

    What ``"auto"`` tries (compression levels restrict it, :mod:`llmzip.levels`): the fallbacks
    named in ``fallbacks`` (stored is always among them, so no frame grows beyond its framing),
    and the model on text frames unless ``try_model`` is false (then the model is never loaded).
    """

    frame_size: int = DEFAULT_FRAME_SIZE
    method: str = "auto"
    content_aware: bool = True
    fallbacks: tuple[str, ...] = FALLBACK_NAMES
    try_model: bool = True
    mixing: codec.MixParams | None = codec.DEFAULT_MIX
    chunk_tokens: int | None = None
    settings: codec.Settings = field(default_factory=codec.Settings)
    verify: bool = False               # decode each frame after coding it and compare

    def __post_init__(self) -> None:
        if self.method != "auto" and self.method not in methods.IDS:
            raise ValueError(f"unknown method {self.method!r} (known: auto, {', '.join(methods.IDS)})")
        if not 1 <= self.frame_size <= 1 << 30:
            raise ValueError("frame_size must be in [1, 2^30]")
        unknown = set(self.fallbacks) - set(FALLBACK_NAMES)
        if unknown:
            raise ValueError(f"unknown fallbacks {sorted(unknown)} (known: {', '.join(FALLBACK_NAMES)})")

    def fallback_ids(self) -> tuple[int, ...]:
        return tuple(sorted({methods.STORED, *(methods.IDS[name] for name in self.fallbacks)}))


class LazyModel:
    """The compression model, loaded on first use: binary inputs never load it."""

    def __init__(self, source: ModelSource) -> None:
        self._source, self._model = source, None

    def __call__(self) -> Any:
        if self._model is None:
            self._model = self._source()
        return self._model


def sample_size(length: int) -> int:
    return min(length, max(SAMPLE_MIN, min(SAMPLE_MAX, length // 32)))


def incompressible(data: bytes) -> bool:
    """True when zlib at level 1 cannot shrink any of ``PROBES`` slices spread over ``data``
    (random, encrypted or already compressed data): such a frame is stored without trying the
    fallbacks, which never shrank such data in our measurements either (README, "Frames")."""
    if len(data) < PROBES * PROBE_SIZE:
        return False
    step = (len(data) - PROBE_SIZE) // (PROBES - 1)
    return all(len(zlib.compress(data[i * step:i * step + PROBE_SIZE], 1)) >= PROBE_SIZE for i in range(PROBES))


def _lm_payload(data: bytes, model: LazyModel, options: Options, sample: bool = False) -> bytes:
    # a sample is a trial: it is not the archive's, so it feeds no statistics and no progress bar
    settings = dataclasses.replace(options.settings, stats=None, progress=None) if sample else options.settings
    return lm.encode(data, model(), options.mixing, options.chunk_tokens, settings)


def _choose(data: bytes, kind: str, model: LazyModel, options: Options) -> tuple[int, bytes]:
    if options.method == "lm":
        return methods.LM, _lm_payload(data, model, options)
    if options.method != "auto":
        forced = methods.IDS[options.method]
        return forced, methods.FALLBACKS[forced].encode(data)
    if kind != TEXT and incompressible(data):
        return methods.STORED, data
    tried = options.fallback_ids()
    best = methods.best_fallback(data, tried)
    if kind != TEXT or not options.try_model:
        return best
    n = sample_size(len(data))
    sample = data[:n]
    if n == len(data):
        whole = _lm_payload(data, model, options)
        return (methods.LM, whole) if len(whole) < len(best[1]) else best
    lm_sample = _lm_payload(sample, model, options, sample=True)
    if len(lm_sample) >= LM_SAMPLE_MARGIN * len(methods.best_fallback(sample, tried)[1]):
        return best
    whole = _lm_payload(data, model, options)
    return (methods.LM, whole) if len(whole) < len(best[1]) else best


def encode_frame(data: bytes, kind: str = TEXT, model: ModelSource | None = None,
                 options: Options | None = None) -> Frame:
    """Code one frame of ``data`` (1 byte .. 1 GiB) with the method chosen for it.

    ``kind`` is the planner's content test (:func:`llmzip.frames.plan`); ``model`` loads the
    model when a text frame needs it (default: the embedded model).
    """
    options = options or Options()
    lazy = model if isinstance(model, LazyModel) else LazyModel(model or _embedded)
    method, payload = _choose(data, kind, lazy, options)
    frame = Frame(method, len(data), checksum(data), payload)
    if options.verify and decode_frame(frame, lambda _: lazy(), options.settings) != data:
        raise CorruptArchiveError("verification failed: a frame does not decode to its input")
    return frame


def _embedded() -> Any:
    from ..model import load_model

    return load_model(None)


def decode_frame(frame: Frame, model_for: lm.ModelFor | None = None,
                 settings: codec.Settings | None = None, info: FrameInfo | None = None) -> bytes:
    """The original bytes of ``frame``, checked against its checksum.

    ``model_for(model_id)`` gives the model an LM frame names (default: :func:`load_model`).
    Errors name the frame when ``info`` says where it is.
    """
    where = info or FrameInfo(0, 0, 0, frame.method, frame.raw_size, len(frame.payload))
    try:
        methods.check_known(frame.method)
    except UnsupportedFormatError as exc:
        raise UnsupportedFormatError(f"frame {where.index} at offset {where.offset}: {exc}") from None
    try:
        if frame.method == methods.LM:
            data = lm.decode(frame.payload, frame.raw_size, frame.checksum, model_for or _load_named,
                             settings or codec.Settings())
        else:
            data = methods.decode_fallback(frame.method, frame.payload, frame.raw_size)
    except (methods.DecodeFailed, CorruptArchiveError) as exc:
        raise FrameError(f"{methods.name(frame.method)}: {exc}", where.index, where.offset) from None
    except UnsupportedFormatError as exc:
        raise UnsupportedFormatError(f"frame {where.index} at offset {where.offset}: {exc}") from None
    if checksum(data) != frame.checksum:
        raise FrameError("checksum mismatch: the decoded data is not the original", where.index, where.offset)
    return data


def _load_named(model_id: str) -> Any:
    from ..model import load_model

    return load_model(model_id)
