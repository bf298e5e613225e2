#!/usr/bin/env python3
"""Write tests/data/golden-{llama,qwen2,mistral}: the fixed tiny Llama-family models the golden
archives of engine 4 are made with.

Run once; the output is committed and must never change (tests/test_llama.py pins archives made
with it). Built by the test fixtures' builders (tests/conftest.py), saved as float16 to stay small:
Llama (untied head, grouped-query attention, Llama-3 rope scaling) and Mistral with a
SentencePiece-style byte-fallback tokenizer, Qwen2 (q/k/v biases, tied head) with a byte-level one.
"""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from conftest import (LLAMA_FAMILY, build_llama_family_model, build_sentencepiece_tokenizer,  # noqa: E402
                      build_tokenizer)


def main() -> None:
    for kind in LLAMA_FAMILY:
        out = REPO / "tests" / "data" / f"golden-{kind}"
        if out.exists():
            raise SystemExit(f"{out} exists: golden models are never rewritten")
        tokenizer = build_tokenizer() if kind == "qwen2" else build_sentencepiece_tokenizer()
        build_llama_family_model(out, kind, tokenizer, seed=20261130, dtype="float16")
        print(out)


if __name__ == "__main__":
    main()
