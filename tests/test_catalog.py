"""llmzip models: shipped models and runnable models of a Hugging Face cache, without loading weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from click.testing import CliRunner

from llmzip import cli
from llmzip.catalog import available_models
from llmzip.model import EMBEDDED_NAME, shipped_models


def _cache_repo(cache: Path, repo_id: str, model_dir: Path, model_type: str | None = None) -> None:
    """Lay ``model_dir`` out as the hub cache does: models--org--name/{refs,blobs,snapshots/REV}."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / ("0" * 40)
    shutil.copytree(model_dir, snapshot)
    (repo / "blobs").mkdir()
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    if model_type:
        config = json.loads((snapshot / "config.json").read_text())
        (snapshot / "config.json").write_text(json.dumps({**config, "model_type": model_type}))


def test_shipped_models_listed_with_their_shape_and_the_default() -> None:
    entries = available_models(include_cache=False)
    assert [e.name for e in entries] == shipped_models()
    default = [e for e in entries if e.default]
    assert [e.name for e in default] == [EMBEDDED_NAME]
    assert default[0].model_type == "gpt2" and default[0].layers > 0 and default[0].weight_bytes > 100_000


def test_cache_lists_only_what_the_engine_runs(tmp_path: Path, tiny_model_dir: Path) -> None:
    cache = tmp_path / "hub"
    _cache_repo(cache, "org/tiny-gpt2", tiny_model_dir)
    _cache_repo(cache, "org/tiny-bert", tiny_model_dir, model_type="bert")
    cached = [e for e in available_models(cache_dir=cache) if e.source == "cache"]
    assert [(e.name, e.model_type, e.layers, e.context) for e in cached] == [("org/tiny-gpt2", "gpt2", 2, 64)]


def test_models_command(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    result = CliRunner().invoke(cli.main, ["models", "--shipped-only", "--json"])
    assert result.exit_code == 0, result.output
    assert [e["name"] for e in json.loads(result.output)] == shipped_models()
    text = CliRunner().invoke(cli.main, ["models", "--shipped-only"]).output
    assert f"{EMBEDDED_NAME} (default)  [shipped]" in text
