"""Shared fixtures: tiny models and tokenizers built offline, in seconds, for end-to-end tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
TRAIN_PARAGRAPHS = [
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
    "foolishness. The captain walked slowly up the beach, looking out to sea, and whistled to himself.\n",
    "def encode(self, data: bytes) -> list[int]:\n    \"\"\"Token ids of data.\"\"\"\n    ids = []\n"
    "    for block in self.blocks(data):\n        ids.extend(self.backend.encode(block).ids)\n    return ids\n",
    "{\"name\": \"llmzip\", \"version\": 1, \"files\": [\"README.md\", \"setup.py\"], \"size\": 20481, \"ok\": true}\n",
    "<html><head><title>Notes</title></head><body><p class=\"note\">Compress &amp; restore.</p></body></html>\n",
    "Caf\u00e9 cr\u00e8me, na\u00efve r\u00e9sum\u00e9 \u2014 \u00fcber Stra\u00dfe; \u4f60\u597d\u4e16\u754c. 3.14159, 2.71828, 1.41421.\r\n",
]

PROSE = (b"The old captain walked slowly up the beach, looking out to sea and whistling to himself, while "
         b"the boy carried his chest behind him. He asked whether the inn was much frequented, and when he "
         b"heard that it was lonely and had few visitors, he said it would suit him very well. Then he threw "
         b"down three or four gold pieces on the threshold and told my father to call him captain.\n")


def training_text() -> str:
    """About 20 KB of fixed mixed text (prose, Python, JSON, HTML, non-ASCII): the tiny
    tokenizers depend on this text only, not on the repository's sources."""
    return "".join(f"{i}: {p}" for i in range(40) for p in TRAIN_PARAGRAPHS)


def build_tokenizer() -> object:
    """A byte-level BPE of 400 tokens trained on :func:`training_text`, as a fast HF tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    backend.train_from_iterator([training_text()], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>")


def table_digests_by_thread_count(model_dir: Path, engine: int | None = None) -> set[str]:
    """SHA-256 of a model's tables for 4 random rows of a full context, computed in a fresh process
    with 1 and with 2 OpenBLAS / OpenMP threads: one digest means the thread count changed no bit."""
    load = f"load_model({str(model_dir)!r})" + ("" if engine is None else f".with_engine({engine})")
    code = (
        "import hashlib, numpy as np; from llmzip.model import load_model; "
        f"m = {load}; m.prepare(1 << 20); rng = np.random.default_rng(3); "
        "rows = rng.integers(0, m.vocab_size, size=(4, m.max_context)); "
        "t = m.advance(m.start(4), rows); print(hashlib.sha256(t.tobytes()).hexdigest())"
    )
    digests = set()
    for threads in ("1", "2"):
        env = dict(os.environ, OPENBLAS_NUM_THREADS=threads, OMP_NUM_THREADS=threads, PYTHONPATH=str(REPO))
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        digests.add(out.stdout.strip())
    return digests


def sentencepiece_backend(vocab_size: int = 360, metaspace: bool = False, text: str | None = None) -> object:
    """A Llama-2-style SentencePiece BPE with byte fallback, trained on ``text`` (default
    :func:`training_text`):
    ``<unk> <s> </s>``, then ``<0x00>`` ... ``<0xFF>``, then merges of ``▁``-marked text. Either the
    legacy front end (Prepend + Replace normalizer) or a Metaspace pre-tokenizer."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    if metaspace:
        backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
    else:
        backend.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    backend.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    backend.train_from_iterator([text or training_text()], trainer=trainer)
    config = json.loads(backend.to_str())   # byte pieces are vocabulary entries, as in Llama 2's file
    config["added_tokens"] = [t for t in config["added_tokens"] if not t["content"].startswith("<0x")]
    return Tokenizer.from_str(json.dumps(config))


def build_sentencepiece_tokenizer(metaspace: bool = False) -> object:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=sentencepiece_backend(metaspace=metaspace), bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")


def build_tiny_model(directory: Path, tokenizer: object, seed: int) -> Path:
    """Save a randomly initialised 2-layer GPT-2 (context 64) and ``tokenizer`` to ``directory``."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=0, eos_token_id=0)
    GPT2LMHeadModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


LLAMA_FAMILY = {   # model_type -> what its tiny test model exercises
    "llama": dict(num_key_value_heads=2, tie_word_embeddings=False, rope_theta=500000.0,
                  rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
    "qwen2": dict(num_key_value_heads=2, tie_word_embeddings=True),      # q/k/v biases, tied head
    "mistral": dict(num_key_value_heads=4, tie_word_embeddings=False, sliding_window=4096),
}


def build_llama_family_model(directory: Path, model_type: str, tokenizer: object, seed: int,
                             dtype: str = "float32") -> Path:
    """Save a random 2-layer ``model_type`` model (d 32, 4 query heads, context 64) and ``tokenizer``.

    Weights are drawn at 8x the usual scale (and norm gains and biases spread out) so that
    attention is peaked and every part of the arithmetic sees realistic ranges.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
                                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                  **LLAMA_FAMILY[model_type])
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.mul_(8.0)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.3)
            else:
                p.normal_(1.0, 0.2)
    model.to(getattr(torch, dtype)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_tokenizer() -> object:
    """The tiny byte-level BPE tokenizer shared by the tiny models."""
    return build_tokenizer()


@pytest.fixture(scope="session")
def sp_tokenizer() -> object:
    """The tiny SentencePiece-style (byte fallback) tokenizer of the Llama and Mistral test models."""
    return build_sentencepiece_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: object) -> Path:
    """A directory holding a tiny GPT-2 in Hugging Face layout (seed 0). Never touches the network."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), tiny_tokenizer, seed=0)


@pytest.fixture(scope="session")
def other_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: object) -> Path:
    """Same shape and tokenizer as ``tiny_model_dir`` but other weights (seed 1): another fingerprint."""
    return build_tiny_model(tmp_path_factory.mktemp("other-model"), tiny_tokenizer, seed=1)


@pytest.fixture(scope="session", params=list(LLAMA_FAMILY))
def llama_family_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                     tiny_tokenizer: object, sp_tokenizer: object) -> Path:
    """A tiny random Llama (untied head, GQA, Llama-3 rope scaling; SentencePiece tokenizer), Qwen2
    (q/k/v biases, tied head; byte-level tokenizer) or Mistral (SentencePiece tokenizer)."""
    kind = request.param
    tokenizer = tiny_tokenizer if kind == "qwen2" else sp_tokenizer
    return build_llama_family_model(tmp_path_factory.mktemp(f"tiny-{kind}"), kind, tokenizer, seed=0)


@pytest.fixture(scope="session")
def golden():
    """The committed tiny GPT-2 that the golden archives were made with."""
    from llmzip.model import load_model

    return load_model(str(Path(__file__).parent / "data" / "golden-tiny"))


@pytest.fixture
def prose_file(tmp_path: Path) -> Path:
    """``prose.txt`` in the test's temporary directory, holding :data:`PROSE` (one short frame)."""
    path = tmp_path / "prose.txt"
    path.write_bytes(PROSE)
    return path


@pytest.fixture(scope="session")
def native_kernels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The native kernels (llmzip.native), compiled alone into a temporary directory: seconds."""
    from llmzip import native

    library = tmp_path_factory.mktemp("native") / "native.so"
    try:
        native.compile_library(library)
    except native.NativeBuildError as e:
        pytest.skip(f"no C compiler here: {e}")
    return native.kernels(library)


@pytest.fixture(scope="session")
def native_attend8(native_kernels: dict[str, Any]) -> Any:
    return native_kernels["attend8"]


@pytest.fixture(scope="session")
def built_kernels() -> None:
    """This machine's build of the fused kernels (built at the first test that needs it: a minute or two)."""
    from llmzip import fused

    if not fused.available(build=True):
        pytest.skip(f"no fused kernels here: {fused.unavailable_reason()}")
