#!/usr/bin/env python3
"""Is the sample test right? For every text frame: the model's and the best fallback's size on
the sample the encoder tests, and on the whole frame (what the choice would have been with
perfect knowledge).

    python benchmarks/frame_choice.py [--model embedded] [--frame-size 1M] FILE_OR_DIR...

One JSON line per text frame: file, offset, length, sample ratio (model / best fallback on the
sample), whole ratio (model / best fallback on the whole frame), the decision the encoder
takes (``lm`` when the sample ratio is under ``LM_SAMPLE_MARGIN``) and whether it was right.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from llmzip import codec  # noqa: E402
from llmzip.frames import coding, lm, methods, split  # noqa: E402
from llmzip.model import load_model  # noqa: E402
from compressors import files_of  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--model", default="embedded")
    p.add_argument("--frame-size", type=int, default=coding.DEFAULT_FRAME_SIZE)
    args = p.parse_args()
    model = load_model(args.model)
    for path in files_of(args.paths):
        data = path.read_bytes()
        for span in split.plan(data, args.frame_size):
            if span.kind != split.TEXT:
                continue
            frame = data[span.offset:span.offset + span.length]
            n = coding.sample_size(len(frame))
            sample = frame[:n]
            lm_sample = len(lm.encode(sample, model, codec.DEFAULT_MIX, None, codec.Settings()))
            fb_sample = len(methods.best_fallback(sample)[1])
            lm_whole = len(lm.encode(frame, model, codec.DEFAULT_MIX, None, codec.Settings()))
            fb_method, fb_whole = methods.best_fallback(frame)
            decision = "lm" if lm_sample < coding.LM_SAMPLE_MARGIN * fb_sample else methods.name(fb_method)
            best = "lm" if lm_whole < len(fb_whole) else methods.name(fb_method)
            print(json.dumps({"file": path.name, "offset": span.offset, "length": span.length, "sample": n,
                              "sample_ratio": round(lm_sample / fb_sample, 3),
                              "whole_ratio": round(lm_whole / len(fb_whole), 3),
                              "decision": decision, "best": best, "right": decision == best}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
