"""The Llama family on the exact engine (engine 4): Llama, Qwen2, Mistral; RoPE, RMSNorm, SiLU."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from llmzip import cli, codec, fixedpoint, frames, lockstep
from llmzip.container import read_archive
from llmzip.engine import ExactLlama, LlamaSpec
from llmzip.engine.llama import GATE_CLIP, SWIGLU_BOUND, swiglu
from llmzip.frames import lm
from llmzip.frames.methods import LM
from llmzip.engine.rope import ROPE_FRAC, inverse_frequencies, rope_table
from llmzip.errors import ModelLoadError, ModelMismatchError, UnsupportedFormatError
from llmzip.model import load_model
from conftest import table_digests_by_thread_count
from goldens import DATA, digest, golden_input, pinned_digest, write_golden

GOLDEN_FILES = {"llama": "golden-llama-e4.llz", "qwen2": "golden-qwen2-e4.llz", "mistral": "golden-mistral-e4.llz"}


@pytest.fixture(scope="module", params=list(GOLDEN_FILES))
def family(request):
    """(model_type, the committed tiny model of that type)."""
    return request.param, load_model(str(DATA / f"golden-{request.param}"))


def _rows(model, n: int, length: int, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).integers(0, model.vocab_size, size=(n, length))
    rows[:, 0] = model.bos_id
    return rows


def _tables(model, rows: np.ndarray, step: int | None = None) -> np.ndarray:
    state, step = model.start(len(rows)), step or rows.shape[1]
    return np.concatenate([model.advance(state, rows[:, i : i + step]) for i in range(0, rows.shape[1], step)], 1)


def test_golden_archive_bytes(family):
    """Fixed model + fixed input -> exact archive. A change here breaks engine-4 archives."""
    kind, model = family
    assert model.engine_id == 4
    blob = codec.compress(golden_input(), model, group_chunks=3, mixing=None)
    assert digest(blob) == pinned_digest(GOLDEN_FILES[kind])


def test_golden_archive_still_decodes(family):
    kind, model = family
    blob = (DATA / GOLDEN_FILES[kind]).read_bytes()
    assert read_archive(blob)[0].engine == 4
    assert codec.decompress(blob, model) == golden_input()


@pytest.mark.skipif(not os.environ.get("LLMZIP_REGEN_GOLDEN"), reason="writes missing golden files")
def test_regenerate_missing_golden(family):  # pragma: no cover - run by hand once per new golden
    kind, model = family
    if not (DATA / GOLDEN_FILES[kind]).exists():
        write_golden(GOLDEN_FILES[kind], codec.compress(golden_input(), model, group_chunks=3, mixing=None))


def test_logits_are_close_to_the_float_model(family):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    kind, model = family
    hf = AutoModelForCausalLM.from_pretrained(str(DATA / f"golden-{kind}"), dtype=torch.float32).eval()
    rows = _rows(model, 3, model.max_context)
    exact = model.engine.logits(model.engine.forward(rows, model.engine.new_cache(3))) / 256.0
    with torch.no_grad():
        ref = hf(torch.tensor(rows)).logits.double().numpy()
    # int8 weights and activations on random weights at 8x scale; a rotary or grouping error
    # would grow with the position instead.
    assert np.abs(exact - ref).max() < 0.4
    assert np.sqrt(np.mean((exact - ref) ** 2)) < 0.05 * np.sqrt(np.mean(ref**2))


def test_full_pass_equals_incremental_and_blocked(family):
    _, model = family
    rows = _rows(model, 3, model.max_context)
    full = _tables(model, rows)
    assert np.array_equal(full, _tables(model, rows, step=1))
    assert np.array_equal(full, _tables(model, rows, step=7))


def test_tables_do_not_depend_on_batch_composition(family):
    _, model = family
    alone = _tables(model, _rows(model, 1, 30, seed=1))
    others = _rows(model, 5, 30, seed=2)
    others[3] = _rows(model, 1, 30, seed=1)[0]
    assert np.array_equal(_tables(model, others)[3], alone[0])


def test_thread_count_does_not_change_tables():
    """OpenBLAS and torch with 1 and 2 threads, in separate processes, give the same bits."""
    assert len(table_digests_by_thread_count(DATA / "golden-llama")) == 1


def test_int8_backends_agree(family, monkeypatch):
    """torch._int_mm (when present) and the float64 fallback give the same tables."""
    from llmzip import linear8

    _, model = family
    if not linear8.select_backend(linear8.INT8_GEMM_MIN_OPS):
        pytest.skip("torch._int_mm is not usable here")
    rows = _rows(model, 3, 30, seed=4)
    fast = _tables(model, rows)
    monkeypatch.setattr(linear8, "_use_torch", False)
    assert np.array_equal(_tables(model, rows), fast)


def test_cli_round_trip_any_schedule(llama_family_dir, tmp_path, monkeypatch):
    """Through the CLI with `--model DIR`: `-T 1 --batch-size 3` and `-T 2 --batch-size 16` write the
    same bytes, and each archive decodes under the other settings."""
    monkeypatch.setattr(lockstep, "PARALLEL_MIN_FLOPS", 0)   # worker threads even for a tiny model
    src = tmp_path / "text"
    src.write_bytes(b"It was the best of times, it was the worst of times.\r\n" * 12 + "\u2581 <s> caf\u00e9 "
                    .encode() + b"\xff\xfe\x00" + np.random.default_rng(5).bytes(300))
    settings = {"a": ["-T", "1", "--batch-size", "3"], "b": ["-T", "2", "--batch-size", "16"]}
    run = CliRunner().invoke
    for name, opts in settings.items():
        result = run(cli.main, ["compress", "--model", str(llama_family_dir), "--method", "lm", *opts, str(src),
                                "-o", str(tmp_path / f"{name}.llz")], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    assert (tmp_path / "a.llz").read_bytes() == (tmp_path / "b.llz").read_bytes()
    assert _model_frame_header((tmp_path / "a.llz").read_bytes()).chunk_count >= 4
    for name, opts in (("a", settings["b"]), ("b", settings["a"])):
        out = tmp_path / f"{name}.out"
        result = run(cli.main, ["decompress", "--model", str(llama_family_dir), *opts, str(tmp_path / f"{name}.llz"),
                                "-o", str(out)], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert out.read_bytes() == src.read_bytes()


def _model_frame_header(blob: bytes) -> object:
    """The codec header of the one frame of a format-2 archive, which the model coded."""
    ((_, frame),) = list(frames.read_frames(io.BytesIO(blob)))
    assert frame.method == LM
    return lm.read_header(frame.payload, frame.raw_size, frame.checksum)[0]


def _edited_copy(tmp_path: Path, kind: str, **changes: object) -> Path:
    out = tmp_path / f"{kind}-edited"
    shutil.copytree(DATA / f"golden-{kind}", out)
    config = json.loads((out / "config.json").read_text())
    config.update(changes)
    (out / "config.json").write_text(json.dumps(config))
    return out


def test_fingerprint_covers_the_architecture(tmp_path):
    base = load_model(str(DATA / "golden-llama")).fingerprint
    for i, change in enumerate([{"rms_norm_eps": 1e-5}, {"max_position_embeddings": 48},
                                {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}]):
        assert load_model(str(_edited_copy(tmp_path / str(i), "llama", **change))).fingerprint != base


def test_an_archive_of_another_architecture_asks_for_its_model(family, golden):
    """A GPT-2 engine's archive decoded with a Llama model (and the reverse) is a model mismatch."""
    _, model = family
    with pytest.raises(ModelMismatchError, match="engine 3, which runs gpt2 models, but 'golden-.+' is a llama model"):
        codec.decompress((DATA / "golden-tiny-e3.llz").read_bytes(), model)
    with pytest.raises(ModelMismatchError, match="engine 4, which runs llama models, but 'golden-tiny' is a gpt2"):
        golden.with_engine(4)
    with pytest.raises(UnsupportedFormatError, match="inference engine 9 is newer than this llmzip"):
        model.with_engine(9)


BASE = dict(num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, hidden_size=32,
            intermediate_size=64, max_position_embeddings=64, vocab_size=300, rms_norm_eps=1e-6)


@pytest.mark.parametrize("change, message", [
    ({"hidden_act": "gelu"}, "hidden_act 'gelu' is not supported"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope scaling 'yarn' is not supported"),
    ({"sliding_window": 16}, "sliding window of 16 positions is not supported"),
    ({"partial_rotary_factor": 0.5}, "partial rotary embeddings are not supported"),
    ({"num_key_value_heads": 3}, "multiple of num_key_value_heads"),
])
def test_unsupported_variants_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        LlamaSpec.from_config(SimpleNamespace(**{**BASE, **change}))


def test_weights_that_do_not_match_the_config_are_refused(tmp_path):
    with pytest.raises(ModelLoadError, match=r"gate/up weights have shape \(32, 128\), the config implies \(32, 96\)"):
        load_model(str(_edited_copy(tmp_path, "llama", intermediate_size=48)))


def test_unsupported_model_type_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="model type 'gemma' is not supported.*gpt2, llama, mistral, qwen2"):
        load_model(str(_edited_copy(tmp_path, "llama", model_type="gemma")))


def test_hub_loader_gives_the_same_model(family):
    """The transformers path (hub ids) and the direct directory reader agree: same fingerprint."""
    pytest.importorskip("torch")
    from llmzip.model import _load_hub

    kind, model = family
    assert _load_hub(str(DATA / f"golden-{kind}"), allow_download=False).fingerprint == model.fingerprint


def test_bfloat16_weights_load_exactly(tmp_path):
    """A bfloat16 checkpoint (numpy has no such dtype) gives the engine the same weights as float32."""
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(DATA / "golden-llama"), dtype=torch.bfloat16)
    for dtype in ("bfloat16", "float32"):
        shutil.copytree(DATA / "golden-llama", tmp_path / dtype)
        hf.to(getattr(torch, dtype)).save_pretrained(tmp_path / dtype)
    prints = {load_model(str(tmp_path / d)).fingerprint for d in ("bfloat16", "float32")}
    assert len(prints) == 1


# --- the shared exact operations the Llama family adds ----------------------------------------------

def test_rope_table_is_close_to_cos_and_sin():
    cos, sin = rope_table("10000.0", 16, (), 300)
    angle = np.arange(300)[:, None] * 10000.0 ** (-np.arange(0, 16, 2) / 16)[None, :]
    assert np.abs(cos - np.cos(angle) * 2**ROPE_FRAC).max() <= 0.51
    assert np.abs(sin - np.sin(angle) * 2**ROPE_FRAC).max() <= 0.51


def test_llama3_frequencies_match_transformers():
    pytest.importorskip("torch")
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
    config = LlamaConfig(hidden_size=256, num_attention_heads=4, rope_theta=500000.0, rope_scaling=scaling)
    ref, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    spec = LlamaSpec.from_config(config)
    ours = np.array([float(f) for f in inverse_frequencies(spec.rope_theta, 64, spec.rope_scaling)])
    assert np.allclose(ours, ref.double().numpy(), rtol=1e-6, atol=0)


def test_silu_is_close_to_float_silu():
    u = np.arange(-20 * 4096, 20 * 4096, 5, dtype=np.int64)
    x = u / 4096.0
    assert np.abs(fixedpoint.silu(u, 12) / 4096.0 - x / (1 + np.exp(-x))).max() < 3e-4


def test_rms_norm_is_close_to_float_rms_norm():
    rng = np.random.default_rng(0)
    h = rng.normal(0, 3, size=(4, 64))
    h[0] *= 1e-3                                       # tiny values: eps matters
    h[1] *= 2000                                       # huge values: the row shift kicks in
    gamma = rng.normal(1, 0.2, 64)
    h_fixed = np.round(h * 2**16).astype(np.int64)
    h = h_fixed / 2**16
    out = fixedpoint.rms_norm(h_fixed, np.round(gamma * 2**14).astype(np.int64), 1e-5, 16, 12, 14)
    ref = h / np.sqrt((h * h).mean(-1, keepdims=True) + 1e-5) * gamma
    assert np.abs(out / 2**12 - ref).max() < 2e-3


def test_swiglu_output_stays_within_the_bound_down_is_checked_for(family):
    _, model = family
    inner = model.engine.spec.n_inner
    extreme = np.array([2**40, -(2**40), GATE_CLIP, -GATE_CLIP, 3, 0], dtype=np.int64)
    gate, up = (a.ravel() for a in np.meshgrid(extreme, extreme))
    gate_up = np.concatenate([np.resize(gate, inner), np.resize(up, inner)])[None]
    assert np.abs(swiglu(gate_up)).max() <= SWIGLU_BOUND


def test_weights_whose_outputs_could_overflow_int64_are_refused():
    """float64 -> int64 conversion of 2**63 or more differs between x86 and ARM: refused at load."""
    from llmzip.model_files import _read_safetensors

    config = SimpleNamespace(**json.loads((DATA / "golden-llama" / "config.json").read_text()))
    state = _read_safetensors([DATA / "golden-llama" / "model.safetensors"])
    ExactLlama(LlamaSpec.from_config(config), state)
    key = "model.layers.1.mlp.down_proj.weight"
    state[key] = state[key].astype(np.float64) * 2.0**18   # fine after a norm (ACT_CLIP), not behind SwiGLU
    with pytest.raises(ValueError, match=r"layer 1 down_proj: outputs up to \d+ \(2\*\*6\d or more\) could overflow"):
        ExactLlama(LlamaSpec.from_config(config), state)


def _respelled(tmp_path: Path, kind: str, **spellings: str) -> Path:
    """A copy of a golden model whose config.json writes rope numbers as given (raw JSON text)."""
    out = _edited_copy(tmp_path, kind)
    text = (out / "config.json").read_text()
    for key, spelling in spellings.items():
        text, found = re.subn(rf'"{key}": [^,}}]+', f'"{key}": {spelling}', text)
        assert found == 1
    (out / "config.json").write_text(text)
    return out


@pytest.mark.parametrize("kind, spellings", [
    ("qwen2", [{"rope_theta": s} for s in ("10000", "10000.0", "1e4", "1.0E+4", '"10000"')]),
    ("llama", [{"factor": "8", "original_max_position_embeddings": "16.0", "rope_theta": "5e5"},
               {"factor": "8.0", "original_max_position_embeddings": "16", "rope_theta": "500000"}]),
])
def test_fingerprint_ignores_how_config_json_spells_rope_numbers(tmp_path, kind, spellings):
    base = load_model(str(DATA / f"golden-{kind}")).fingerprint
    for i, spelling in enumerate(spellings):
        assert load_model(str(_respelled(tmp_path / str(i), kind, **spelling))).fingerprint == base


def test_the_default_rope_theta_is_the_spelled_one():
    spec = LlamaSpec.from_config(SimpleNamespace(**BASE))
    assert spec == LlamaSpec.from_config(SimpleNamespace(**BASE, rope_theta=10000))
    assert spec.rope_theta == "10000.0"


@pytest.mark.parametrize("change, message", [
    ({"rope_theta": "ten"}, "rope_theta 'ten' is not a finite number"),
    ({"rope_theta": float("inf")}, "rope_theta inf is not a finite number"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                       "original_max_position_embeddings": 16.5}}, "original_max_position_embeddings 16.5 is not an"),
])
def test_rope_numbers_that_are_not_numbers_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        LlamaSpec.from_config(SimpleNamespace(**{**BASE, **change}))
