"""scripts/train_embedded.py on a tiny synthetic data directory: data split, resume, snapshot, export."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
sys.path.append(str(SCRIPTS))

from train_data import is_held_out, parse_group_weights, read_documents, source_weights  # noqa: E402

SOURCES = {
    "gutenberg_000.txt": [b"It was a dark and stormy night; the rain fell in torrents. " * 30] * 3,
    "code_c_000.txt": [b"int main(void) { return printf(\"%d\\n\", 42); }\n" * 40] * 3,
    "markup_json_000.txt": [b'{"name": "x", "values": [1, 2, 3], "ok": true}\n' * 40] * 2,
}
TINY = ["--vocab", "300", "--layers", "1", "--width", "32", "--heads", "2", "--kv-heads", "1",
        "--ffn", "64", "--ctx", "32", "--batch", "4", "--warmup", "2", "--threads", "1", "--eval-every", "3"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three sources laid out like ../shared/train: documents joined by blank lines, and an index."""
    root = tmp_path_factory.mktemp("train-data")
    lines = ["file\toffset\tlength\tsource_path"]
    for name, docs in SOURCES.items():
        blob, offset = b"", 0
        for i, doc in enumerate(docs):
            lines.append(f"{name}\t{len(blob)}\t{len(doc)}\tdoc{i}")
            blob += doc + b"\n\n"
        (root / name).write_bytes(blob)
    (root / "index.tsv").write_text("\n".join(lines) + "\n")
    return root


def run_script(*argv: str) -> str:
    proc = subprocess.run([sys.executable, str(SCRIPTS / "train_embedded.py"), *argv], cwd=REPO,
                          capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_every_source_has_held_out_and_training_text(data_dir: Path) -> None:
    docs = read_documents(data_dir)
    assert [d.raw for d in docs if d.source == "code_c"] == SOURCES["code_c_000.txt"]
    held = {d.source for d in docs if is_held_out(d)}
    trained = {d.source for d in docs if not is_held_out(d)}
    assert held == trained == {"gutenberg", "code_c", "markup_json"}


def test_source_weights_follow_groups() -> None:
    weights = source_weights({"gutenberg": 400, "prose": 100, "code_c": 100, "markup_json": 100})
    assert abs(sum(weights.values()) - 1.0) < 1e-12
    assert abs(weights["code_c"] - 0.30) < 1e-12 and abs(weights["markup_json"] - 0.25) < 1e-12
    assert weights["gutenberg"] == pytest.approx(2 * weights["prose"])   # sqrt(400) / sqrt(100)


def test_group_weights_can_be_set_per_run() -> None:
    chosen = parse_group_weights("prose=0.6, code=0.22,markup=0.18")
    weights = source_weights({"gutenberg": 400, "prose": 100, "code_c": 100, "markup_json": 100}, chosen)
    assert weights["code_c"] == pytest.approx(0.22) and weights["gutenberg"] + weights["prose"] == pytest.approx(0.6)
    for bad in ("prose=1", "prose=0.5,code=0.5,markup=0.1,other=1", "prose=-1,code=1,markup=1",
                "prose=nan,code=1,markup=1", "prose=1,code=1,markup=1,prose=2"):
        with pytest.raises(ValueError, match="group weights"):
            parse_group_weights(bad)


def test_resumed_run_equals_uninterrupted_run_and_exports(data_dir: Path, tmp_path: Path) -> None:
    common = ["--data", str(data_dir), *TINY, "--plan-tokens", str(6 * 4 * 31)]
    run_script("--work", str(tmp_path / "whole"), *common)
    run_script("--work", str(tmp_path / "split"), *common, "--plan-tokens", str(3 * 4 * 31))
    out = run_script("--work", str(tmp_path / "split"), *common, "--snapshot", str(tmp_path / "snap.safetensors"),
                     "--export", str(tmp_path / "export"))
    assert "resumed at step 3" in out
    logs = [[json.loads(line) for line in (tmp_path / w / "log.jsonl").read_text().splitlines()]
            for w in ("whole", "split")]
    final = [log[-1] for log in logs]
    assert final[0]["step"] == final[1]["step"] == 6
    assert final[0]["loss"] == final[1]["loss"]
    assert set(final[0]["held_out_bpb"]) >= {"all", "prose", "code", "markup", "code_c"}
    assert json.loads((tmp_path / "snap.json").read_text())["step"] == 6

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "export")
    assert model.config.model_type == "llama" and model.config.num_key_value_heads == 1
    assert AutoTokenizer.from_pretrained(tmp_path / "export").bos_token == "<|endoftext|>"


def test_init_from_snapshot_continues_the_count(data_dir: Path, tmp_path: Path) -> None:
    common = ["--data", str(data_dir), *TINY]
    snap = tmp_path / "snap.safetensors"
    run_script("--work", str(tmp_path / "a"), *common, "--plan-tokens", str(2 * 4 * 31), "--snapshot", str(snap))
    (tmp_path / "b").mkdir()
    for name in ("tokenizer.json",):   # a new machine: same data, fresh work directory
        (tmp_path / "b" / name).write_bytes((tmp_path / "a" / name).read_bytes())
    out = run_script("--work", str(tmp_path / "b"), *common, "--plan-tokens", str(4 * 4 * 31),
                     "--init-from", str(snap))
    assert "initialised from" in out and "at step 2" in out
    last = json.loads((tmp_path / "b" / "log.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 4


def _train_and_pack(common: list[str], tmp_path: Path) -> None:
    """Two steps of the tiny model in tmp_path/a, exported to tmp_path/export, packed into tmp_path/packed."""
    run_script("--work", str(tmp_path / "a"), *common, "--plan-tokens", str(2 * 4 * 31),
               "--export", str(tmp_path / "export"))
    subprocess.run([sys.executable, str(SCRIPTS / "pack_model.py"), str(tmp_path / "export"), str(tmp_path / "packed")],
                   cwd=REPO, check=True, capture_output=True)


def test_init_from_a_packed_model_directory(data_dir: Path, tmp_path: Path) -> None:
    """A shipped (packed) model is itself a starting point: step and tokens from its training log."""
    common = ["--data", str(data_dir), *TINY]
    _train_and_pack(common, tmp_path)
    out = run_script("--work", str(tmp_path / "b"), *common, "--plan-tokens", str(3 * 4 * 31),
                     "--init-from", str(tmp_path / "packed"))   # the model's tokenizer is adopted
    assert "at step 2" in out and "tokenizer trained" not in out
    assert (tmp_path / "b" / "tokenizer.json").read_bytes() == (tmp_path / "export" / "tokenizer.json").read_bytes()
    assert not (tmp_path / "packed" / "tokenizer.json").exists()   # shipped xz-compressed
    assert json.loads((tmp_path / "b" / "log.jsonl").read_text().splitlines()[-1])["step"] == 3
    wider = [*common[:-len(TINY)], *[("48" if a == "32" and TINY[i - 1] == "--width" else a) for i, a in enumerate(TINY)]]
    proc = subprocess.run([sys.executable, str(SCRIPTS / "train_embedded.py"), "--work", str(tmp_path / "c"), *wider,
                           "--init-from", str(tmp_path / "packed")], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode != 0 and "differs from the arguments" in proc.stderr


def test_a_fine_tune_with_frozen_embeddings_keeps_its_base_embeddings(data_dir: Path, tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    common = ["--data", str(data_dir), *TINY]
    _train_and_pack(common, tmp_path)
    run_script("--work", str(tmp_path / "b"), *common, "--plan-tokens", str(4 * 4 * 31), "--init-from",
               str(tmp_path / "packed"), "--freeze-embeddings", "--export", str(tmp_path / "tuned"))
    base = load_file(str(tmp_path / "packed" / "model.int8.safetensors"))
    tuned = load_file(str(tmp_path / "tuned" / "model.safetensors"))
    key = "model.embed_tokens.weight"
    assert tuned[key].dtype == base[key].dtype and tuned[key].tobytes() == base[key].tobytes()
    assert not np.array_equal(tuned["model.layers.0.mlp.up_proj.weight"], load_file(
        str(tmp_path / "export" / "model.safetensors"))["model.layers.0.mlp.up_proj.weight"])
    for work, args, message in ((tmp_path / "b", ["--plan-tokens", str(5 * 4 * 31)], "resume it the same way"),
                                (tmp_path / "c", ["--freeze-embeddings"], "give it --init-from")):
        proc = subprocess.run([sys.executable, str(SCRIPTS / "train_embedded.py"), "--work", str(work), *common, *args],
                              cwd=REPO, capture_output=True, text=True)
        assert proc.returncode != 0 and message in proc.stderr


def _device_train(env: dict[str, str]) -> subprocess.CompletedProcess:
    """scripts/device_train.sh planned to 0.05 minutes of the tiny shape. Its stop at 1.1x the plan
    is raised (--minutes 5): on a busy 2-core machine the steps after the timed ones can run slower
    than those the plan was made from, and the run would stop short of the plan."""
    return subprocess.run(["bash", str(SCRIPTS / "device_train.sh"), "0.05", *TINY, "--eval-every", "1000",
                           "--minutes", "5"], cwd=REPO, env=env, capture_output=True, text=True, timeout=240,
                          check=False)


def test_device_script_plans_to_the_minutes_and_exports(data_dir: Path, tmp_path: Path) -> None:
    """scripts/device_train.sh as a session with an accelerator would run it (here on the CPU, tiny)."""
    (data_dir / "MANIFEST.md").write_text("tiny test data\n")
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "OUT": str(out), "DEVICE": "cpu", "DATA": str(data_dir), "WORK": str(tmp_path / "work")}
    proc = _device_train(env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    planned = re.search(r"planned (\d+) steps to fit 0.05 minutes", proc.stdout)
    assert planned, proc.stdout[-2000:]
    last = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    assert last["step"] == int(planned.group(1)) and "held_out_bpb" in last
    assert (out / "model" / "model.safetensors").exists() and (out / "snapshot" / "llama-6x384.json").exists()


def test_packed_streams_train_without_the_data(data_dir: Path, tmp_path: Path) -> None:
    """pack_streams.py: what a lent accelerator receives instead of ../shared/train (see device_train.sh)."""
    import numpy as np

    common = [*TINY, "--plan-tokens", str(2 * 4 * 31)]
    run_script("--work", str(tmp_path / "a"), "--data", str(data_dir), *common)
    pack = [sys.executable, str(SCRIPTS / "pack_streams.py")]
    subprocess.run([*pack, "pack", "--work", str(tmp_path / "a"), "--out", str(tmp_path / "packed"),
                    "--budget-mb", "1"], check=True, capture_output=True, timeout=120)
    subprocess.run([*pack, "unpack", "--packed", str(tmp_path / "packed"), "--work", str(tmp_path / "b")],
                   check=True, capture_output=True, timeout=120)
    streams = sorted((tmp_path / "a").glob("*.npy"))
    assert {p.name.split(".")[1] for p in streams} == {"train", "val"}
    for path in streams:                                       # a budget this large keeps every token
        assert np.array_equal(np.load(path), np.load(tmp_path / "b" / path.name))
    out = tmp_path / "out"                                     # device_train.sh unpacks them itself
    out.mkdir()
    env = {**os.environ, "OUT": str(out), "DEVICE": "cpu", "PACKED": str(tmp_path / "packed"),
           "DATA": str(tmp_path / "absent"), "WORK": str(tmp_path / "c")}
    proc = _device_train(env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "unpacked" in proc.stdout and "tokenizer trained" not in proc.stdout and "streams built" not in proc.stdout
    assert (out / "model" / "model.safetensors").exists()


def test_pack_keeps_the_share_of_training_tokens_that_fits() -> None:
    import numpy as np
    from pack_streams import _xz, keep_fraction

    tokens = np.random.default_rng(0).integers(0, 8192, size=200_000).astype(np.uint16)
    whole = len(_xz(tokens))
    assert keep_fraction({"prose.train": tokens}, 0, 10 * whole) == 1.0
    assert keep_fraction({"prose.train": tokens}, whole // 2, whole) == pytest.approx(0.5, abs=0.05)
    with pytest.raises(SystemExit, match="held-out"):
        keep_fraction({"prose.train": tokens}, 2 * whole, whole)
