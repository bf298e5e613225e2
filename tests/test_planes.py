"""Float weights stored in byte planes load as the very same file."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from llmzip import codec, planes
from llmzip.errors import ModelLoadError
from llmzip.model import MODELS_DIR, _cached_dir, load_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import pack_model  # noqa: E402

DATA = Path(__file__).parent / "data"


def test_any_safetensors_file_round_trips_bit_for_bit(tmp_path: Path) -> None:
    from safetensors.numpy import save

    rng = np.random.default_rng(5)
    tensors = {"f64": rng.standard_normal((3, 5)), "f32": rng.standard_normal(7).astype(np.float32),
               "f16": rng.standard_normal((2, 2)).astype(np.float16), "i8": np.arange(-5, 6, dtype=np.int8),
               "i64": np.arange(9, dtype=np.int64), "empty": np.zeros((0, 4), np.float32)}
    raw = save(tensors, metadata={"format": "pt"})
    blob = planes.encode(raw)
    assert planes.decode(blob) == raw
    assert planes._reorder(raw, split=True) != raw            # the bytes really move...
    assert len(planes._reorder(raw, split=True)) == len(raw)  # ...inside the same layout


def test_a_model_in_byte_planes_codes_identically(tmp_path: Path) -> None:
    pack_model.store_planes(DATA / "golden-tiny", tmp_path / "golden-tiny")   # same name: same archive header
    assert sorted(f.name for f in (tmp_path / "golden-tiny").glob("model.*")) == [planes.PLANES_FILE]
    plain, stored = load_model(str(DATA / "golden-tiny")), load_model(str(tmp_path / "golden-tiny"))
    assert stored.fingerprint == plain.fingerprint
    text = b"Byte planes, the same weights. " * 12
    assert codec.compress(text, stored) == codec.compress(text, plain)


def test_a_damaged_or_doubled_planes_file_is_refused(tmp_path: Path) -> None:
    pack_model.store_planes(DATA / "golden-tiny", tmp_path / "tiny")
    f = tmp_path / "tiny" / planes.PLANES_FILE
    (tmp_path / "tiny" / "model.safetensors").write_bytes((DATA / "golden-tiny" / "model.safetensors").read_bytes())
    with pytest.raises(ModelLoadError, match="keep one of them"):
        load_model(str(tmp_path / "tiny"))
    (tmp_path / "tiny" / "model.safetensors").unlink()
    f.write_bytes(f.read_bytes()[:-100])
    _cached_dir.cache_clear()
    with pytest.raises(ModelLoadError, match="xz"):
        load_model(str(tmp_path / "tiny"))


def test_the_first_embedded_model_is_stored_in_byte_planes() -> None:
    model_dir = MODELS_DIR / "llmzip-gpt2-small-v1"
    assert sorted(f.name for f in model_dir.glob("model.*")) == [planes.PLANES_FILE]
    assert (model_dir / planes.PLANES_FILE).stat().st_size < 18.5e6      # float32: 21.6 MB as it was
