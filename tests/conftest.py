"""Shared fixtures: tiny GPT-2 models built offline, in seconds, for end-to-end tests."""

from __future__ import annotations

from pathlib import Path

import pytest

SOURCES = Path(__file__).resolve().parents[1] / "llmzip"
TRAIN_BYTES = 20_000


def training_text() -> str:
    """About 20 KB of this repository's own sources, in a fixed order (deterministic)."""
    text = "".join(p.read_text(encoding="utf-8") for p in sorted(SOURCES.glob("*.py")))
    return text[:TRAIN_BYTES]


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


@pytest.fixture(scope="session")
def tiny_tokenizer() -> object:
    """The tiny byte-level BPE tokenizer shared by the tiny models."""
    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: object) -> Path:
    """A directory holding a tiny GPT-2 in Hugging Face layout (seed 0). Never touches the network."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), tiny_tokenizer, seed=0)


@pytest.fixture(scope="session")
def other_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: object) -> Path:
    """Same shape and tokenizer as ``tiny_model_dir`` but other weights (seed 1): another fingerprint."""
    return build_tiny_model(tmp_path_factory.mktemp("other-model"), tiny_tokenizer, seed=1)


@pytest.fixture(scope="session")
def golden():
    """The committed tiny GPT-2 that the golden archives were made with."""
    from llmzip.model import load_model

    return load_model(str(Path(__file__).parent / "data" / "golden-tiny"))
