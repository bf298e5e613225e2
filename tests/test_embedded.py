"""The embedded model ships with the package, round-trips real text and beats gzip on prose."""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import pytest

import llmzip
from llmzip import codec
from llmzip.errors import ModelLoadError
from llmzip.model import EMBEDDED_NAME, MODELS_DIR, load_model, shipped_models

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
README = Path(__file__).resolve().parents[1] / "README.md"
DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def embedded():
    return load_model("embedded")


def _prose() -> bytes:
    """A real prose sample: Treasure Island when ../shared is beside the checkout, else the README."""
    source = CORPUS / "treasure_island.txt"
    return source.read_bytes()[20000:26000] if source.exists() else README.read_bytes()[:6000]


def test_embedded_model_is_packaged():
    files = {p.name for p in (MODELS_DIR / EMBEDDED_NAME).iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= files
    assert EMBEDDED_NAME in shipped_models()
    size = sum(p.stat().st_size for p in MODELS_DIR.glob("*/*") if p.is_file())
    assert size <= 30 * 2**20, "all shipped models together stay within 30 MiB"
    assert all(p.stat().st_mode & 0o444 == 0o444 for p in MODELS_DIR.glob("*/*")), "package data readable by all"


def test_older_shipped_model_stays_loadable():
    assert "llmzip-gpt2-small-v1" in shipped_models()
    old = load_model("llmzip-gpt2-small-v1")
    assert old.model_id == "llmzip-gpt2-small-v1"
    assert old.fingerprint != load_model("embedded").fingerprint


def test_unknown_shipped_id_is_refused_with_a_clear_message():
    with pytest.raises(ModelLoadError, match="not shipped with this version of llmzip.*llmzip-gpt2-small-v1"):
        load_model("llmzip-gpt2-small-v0")


def test_round_trip_and_beats_gzip_on_prose(embedded):
    data = _prose()
    blob = codec.compress(data, embedded)
    assert codec.decompress(blob, embedded) == data
    assert len(blob) < len(gzip.compress(data, 9))


def test_default_api_uses_the_embedded_model():
    blob = llmzip.compress(b"Hello, hello, hello world!\n")
    assert llmzip.read_info(blob).model_id == EMBEDDED_NAME
    assert llmzip.decompress(blob) == b"Hello, hello, hello world!\n"


V1 = "llmzip-gpt2-small-v1"
# Archives of the same input, one per (model, engine, mixing parameters) that a release made
# by default; each names its model, engine and parameters in its own header.
EMBEDDED_GOLDEN = ["golden-embedded.llz", "golden-embedded-e2.llz", "golden-embedded-e3.llz",
                   "golden-embedded-v2-e3.llz", "golden-embedded-v2-e3-p1.llz"]


def _identity(blob: bytes) -> tuple[str, int, bytes]:
    info = llmzip.read_info(blob)
    return info.model_id, info.engine, info.mix_params


@pytest.mark.parametrize("name", EMBEDDED_GOLDEN)
def test_embedded_golden_archive_decodes(name):
    """Pins every shipped model's weights + engine + mixing preset: a retrained or re-quantised
    model, or a preset whose meaning changed, must not silently change what old archives decode
    to. The model is found from the archive's own header, as ``llmzip decompress`` does."""
    blob = (DATA / name).read_bytes()
    info = llmzip.read_info(blob)
    model = load_model(info.model_id)
    data = codec.decompress(blob, model)
    assert hashlib.sha256(data).hexdigest() == (DATA / "golden-embedded.sha256").read_text().split()[0]
    again = codec.compress(data, model.with_engine(info.engine), chunk_tokens=info.chunk_tokens,
                           group_chunks=info.group_chunks, mixing=codec.MixParams.from_bytes(info.mix_params))
    assert again == blob


def test_goldens_cover_every_shipped_model_and_the_default(embedded):
    pinned = {_identity((DATA / name).read_bytes()) for name in EMBEDDED_GOLDEN}
    assert {m for m, _, _ in pinned} == set(shipped_models())
    assert (EMBEDDED_NAME, embedded.engine_id, codec.DEFAULT_MIX.to_bytes()) in pinned, (
        "the default model, engine and mixing have no golden archive: set LLMZIP_REGEN_GOLDEN=NAME")


@pytest.mark.skipif(not os.environ.get("LLMZIP_REGEN_GOLDEN"), reason="regenerates the golden files")
def test_regenerate_embedded_golden(embedded):  # pragma: no cover - run by hand only
    """Writes the default archive (same input as the others) to tests/data/$LLMZIP_REGEN_GOLDEN."""
    data = codec.decompress((DATA / EMBEDDED_GOLDEN[0]).read_bytes(), load_model(V1))
    (DATA / os.environ["LLMZIP_REGEN_GOLDEN"]).write_bytes(codec.compress(data, embedded))


def test_readme_python_examples_run():
    """Every ```python block of the README runs as written (with the embedded model)."""
    text = README.read_text(encoding="utf-8")
    blocks = [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]
    assert blocks, "the README has no Python example"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {"__name__": "readme_example"})
