#!/usr/bin/env python3
"""Pack a Llama-family model directory into llmzip's int8 layout, or unpack one to float weights.

    python scripts/pack_model.py SRC OUT            # HF layout (float weights) -> model.int8.safetensors
    python scripts/pack_model.py --unpack SRC OUT   # packed -> model.safetensors (float32, HF layout)

Packing keeps every number the exact engine computes with (see :mod:`llmzip.packed`): the script
loads both directories and refuses to finish unless their model fingerprints are equal, and it
records that fingerprint in the packed file, which every later load checks. GPT-2 models are not
packed: engine 1 quantises them to int16 rows, which int8 rows cannot rebuild.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmzip import packed  # noqa: E402
from llmzip.engine import MODEL_TYPES  # noqa: E402
from llmzip.model import _read_safetensors, _read_weights, load_model  # noqa: E402


def copy_side_files(src: Path, out: Path) -> None:
    """Everything but the weights (config, tokenizer, model card, training log)."""
    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors"):
            shutil.copyfile(f, out / f.name)


def pack(src: Path, out: Path) -> str:
    config = json.loads((src / "config.json").read_text())
    if MODEL_TYPES.get(config.get("model_type")) != "llama":
        raise SystemExit(f"{src}: only Llama-family models are packed (model_type {config.get('model_type')!r})")
    if (src / packed.PACKED_FILE).exists():
        raise SystemExit(f"{src} is packed already")
    model = load_model(str(src))
    fingerprint = model.fingerprint.hex()
    state = _read_safetensors(sorted(src.glob("*.safetensors")))
    copy_side_files(src, out)
    meta = {"format": packed.FORMAT, "engine": str(model.engine_id), "fingerprint": fingerprint}
    save(packed.pack_state(state), out / packed.PACKED_FILE, meta)
    load_model(str(out))   # raises ModelLoadError unless the packed file rebuilds the recorded fingerprint
    return fingerprint


def unpack(src: Path, out: Path) -> None:
    state, _ = _read_weights(src)
    copy_side_files(src, out)
    save({k: np.asarray(v, dtype=np.float32) for k, v in state.items()}, out / "model.safetensors", {"format": "pt"})


def save(tensors: dict[str, np.ndarray], path: Path, metadata: dict[str, str]) -> None:
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata=metadata)
    path.chmod(0o644)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--unpack", action="store_true", help="write float32 weights in Hugging Face layout")
    args = p.parse_args()
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"{args.out} exists and is not empty")
    if args.unpack:
        unpack(args.src, args.out)
        print(f"unpacked to {args.out}")
    else:
        fingerprint = pack(args.src, args.out)
        size = sum(f.stat().st_size for f in args.out.iterdir())
        print(f"packed to {args.out}: {size / 1e6:.1f} MB, fingerprint {fingerprint[:16]}... unchanged")


if __name__ == "__main__":
    main()
