"""Packed (int8) model weights rebuild exactly the integers the engine computes with."""

from __future__ import annotations

import json
import lzma
import sys
from pathlib import Path

import numpy as np
import pytest

from llmzip import codec, packed
from llmzip.errors import ModelLoadError
from llmzip.linear8 import quantize_linear8
from llmzip.model import MODELS_DIR, _cached_dir, load_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import pack_model  # noqa: E402

DATA = Path(__file__).parent / "data"


def _engine_integers(w: np.ndarray) -> list[np.ndarray]:
    layer = quantize_linear8(np.asarray(w, dtype=np.float64).T, None, 12, 14)
    return [layer.w, layer.mult, layer.shift]


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_unpacked_weights_quantise_to_the_same_integers(dtype: type) -> None:
    rng = np.random.default_rng(7)
    w = (rng.standard_normal((64, 48)) * rng.uniform(1e-3, 2, (64, 1))).astype(dtype)
    w[3] = 0                                      # an all-zero row
    w[5, :4] = w[5].max() * 2                     # several entries at the peak
    w[6, 1] = -np.abs(w[6]).max() * 1.001         # a peak with a near-peak neighbour of the other sign
    w[6, 2] = np.abs(w[6, 1]) * 0.9961            # rounds to 127 without being the peak
    q, peak = packed.pack_weight(w)
    rebuilt = packed.unpack_weight(q, peak)
    for a, b in zip(_engine_integers(w), _engine_integers(rebuilt)):
        np.testing.assert_array_equal(a, b)
    assert q.dtype == np.int8 and peak.dtype == np.float32
    # what the exactness argument rests on: every row's largest magnitude is its peak, exactly
    np.testing.assert_array_equal(np.abs(rebuilt.astype(np.float64)).max(1), peak.astype(np.float64))


def test_packing_refuses_weights_finer_than_float32() -> None:
    with pytest.raises(packed.PackingError, match="float32"):
        packed.pack_weight(np.array([[0.1, 0.2]], dtype=np.float64))


@pytest.mark.parametrize("kind", ["golden-llama", "golden-qwen2"])
def test_packed_model_codes_identically(tmp_path: Path, kind: str) -> None:
    fingerprint = pack_model.pack(DATA / kind, tmp_path / "packed" / kind)   # same name: same archive header
    plain, packed_model = load_model(str(DATA / kind)), load_model(str(tmp_path / "packed" / kind))
    assert packed_model.fingerprint.hex() == fingerprint == plain.fingerprint.hex()
    assert not list((tmp_path / "packed" / kind).glob("model.safetensors"))
    text = b"Packed weights, same archive: " * 20
    assert codec.compress(text, packed_model) == codec.compress(text, plain)
    pack_model.unpack(tmp_path / "packed" / kind, tmp_path / "unpacked")
    assert load_model(str(tmp_path / "unpacked")).fingerprint == plain.fingerprint


def test_shipped_llamas_are_packed_and_smaller_than_float16() -> None:
    llamas = sorted(MODELS_DIR.glob("llmzip-llama-*"))
    assert llamas
    for model_dir in llamas:
        stored = [f.name for f in model_dir.iterdir() if f.name.startswith("model.")]
        assert stored in ([packed.PACKED_FILE], [packed.DELTA_FILE])
        assert (model_dir / stored[0]).stat().st_size < 0.65 * 2 * 12_587_904
    # v1 is stored as its difference from v2, which it was fine-tuned into
    assert (MODELS_DIR / "llmzip-llama-6x384-v1" / packed.DELTA_FILE).stat().st_size < 10.5e6


def _rewrite(path: Path, edit) -> None:  # type: ignore[no-untyped-def]
    """Edit a packed file's tensors and metadata in place (and forget the model loaded from it)."""
    from safetensors.numpy import load_file, save_file
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    edit(tensors, meta)
    save_file(tensors, str(path), metadata=meta)
    _cached_dir.cache_clear()


def test_a_packed_file_that_does_not_rebuild_its_model_is_refused(tmp_path: Path) -> None:
    pack_model.pack(DATA / "golden-llama", tmp_path / "m")
    key = "model.layers.0.mlp.down_proj.weight"

    def flip(tensors: dict, meta: dict) -> None:
        tensors[key] = tensors[key].copy()
        tensors[key][0, 0] = -tensors[key][0, 0] if tensors[key][0, 0] else 1
    _rewrite(tmp_path / "m" / packed.PACKED_FILE, flip)
    with pytest.raises(ModelLoadError, match="does not match the fingerprint"):
        load_model(str(tmp_path / "m"))


@pytest.mark.parametrize("edit, message", [
    (lambda t, m: m.update(format="llmzip-int8/9"), "a newer llmzip may read it"),
    (lambda t, m: m.pop("engine"), "format"),
    (lambda t, m: t.pop("model.layers.0.mlp.down_proj.weight" + packed.PEAK_SUFFIX), "without its row peaks"),
    (lambda t, m: t.pop("model.layers.0.mlp.down_proj.weight"), "without their weight"),
])
def test_malformed_packed_files_are_refused(tmp_path: Path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    pack_model.pack(DATA / "golden-llama", tmp_path / "m")
    _rewrite(tmp_path / "m" / packed.PACKED_FILE, edit)
    with pytest.raises(ModelLoadError, match=message):
        load_model(str(tmp_path / "m"))


def test_a_directory_with_packed_and_plain_weights_is_refused(tmp_path: Path) -> None:
    pack_model.pack(DATA / "golden-llama", tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes((DATA / "golden-llama" / "model.safetensors").read_bytes())
    _cached_dir.cache_clear()
    with pytest.raises(ModelLoadError, match="keep one of them"):
        load_model(str(tmp_path / "m"))
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(SystemExit, match="packed already"):
        pack_model.pack(tmp_path / "m", tmp_path / "again")


def test_a_packed_directory_without_tokenizer_is_refused(tmp_path: Path) -> None:
    pack_model.pack(DATA / "golden-llama", tmp_path / "m")
    blob = (tmp_path / "m" / "tokenizer.json.xz").read_bytes()
    (tmp_path / "m" / "tokenizer.json.xz").unlink()
    _cached_dir.cache_clear()
    with pytest.raises(ModelLoadError, match="tokenizer.json"):
        load_model(str(tmp_path / "m"))
    (tmp_path / "m" / "tokenizer.json.xz").write_bytes(blob[:-40])
    with pytest.raises(ModelLoadError, match="damaged"):
        load_model(str(tmp_path / "m"))
    (tmp_path / "m" / "tokenizer.json.xz").write_bytes(lzma.compress(b'{"version": "1.0", not json'))
    with pytest.raises(ModelLoadError, match="tokenizer.json"):
        load_model(str(tmp_path / "m"))


def test_a_compressed_tokenizer_is_the_same_tokenizer(tmp_path: Path) -> None:
    """Packing ships the tokenizer xz-compressed: the same model, the same archives; unpacking
    writes the plain Hugging Face file back."""
    pack_model.pack(DATA / "golden-llama", tmp_path / "m")
    assert not (tmp_path / "m" / "tokenizer.json").exists()
    assert lzma.decompress((tmp_path / "m" / "tokenizer.json.xz").read_bytes()) == \
        (DATA / "golden-llama" / "tokenizer.json").read_bytes()
    pack_model.unpack(tmp_path / "m", tmp_path / "hf")
    assert (tmp_path / "hf" / "tokenizer.json").read_bytes() == (DATA / "golden-llama" / "tokenizer.json").read_bytes()
    assert not (tmp_path / "hf" / "tokenizer.json.xz").exists()
    assert load_model(str(tmp_path / "m")).fingerprint == load_model(str(DATA / "golden-llama")).fingerprint


def test_gpt2_models_are_not_packed(tmp_path: Path) -> None:
    assert json.loads((DATA / "golden-tiny" / "config.json").read_text())["model_type"] == "gpt2"
    with pytest.raises(SystemExit, match="only Llama-family"):
        pack_model.pack(DATA / "golden-tiny", tmp_path / "m")
