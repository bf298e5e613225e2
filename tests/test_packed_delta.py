"""Models stored as their difference from a base (packed, or a difference itself) rebuild their
packed tensors bit for bit."""

from __future__ import annotations

import lzma
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from llmzip import codec, packed
from llmzip.errors import ModelLoadError
from llmzip.model import _cached_dir, load_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import pack_model  # noqa: E402

DATA = Path(__file__).parent / "data"


def test_a_difference_gives_back_every_bit() -> None:
    rng = np.random.default_rng(3)
    base = {"a": rng.integers(-127, 128, (5, 7)).astype(np.int8), "b": rng.standard_normal(9).astype(np.float16),
            "c": rng.standard_normal((2, 3)).astype(np.float32)}
    target = {"a": np.clip(base["a"] + rng.integers(-3, 4, (5, 7)), -127, 127).astype(np.int8),
              "b": np.array([np.nan, -0.0, np.inf, *rng.standard_normal(6)], dtype=np.float16),
              "c": base["c"] * 1.5}
    delta = packed.delta_state(target, base)
    back = packed.apply_delta(delta, base)
    for key, value in target.items():
        assert back[key].dtype == value.dtype and back[key].tobytes() == value.tobytes()
    assert np.abs(delta["a"].astype(np.int16)).max() <= 3        # small numbers, for the compressor
    extremes = {"a": np.array([-127, 127, 0, -128], np.int8), "d": np.array([1e300, -0.0, np.nan])}
    turned = {"a": np.array([127, -127, -128, 0], np.int8), "d": np.array([-1e-300, 5.0, 0.0])}
    back = packed.apply_delta(packed.delta_state(turned, extremes), extremes)
    assert all(back[k].tobytes() == turned[k].tobytes() for k in turned)


@pytest.mark.parametrize("change", [{"x": np.zeros(2, np.int8)}, {"a": np.zeros(3, np.int8)}])
def test_differences_of_unlike_layouts_are_refused(change: dict) -> None:
    base = {"a": np.zeros(2, np.int8)}
    with pytest.raises(packed.PackingError):
        packed.delta_state(change, base)


def _tuned(src: Path, out: Path, seed: int) -> Path:
    """A copy of float model ``src`` with every projection nudged, as fine-tuning would."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(src, out)
    state = load_file(str(src / "model.safetensors"))
    rng = np.random.default_rng(seed)
    for key, value in state.items():
        if key.endswith("_proj.weight"):
            state[key] = (value + 0.01 * np.abs(value).max() * rng.standard_normal(value.shape)).astype(value.dtype)
    save_file(state, str(out / "model.safetensors"))
    return out


@pytest.fixture
def stored(tmp_path: Path) -> tuple[Path, Path]:
    """(a fine-tuned float model, the same stored as its difference from the packed original)."""
    pack_model.pack(DATA / "golden-llama", tmp_path / "models" / "base")
    tuned = _tuned(DATA / "golden-llama", tmp_path / "tuned", seed=1)
    with pytest.raises(SystemExit, match="pack it first"):
        pack_model.pack_delta(tuned, tmp_path / "models" / "base", tmp_path / "models" / "tuned")
    pack_model.pack(tuned, tmp_path / "tuned-packed")
    pack_model.pack_delta(tmp_path / "tuned-packed", tmp_path / "models" / "base", tmp_path / "models" / "tuned")
    _cached_dir.cache_clear()
    return tuned, tmp_path / "models" / "tuned"


def test_a_model_stored_as_a_difference_codes_identically(stored: tuple[Path, Path]) -> None:
    tuned, delta_dir = stored
    plain, rebuilt = load_model(str(tuned)), load_model(str(delta_dir))
    assert rebuilt.fingerprint == plain.fingerprint != load_model(str(delta_dir.parent / "base")).fingerprint
    assert sorted(f.name for f in delta_dir.glob("model.*")) == [packed.DELTA_FILE]
    text = b"A difference from the base, the same archive. " * 20
    assert codec.compress(text, rebuilt) == codec.compress(text, plain)
    # packing the packed form again gives the same difference
    again = pack_model.pack_delta(delta_dir, delta_dir.parent / "base", delta_dir.parent / "again")
    assert again == plain.fingerprint.hex()
    pack_model.unpack(delta_dir, delta_dir.parent.parent / "unpacked")
    assert sorted(f.name for f in (delta_dir.parent.parent / "unpacked").glob("model.*")) == ["model.safetensors"]
    assert load_model(str(delta_dir.parent.parent / "unpacked")).fingerprint == plain.fingerprint
    with pytest.raises(SystemExit, match="packed already"):
        pack_model.pack(delta_dir, delta_dir.parent / "packed")


def test_a_difference_without_its_base_is_refused(stored: tuple[Path, Path]) -> None:
    _, delta_dir = stored
    shutil.rmtree(delta_dir.parent / "base")
    with pytest.raises(ModelLoadError, match="not beside it"):
        load_model(str(delta_dir))


def test_a_difference_from_another_base_is_refused(stored: tuple[Path, Path], tmp_path: Path) -> None:
    _, delta_dir = stored
    shutil.rmtree(delta_dir.parent / "base")
    other = _tuned(DATA / "golden-llama", tmp_path / "other", seed=2)
    pack_model.pack(other, delta_dir.parent / "base")
    _cached_dir.cache_clear()
    with pytest.raises(ModelLoadError, match="not the model it was stored against"):
        load_model(str(delta_dir))


def test_a_damaged_or_newer_difference_is_refused(stored: tuple[Path, Path]) -> None:
    _, delta_dir = stored
    f = delta_dir / packed.DELTA_FILE
    blob = f.read_bytes()
    f.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ModelLoadError, match="xz"):
        load_model(str(delta_dir))
    raw = lzma.decompress(blob).replace(packed.DELTA_FORMAT.encode(), b"llmzip-int8-delta/9")
    f.write_bytes(lzma.compress(raw))
    _cached_dir.cache_clear()
    with pytest.raises(ModelLoadError, match="upgrade"):
        load_model(str(delta_dir))


def test_a_directory_with_a_difference_and_packed_weights_is_refused(stored: tuple[Path, Path]) -> None:
    _, delta_dir = stored
    shutil.copyfile(delta_dir.parent / "base" / packed.PACKED_FILE, delta_dir / packed.PACKED_FILE)
    with pytest.raises(ModelLoadError, match="keep one of them"):
        load_model(str(delta_dir))


def _edit_metadata(f: Path, **changes: str) -> None:
    """Rewrite metadata fields of a difference file (header length and all)."""
    import json

    raw = lzma.decompress(f.read_bytes())
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    header["__metadata__"].update(changes)
    text = json.dumps(header).encode()
    f.write_bytes(lzma.compress(len(text).to_bytes(8, "little") + text + raw[8 + size :]))
    _cached_dir.cache_clear()


@pytest.mark.parametrize("base, message", [("chained", "a loop of bases"),
                                           ("..", "not a model directory name"), ("", "not a model directory name")])
def test_a_loop_of_bases_or_no_name_is_refused(stored: tuple[Path, Path], base: str, message: str) -> None:
    _, delta_dir = stored
    shutil.copytree(delta_dir, delta_dir.parent / "chained")
    _edit_metadata(delta_dir.parent / "chained" / packed.DELTA_FILE, base=base)
    with pytest.raises(ModelLoadError, match=message):
        load_model(str(delta_dir.parent / "chained"))


def test_a_base_in_float_weights_is_refused(stored: tuple[Path, Path]) -> None:
    _, delta_dir = stored
    with pytest.raises(SystemExit, match="must be a packed model"):
        pack_model.pack_delta(delta_dir, DATA / "golden-llama", delta_dir.parent / "again")


def test_a_difference_from_a_difference_codes_identically(stored: tuple[Path, Path], tmp_path: Path) -> None:
    """A fine-tune of a fine-tune is stored against its parent, itself a difference."""
    tuned, delta_dir = stored
    twice = _tuned(tuned, tmp_path / "twice", seed=4)
    pack_model.pack(twice, tmp_path / "twice-packed")
    pack_model.pack_delta(tmp_path / "twice-packed", delta_dir, delta_dir.parent / "twice")
    _cached_dir.cache_clear()
    text = b"Two differences deep, the same archive. " * 20
    assert codec.compress(text, load_model(str(delta_dir.parent / "twice"))) == codec.compress(text, load_model(str(twice)))
    shutil.rmtree(delta_dir.parent / "base")   # the chain needs every base down to the packed one
    _cached_dir.cache_clear()
    with pytest.raises(ModelLoadError, match="not beside it"):
        load_model(str(delta_dir.parent / "twice"))


def test_a_chain_holds_at_most_max_depth_models(stored: tuple[Path, Path], tmp_path: Path) -> None:
    """base <- tuned <- m2 <- ... <- m{MAX_DEPTH - 1} load (MAX_DEPTH models); one more is refused
    when stored and, forged, when loaded."""
    tuned, delta_dir = stored
    models, parent = delta_dir.parent, delta_dir
    for depth in range(2, packed.MAX_DEPTH):
        pack_model.pack(_tuned(tuned, tmp_path / f"f{depth}", seed=depth), tmp_path / f"p{depth}")
        pack_model.pack_delta(tmp_path / f"p{depth}", parent, models / f"m{depth}")
        parent = models / f"m{depth}"
    _cached_dir.cache_clear()
    load_model(str(parent))   # MAX_DEPTH models: base and MAX_DEPTH - 1 differences
    with pytest.raises(SystemExit, match=f"more than {packed.MAX_DEPTH} models"):
        pack_model.pack_delta(tmp_path / f"p{packed.MAX_DEPTH - 1}", parent, models / "deeper")
    shutil.copytree(delta_dir, models / "deeper")
    _edit_metadata(models / "deeper" / packed.DELTA_FILE, base=parent.name)
    with pytest.raises(ModelLoadError, match=f"more than {packed.MAX_DEPTH} models"):
        load_model(str(models / "deeper"))


def test_shipped_differences_name_a_shipped_packed_base_that_still_records_their_fingerprint() -> None:
    from llmzip.model import MODELS_DIR
    from llmzip.model_files import parse_safetensors

    def recorded(model_dir: Path) -> dict:
        """The metadata of a shipped model's packed or difference file (no tensors read)."""
        f = model_dir / packed.DELTA_FILE
        if f.is_file():
            return parse_safetensors(np.frombuffer(lzma.decompress(f.read_bytes()), dtype=np.uint8), f.name, {})[1]
        f = model_dir / packed.PACKED_FILE
        assert f.is_file(), f"{model_dir.name} is a base: it must stay shipped, packed or as a difference"
        return parse_safetensors(np.memmap(f, dtype=np.uint8, mode="r"), f.name, {})[1]

    deltas = sorted(MODELS_DIR.glob("*/" + packed.DELTA_FILE))
    assert deltas, "llmzip-llama-6x384-v1 is stored as a difference"
    for f in deltas:
        meta = recorded(f.parent)
        assert recorded(MODELS_DIR / meta["base"])["fingerprint"] == meta["base_fingerprint"], \
            f"{meta['base']} changed: {f.parent.name} no longer rebuilds"
