"""The embedded model ships with the package, round-trips real text and beats gzip on prose."""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import pytest

import llmzip
from llmzip import codec, levels
from llmzip.errors import ModelLoadError
from llmzip.model import EMBEDDED_NAME, MODELS_DIR, load_model, shipped_models
from llmzip.mixparams import PRESETS
from goldens import write_golden

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
    assert size <= 60_000_000, "all shipped models together stay under 60 MB, the package's budget"
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
    data = _prose()
    blob = llmzip.compress(data)
    assert [f.model_id for f in llmzip.read_info(blob).lm_fields.values()] == [EMBEDDED_NAME]
    assert llmzip.decompress(blob) == data


V1 = "llmzip-gpt2-small-v1"
# Archives of the same input, one per (model, engine, mixing parameters) that a release made
# by default; each names its model, engine and parameters in its own header. Every such file
# in tests/data is pinned, so a regenerated one is covered as soon as it is written.
EMBEDDED_GOLDEN = sorted(p.name for p in DATA.glob("golden-embedded*.llz"))


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
        "the default model, engine and mixing have no golden archive: run LLMZIP_REGEN_GOLDEN=1 pytest -k regenerate")


def default_golden_name(model_id: str, engine: int, mixing: codec.MixParams | None) -> str:
    """``golden-embedded-v2-e3-p1.llz``: the model's version suffix, the engine, the mixing preset."""
    version = model_id.removeprefix("llmzip-").removeprefix("gpt2-small-")
    preset = "" if mixing is None else f"-p{mixing.preset}" if mixing.preset is not None else "-custom"
    return f"golden-embedded-{version}-e{engine}{preset}.llz"


def test_default_golden_name_follows_the_existing_ones(embedded):
    assert default_golden_name(EMBEDDED_NAME, 3, PRESETS[1]) == "golden-embedded-v2-e3-p1.llz"
    assert default_golden_name("llmzip-llama-6x384-v1", 4, PRESETS[1]) == "golden-embedded-llama-6x384-v1-e4-p1.llz"
    assert default_golden_name("llmzip-llama-6x384-v2", 4, PRESETS[1]) == "golden-embedded-llama-6x384-v2-e4-p1.llz"
    assert default_golden_name("llmzip-llama-6x384-v3", 4, PRESETS[1]) == "golden-embedded-llama-6x384-v3-e4-p1.llz"
    assert default_golden_name(levels.LLAMA, 4, PRESETS[1]) == "golden-embedded-llama-6x384-v4-e4-p1.llz"


@pytest.mark.skipif(not os.environ.get("LLMZIP_REGEN_GOLDEN"), reason="regenerates the golden files")
def test_regenerate_embedded_golden(embedded):  # pragma: no cover - run by hand only
    """Writes the archive of today's defaults, and of the top level's model at that level's
    chunking (same input as the others), under the names :func:`default_golden_name` gives; an
    existing golden is never changed (see write_golden)."""
    data = codec.decompress((DATA / "golden-embedded.llz").read_bytes(), load_model(V1))
    write_golden(default_golden_name(embedded.model_id, embedded.engine_id, codec.DEFAULT_MIX),
                 codec.compress(data, embedded))
    best = levels.get(levels.MAX_LEVEL)
    model = load_model(best.model)
    write_golden(default_golden_name(model.model_id, model.engine_id, codec.DEFAULT_MIX),
                 codec.compress(data, model, chunk_tokens=best.chunk_tokens))


def test_readme_python_examples_run():
    """Every ```python block of the README runs as written (with the embedded model)."""
    text = README.read_text(encoding="utf-8")
    blocks = [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]
    assert blocks, "the README has no Python example"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {"__name__": "readme_example"})
