"""Tests of llmzip.tokens: exact bytes <-> token ids over byte-level and SentencePiece-style BPE tokenizers.

All tokenizers are trained here on a few KB of text (no network, well under a second).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from llmzip.errors import TokenizerError
from llmzip.tokens import DEFAULT_BLOCK_SIZE, ByteTokenizer, _blocks
from conftest import sentencepiece_backend

EOT = "<|endoftext|>"
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Squire Trelawney, Dr. Livesey, and the rest of these gentlemen asked me to write it down.",
    "I remember him as if it were yesterday, as he came plodding to the inn door.",
    "def encode(self, data: bytes) -> np.ndarray:\n    return self.backend.encode(data)\n",
    "Caf\u00e9 cr\u00e8me br\u00fbl\u00e9e, na\u00efve r\u00e9sum\u00e9, \u00fcber stra\u00dfe \u2014 \u4f60\u597d\u4e16\u754c \U0001f600.",
    "The sea was rough and the wind was high; the ship rolled and the men were tired.\r\n",
]
TRAIN_TEXT = "\n".join(f"{i}: {s}" for i in range(12) for s in SENTENCES)  # ~5 KB
ENGLISH = " ".join(SENTENCES[:3] + SENTENCES[5:])


def _train(normalizer: normalizers.Normalizer | None = None) -> Tokenizer:
    """A GPT-2-style byte-level BPE (vocab ~500) trained on TRAIN_TEXT."""
    tok = Tokenizer(models.BPE())
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500, special_tokens=[EOT], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator([TRAIN_TEXT], trainer=trainer)
    return tok


@pytest.fixture(scope="module")
def gpt2_hf() -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=_train(), eos_token=EOT)


@pytest.fixture(scope="module")
def gpt2(gpt2_hf: PreTrainedTokenizerFast) -> ByteTokenizer:
    return ByteTokenizer.from_hf(gpt2_hf)


@pytest.fixture(scope="module")
def qwen_backend() -> Tokenizer:
    """Qwen2-like: NFC normalizer, extra special and non-special added tokens."""
    tok = _train(normalizers.NFC())
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    tok.add_tokens([AddedToken("<think>", special=False), AddedToken("<mask>", lstrip=True, special=False)])
    return tok


@pytest.fixture(scope="module")
def qwen(qwen_backend: Tokenizer) -> ByteTokenizer:
    return ByteTokenizer.from_hf(PreTrainedTokenizerFast(tokenizer_object=qwen_backend))


@pytest.fixture(scope="module")
def sp_backend() -> Tokenizer:
    """Llama-2-like: Prepend + Replace normalizer, byte fallback (the legacy tokenizer.json layout)."""
    return sentencepiece_backend(vocab_size=600, text=TRAIN_TEXT)


@pytest.fixture(scope="module")
def sp(sp_backend: Tokenizer) -> ByteTokenizer:
    return ByteTokenizer(sp_backend)


@pytest.fixture(scope="module")
def sp_meta() -> ByteTokenizer:
    """Mistral-like: a Metaspace pre-tokenizer that prepends ``▁`` to the first word."""
    return ByteTokenizer(sentencepiece_backend(vocab_size=600, metaspace=True, text=TRAIN_TEXT))


@pytest.fixture(scope="module", params=["gpt2", "qwen", "sp", "sp_meta"])
def bt(request: pytest.FixtureRequest) -> ByteTokenizer:
    return request.getfixturevalue(request.param)


CASES = [
    b"",
    b"a",
    b"\x00" * 10,
    b"\r",
    b"a\r\nb\r\n",
    b"\xef\xbb\xbfBOM text",
    b"\xff\xfe\xc3(",
    b"truncated \xe2\x82",
    b"\x80\xbf lone continuations \x80",
    b"\xed\xa0\x80 surrogate, \xc0\xaf overlong",
    bytes(range(256)),
    bytes(range(255, -1, -1)) * 3,
    b"before " + EOT.encode() + b" after" + EOT.encode(),
    "e\u0301 \u212b \ufb01 non-NFC".encode(),
    b"x <mask> y<think>z <|im_start|>",
    ENGLISH.encode(),
    "\u2581 a\u2581\u2581b \u2581".encode() + b" <0x41> <s></s><unk>  double  spaces ",
]


def _check(bt: ByteTokenizer, data: bytes) -> np.ndarray:
    ids = bt.encode(data)
    assert ids.dtype == np.int32 and ids.ndim == 1
    assert ids.size == 0 or (ids.min() >= 0 and ids.max() < bt.vocab_size)
    assert bt.decode(ids) == data
    assert bt.decode(ids.tolist()) == data
    return ids


@pytest.mark.parametrize("data", CASES, ids=range(len(CASES)))
def test_roundtrip_cases(bt: ByteTokenizer, data: bytes) -> None:
    _check(bt, data)


def test_random_bytes(bt: ByteTokenizer) -> None:
    data = np.random.default_rng(1234).integers(0, 256, 100_000, dtype=np.uint8).tobytes()
    _check(bt, data)


def test_long_text_spans_blocks(bt: ByteTokenizer) -> None:
    data = (TRAIN_TEXT * 30).encode()
    assert len(data) > 2 * DEFAULT_BLOCK_SIZE
    ids = _check(bt, data)
    assert len(ids) < len(data) / 2


def test_small_blocks_keep_quality(qwen_backend: Tokenizer) -> None:
    data = (TRAIN_TEXT * 2).encode() + ("\u00e9" * 500).encode() + b"\xff" + ("\u4f60" * 300).encode()
    small = ByteTokenizer(qwen_backend, block_size=256)
    big = ByteTokenizer(qwen_backend)
    n_small, n_big = len(_check(small, data)), len(_check(big, data))
    assert abs(n_small - n_big) < 0.1 * n_big


def test_blocks_cut_at_newlines_and_char_boundaries() -> None:
    text = ("line of text\n" * 100 + "\u00e9" * 200 + "\u4f60" * 100).encode() + b"\xff" * 70
    blocks = list(_blocks(text, 64))
    assert b"".join(blocks) == text and all(0 < len(b) <= 64 for b in blocks)
    assert all(b.endswith(b"\n") for b in blocks[:15])
    assert all(b.decode("utf-8") for b in blocks if b"\xff" not in b)


def test_english_uses_bpe(bt: ByteTokenizer) -> None:
    data = ENGLISH.encode()
    assert len(bt.encode(data)) < len(data) / 2


def test_nfc_not_applied(qwen: ByteTokenizer, qwen_backend: Tokenizer) -> None:
    data = "caf" + "e\u0301"
    assert qwen_backend.normalizer is not None  # the caller's tokenizer is left untouched
    assert qwen_backend.normalizer.normalize_str(data) != data
    assert qwen.decode(qwen.encode(data.encode())) == data.encode()


def test_backend_settings_that_would_spoil_quality(gpt2_hf: PreTrainedTokenizerFast) -> None:
    """Prefix space (Llama-3-like Sequence pre-tokenizer), truncation and padding are neutralised."""
    tok = Tokenizer.from_str(gpt2_hf.backend_tokenizer.to_str())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(" ", "merged_with_next"), pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=False)]
    )
    tok.enable_truncation(8)
    tok.enable_padding(length=64)
    data = ENGLISH.encode()
    ids = _check(ByteTokenizer(tok), data)
    assert len(ids) < len(data) / 2
    assert tok.truncation is not None and tok.padding is not None  # caller's copy untouched


def test_added_tokens_in_table(qwen: ByteTokenizer, qwen_backend: Tokenizer) -> None:
    for content in [EOT, "<|im_start|>", "<think>", "<mask>"]:
        assert qwen.token_bytes(qwen_backend.token_to_id(content)) == content.encode()
    assert qwen.vocab_size == max(qwen_backend.get_vocab().values()) + 1


def test_special_literal_encoded_as_text(gpt2: ByteTokenizer, gpt2_hf: PreTrainedTokenizerFast) -> None:
    ids = gpt2.encode(b"a" + EOT.encode())
    assert gpt2_hf.convert_tokens_to_ids(EOT) not in ids.tolist()


def test_byte_tokens(bt: ByteTokenizer) -> None:
    assert bt.byte_token.dtype == np.int64 and bt.byte_token.shape == (256,)
    assert [bt.token_bytes(int(i)) for i in bt.byte_token] == [bytes([b]) for b in range(256)]
    assert all(bt.token_bytes(i) for i in range(bt.vocab_size))


def test_decode_rejects_bad_ids(gpt2: ByteTokenizer) -> None:
    for bad in ([-1], [gpt2.vocab_size], np.array([0, gpt2.vocab_size + 5])):
        with pytest.raises(ValueError):
            gpt2.decode(bad)
    with pytest.raises(ValueError):
        gpt2.token_bytes(-1)


def test_incremental_decoder(gpt2: ByteTokenizer) -> None:
    data = b"stream \xff me\r\n" + ENGLISH.encode()
    dec = gpt2.decoder()
    assert b"".join(dec.push(int(i)) for i in gpt2.encode(data)) == data


def test_table_digest(gpt2: ByteTokenizer, qwen: ByteTokenizer, gpt2_hf: PreTrainedTokenizerFast) -> None:
    again = ByteTokenizer(gpt2_hf.backend_tokenizer)
    assert len(gpt2.table_digest()) == 32
    assert again.table_digest() == gpt2.table_digest() == gpt2.table_digest()
    assert qwen.table_digest() != gpt2.table_digest()


def _word_level() -> Tokenizer:
    tok = Tokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


def _char_bpe() -> Tokenizer:
    return Tokenizer(models.BPE({"a": 0, "b": 1, "\u2581": 2, "\u2581a": 3}, [("\u2581", "a")]))


def _byte_level_missing_one() -> Tokenizer:
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())[1:]
    return Tokenizer(models.BPE({c: i for i, c in enumerate(alphabet)}, []))


@pytest.mark.parametrize("make", [_word_level, _char_bpe, _byte_level_missing_one])
def test_refuses_non_byte_level(make) -> None:  # noqa: ANN001
    with pytest.raises(TokenizerError):
        ByteTokenizer(make())
    with pytest.raises(TokenizerError):
        ByteTokenizer.from_hf(PreTrainedTokenizerFast(tokenizer_object=make()))


def test_refuses_slow_or_foreign_objects() -> None:
    with pytest.raises(TokenizerError):
        ByteTokenizer.from_hf(object())
    with pytest.raises(TokenizerError):
        ByteTokenizer("not a tokenizer")  # type: ignore[arg-type]


FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FAST
@given(data=st.binary(max_size=2000))
def test_property_binary(qwen: ByteTokenizer, data: bytes) -> None:
    _check(qwen, data)


@FAST
@given(text=st.text(max_size=500))
def test_property_text(gpt2: ByteTokenizer, text: str) -> None:
    _check(gpt2, text.encode("utf-8"))


@FAST
@given(parts=st.lists(st.one_of(st.binary(max_size=20), st.sampled_from([EOT, "\r\n", "e\u0301", " <mask>"])), max_size=20))
def test_property_mixed(qwen: ByteTokenizer, parts: list[bytes | str]) -> None:
    data = b"".join(p.encode() if isinstance(p, str) else p for p in parts)
    _check(qwen, data)


@pytest.mark.parametrize("name", ["sp", "sp_meta"])
def test_sentencepiece_has_no_dummy_prefix(request: pytest.FixtureRequest, name: str) -> None:
    """The dummy prefix would add a space that is not in the input: it is turned off."""
    tok: ByteTokenizer = request.getfixturevalue(name)
    assert tok.sentencepiece
    for data in (b"It was", b" It was", b"\nIt was"):
        ids = _check(tok, data)
        assert tok.token_bytes(int(ids[0]))[0] == data[0]


def test_sentencepiece_table(sp: ByteTokenizer, sp_backend: Tokenizer) -> None:
    assert sp.token_bytes(sp_backend.token_to_id("<0x41>")) == b"A"
    assert sp.token_bytes(sp_backend.token_to_id("<s>")) == b"<s>"      # special tokens are their text
    spaced = [p for p in sp_backend.get_vocab() if p.startswith("\u2581") and len(p) > 2]
    assert spaced and sp.token_bytes(sp_backend.token_to_id(spaced[0])) == spaced[0].replace("\u2581", " ").encode()
    ids = sp.encode("a\u2581b".encode())                                  # a literal ▁ is coded as its bytes
    assert [sp.token_bytes(int(i)) for i in ids][1:4] == [b"\xe2", b"\x96", b"\x81"]


def test_sentencepiece_without_every_byte_is_refused() -> None:
    tok = Tokenizer(models.BPE({"<unk>": 0, "\u2581": 1, "a": 2, "<0x00>": 3}, [], unk_token="<unk>", byte_fallback=True))
    with pytest.raises(TokenizerError, match="SentencePiece tokenizer without byte fallback: no <0xNN> piece or single-byte "
                                             "token for byte 0x01"):
        ByteTokenizer(tok)


def test_sentencepiece_layout_without_byte_fallback_is_named() -> None:
    """A Metaspace front end means SentencePiece even without the byte_fallback flag or <0xNN> pieces."""
    tok = Tokenizer(models.BPE({"<unk>": 0, "\u2581": 1, "a": 2, "b": 3}, [], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    with pytest.raises(TokenizerError, match="SentencePiece tokenizer without byte fallback: .* byte 0x00"):
        ByteTokenizer(tok)


def test_byte_level_layout_wins_over_the_byte_fallback_flag() -> None:
    config = json.loads(_train().to_str())
    config["model"]["byte_fallback"] = True
    tok = ByteTokenizer(Tokenizer.from_str(json.dumps(config)))
    assert not tok.sentencepiece
    _check(tok, ENGLISH.encode() + b"\xff\x00")


def test_mixed_byte_level_and_sentencepiece_front_ends_are_refused(sp_backend: Tokenizer) -> None:
    tok = Tokenizer.from_str(sp_backend.to_str())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    with pytest.raises(TokenizerError, match="mixes byte-level \\(ByteLevel\\) and SentencePiece \\(ByteFallback"):
        ByteTokenizer(tok)


def test_metaspace_replacement_other_than_the_space_piece_is_refused(sp_backend: Tokenizer) -> None:
    tok = Tokenizer.from_str(sp_backend.to_str())
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="_", prepend_scheme="first")
    with pytest.raises(TokenizerError, match="Metaspace replacement is '_', not '\u2581'"):
        ByteTokenizer(tok)


def test_sentencepiece_added_token_spells_its_space_piece_as_a_space(sp_backend: Tokenizer) -> None:
    tok = Tokenizer.from_str(sp_backend.to_str())
    tok.add_tokens([AddedToken("\u2581Trelawney", special=False)])
    tok.add_special_tokens([AddedToken("\u2581<sep>", special=True)])
    bt = ByteTokenizer(tok)
    assert bt.token_bytes(tok.token_to_id("\u2581Trelawney")) == b" Trelawney"
    assert bt.token_bytes(tok.token_to_id("\u2581<sep>")) == "\u2581<sep>".encode()   # special: its text
    assert tok.token_to_id("\u2581Trelawney") in _check(bt, b"Squire Trelawney, \xe2\x96\x81Trelawney")


def test_sentencepiece_with_unknown_space_marking_is_refused(sp_backend: Tokenizer) -> None:
    tok = Tokenizer.from_str(sp_backend.to_str())
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(TokenizerError, match="'Whitespace' pre-tokenizer: cannot tell how it marks spaces"):
        ByteTokenizer(tok)


@FAST
@given(parts=st.lists(st.one_of(st.binary(max_size=20), st.text(max_size=20),
                                st.sampled_from(["\u2581", " ", "  ", "<0x41>", "<s>", "\r\n"])), max_size=20))
def test_property_sentencepiece(sp: ByteTokenizer, parts: list[bytes | str]) -> None:
    _check(sp, b"".join(p.encode() if isinstance(p, str) else p for p in parts))
