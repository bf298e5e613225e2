#!/usr/bin/env python3
"""Pack a Llama-family model directory into llmzip's int8 layout, or unpack one to float weights.

    python scripts/pack_model.py SRC OUT            # HF layout (float weights) -> model.int8.safetensors
    python scripts/pack_model.py --unpack SRC OUT   # packed -> model.safetensors (float32, HF layout)
    python scripts/pack_model.py --delta-from BASE SRC OUT   # -> the difference from packed BASE
    python scripts/pack_model.py --planes SRC OUT   # model.safetensors -> byte planes, xz (lossless)

With ``--delta-from``, OUT holds ``model.int8-delta.safetensors.xz``: the packed tensors of SRC (a
packed model) as their difference from those of BASE, a packed model directory (or one stored as
a difference itself, in a chain of at most ``llmzip.packed.MAX_DEPTH`` models) that must sit
beside OUT under the same name when the model is loaded (the shipped models do: llmzip/models/).
The script checks that the difference gives SRC's tensors back bit for bit.

Every output but ``--unpack``'s holds the tokenizer xz-compressed (``tokenizer.json.xz``, ~8x
smaller); ``--unpack`` writes plain Hugging Face layout.

Packing keeps every number the exact engine computes with (see :mod:`llmzip.packed`): the script
loads both directories and refuses to finish unless their model fingerprints are equal, and it
records that fingerprint in the packed file, which every later load checks. GPT-2 models are not
packed: engine 1 quantises them to int16 rows, which int8 rows cannot rebuild.
"""

from __future__ import annotations

import argparse
import json
import lzma
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmzip import packed  # noqa: E402
from llmzip.engine import MODEL_TYPES  # noqa: E402
from llmzip.errors import ModelLoadError  # noqa: E402
from llmzip.model import load_model  # noqa: E402
from llmzip.model_files import (TOKENIZER_FILE, read_packed, read_tokenizer_json,  # noqa: E402
                                read_weights)


def copy_side_files(src: Path, out: Path, hf_layout: bool = False) -> None:
    """Everything but the weights (config, tokenizer, model card, training log); the tokenizer
    xz-compressed as llmzip ships it (``tokenizer.json.xz``: :mod:`llmzip.model_files`), or plain
    ``tokenizer.json`` for ``hf_layout``."""
    out.mkdir(parents=True, exist_ok=True)
    weights_or_tokenizer = (".safetensors", ".safetensors.xz", TOKENIZER_FILE, TOKENIZER_FILE + ".xz")
    for f in src.iterdir():
        if f.is_file() and not f.name.endswith(weights_or_tokenizer):
            shutil.copyfile(f, out / f.name)
    text = read_tokenizer_json(src).encode("utf-8")
    if hf_layout:
        (out / TOKENIZER_FILE).write_bytes(text)
    else:
        (out / (TOKENIZER_FILE + ".xz")).write_bytes(lzma.compress(text, preset=9 | lzma.PRESET_EXTREME))


def pack(src: Path, out: Path) -> str:
    config = json.loads((src / "config.json").read_text())
    if MODEL_TYPES.get(config.get("model_type")) != "llama":
        raise SystemExit(f"{src}: only Llama-family models are packed (model_type {config.get('model_type')!r})")
    state, recorded = read_weights(src)   # float weights, in their own files or in byte planes
    if recorded is not None:
        raise SystemExit(f"{src} is packed already")
    model = load_model(str(src))
    fingerprint = model.fingerprint.hex()
    copy_side_files(src, out)
    meta = {"format": packed.FORMAT, "engine": str(model.engine_id), "fingerprint": fingerprint}
    save(packed.pack_state(state), out / packed.PACKED_FILE, meta)
    load_model(str(out))   # raises ModelLoadError unless the packed file rebuilds the recorded fingerprint
    return fingerprint


def pack_delta(src: Path, base: Path, out: Path) -> str:
    """Store packed model ``src`` as its difference from packed model ``base`` (itself packed or a
    difference); returns the fingerprint the difference records (``src``'s, checked when ``src``
    was loaded)."""
    from safetensors.numpy import save as save_bytes

    if not ((src / packed.PACKED_FILE).exists() or (src / packed.DELTA_FILE).exists()):
        raise SystemExit(f"{src} is not packed: pack it first (python scripts/pack_model.py SRC PACKED)")
    if not ((base / packed.PACKED_FILE).is_file() or (base / packed.DELTA_FILE).is_file()):
        raise SystemExit(f"{base}: the base must be a packed model directory ({packed.PACKED_FILE}), "
                         "or one stored as a difference itself")
    load_model(str(src))   # raises ModelLoadError unless src rebuilds the fingerprint it records
    load_model(str(base))
    tensors, meta = read_packed(src)
    try:
        base_tensors, base_meta = read_packed(base, depth=1)   # as the new model's base: its chain's room
    except ModelLoadError as exc:
        raise SystemExit(f"{src} cannot be stored against {base}: {exc}") from exc
    try:
        delta = {k: np.ascontiguousarray(v) for k, v in packed.delta_state(tensors, base_tensors).items()}
    except packed.PackingError as exc:
        raise SystemExit(f"{src} cannot be stored against {base}: {exc}") from exc
    back = packed.apply_delta(delta, base_tensors)
    if any(back[k].tobytes() != np.ascontiguousarray(v).tobytes() for k, v in tensors.items()):
        raise SystemExit("the difference does not give the model's tensors back: not written")
    record = {"format": packed.DELTA_FORMAT, "engine": meta["engine"], "fingerprint": meta["fingerprint"],
              "base": base.name, "base_fingerprint": base_meta["fingerprint"]}
    copy_side_files(src, out)
    (out / packed.DELTA_FILE).write_bytes(lzma.compress(save_bytes(delta, metadata=record),
                                                        preset=9 | lzma.PRESET_EXTREME))
    (out / packed.DELTA_FILE).chmod(0o644)
    return str(meta["fingerprint"])


def store_planes(src: Path, out: Path) -> None:
    """Store ``src``'s single ``model.safetensors`` losslessly as :data:`llmzip.planes.PLANES_FILE`."""
    from llmzip import planes

    weights = sorted(src.glob("*.safetensors"))
    if [f.name for f in weights] != ["model.safetensors"]:
        raise SystemExit(f"{src}: --planes stores one plain model.safetensors (found {[f.name for f in weights]})")
    raw = weights[0].read_bytes()
    blob = planes.encode(raw)
    if planes.decode(blob) != raw:
        raise SystemExit("the planes file does not give the weights back: not written")
    copy_side_files(src, out)
    (out / planes.PLANES_FILE).write_bytes(blob)
    (out / planes.PLANES_FILE).chmod(0o644)


def unpack(src: Path, out: Path) -> None:
    state, _ = read_weights(src)
    copy_side_files(src, out, hf_layout=True)
    save({k: np.asarray(v, dtype=np.float32) for k, v in state.items()}, out / "model.safetensors", {"format": "pt"})


def save(tensors: dict[str, np.ndarray], path: Path, metadata: dict[str, str]) -> None:
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata=metadata)
    path.chmod(0o644)


def _megabytes(directory: Path) -> float:
    return sum(f.stat().st_size for f in directory.iterdir()) / 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--unpack", action="store_true", help="write float32 weights in Hugging Face layout")
    p.add_argument("--delta-from", type=Path, metavar="BASE",
                   help="store the difference from packed model BASE, itself packed or a difference "
                        "(loaded from beside OUT)")
    p.add_argument("--planes", action="store_true", help="store float weights losslessly in byte planes, xz")
    args = p.parse_args()
    if sum(map(bool, (args.unpack, args.delta_from, args.planes))) > 1:
        raise SystemExit("--unpack, --delta-from and --planes exclude each other")
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"{args.out} exists and is not empty")
    if args.unpack:
        unpack(args.src, args.out)
        print(f"unpacked to {args.out}")
    elif args.planes:
        store_planes(args.src, args.out)
        print(f"stored in byte planes: {_megabytes(args.out):.1f} MB")
    elif args.delta_from:
        fingerprint = pack_delta(args.src, args.delta_from, args.out)
        print(f"stored as the difference from {args.delta_from.name}: {_megabytes(args.out):.1f} MB, fingerprint "
              f"{fingerprint[:16]}... (loads from beside a directory {args.delta_from.name})")
    else:
        fingerprint = pack(args.src, args.out)
        print(f"packed to {args.out}: {_megabytes(args.out):.1f} MB, fingerprint {fingerprint[:16]}... unchanged")


if __name__ == "__main__":
    main()
