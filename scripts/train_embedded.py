#!/usr/bin/env python3
"""Train one of llmzip's embedded models: a byte-level BPE tokenizer and a small causal LM.

Reproducible from a directory laid out like ``../shared/train`` (see ``train_data.py``). Every
stage writes into ``--work`` and is skipped when its output exists, so a killed run resumes
where it stopped with the same command::

    python scripts/train_embedded.py --work /tmp/llmzip-train-llama --minutes 170

Stages: (1) tokenizer (byte-level BPE, bytes kept exactly as they are); (2) tokenised
train/held-out streams per data source; (3) training with bf16 autocast, AdamW and a
warmup-stable-decay schedule over ``--plan-tokens`` (so a run can be continued for as many
sessions as it takes: the rate stays flat until the last ``--decay-frac`` of the plan, and the
plan can be extended while it is flat); (4) export in Hugging Face layout.

The data sampler draws batch ``k`` from ``numpy.random.default_rng([seed, k])``, so a resumed
run sees exactly the batches an uninterrupted run would have seen. ``--snapshot`` writes a
compact weights-only copy (bfloat16 safetensors, a few tens of MB) that can be committed and
resumed from on another machine with ``--init-from`` (the optimiser state restarts, with a
short warm-up).

The defaults are the Llama shape of the next embedded model (6 layers, 384 wide, 6 query and
2 key/value heads, SwiGLU 1024, 8192-token vocabulary, 512-token context). ``--arch gpt2
--layers 3 --width 192 --heads 4 --vocab 4096 --ctx 256`` is the shape of llmzip-gpt2-small-v2
(trained by this script as of commit 52cb80f, on the older data mix).
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from train_data import BOS, build_streams, parse_group_weights, read_documents, train_tokenizer
from train_windows import HeldOut, Sampler, lm_loss, token_byte_lengths

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # llmzip itself, when run from a checkout


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "train")
    p.add_argument("--work", type=Path, required=True, help="directory for tokenizer, streams, checkpoints, log")
    p.add_argument("--arch", choices=("llama", "gpt2"), default="llama")
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--width", type=int, default=384)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--kv-heads", type=int, default=2, help="key/value heads (llama: grouped-query attention)")
    p.add_argument("--ffn", type=int, default=1024, help="SwiGLU hidden size (llama)")
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--batch", type=int, default=16, help="sequences per step")
    p.add_argument("--plan-tokens", type=float, default=300e6, help="planned training tokens (sets the schedule)")
    p.add_argument("--plan-minutes", type=float,
                   help="one-shot runs (e.g. a lent GPU): plan as many steps as fit this many minutes at the "
                        "speed measured over the first steps, instead of --plan-tokens")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (worth it on a GPU)")
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--warmup", type=int, default=300, help="warm-up steps (also after --init-from)")
    p.add_argument("--decay-frac", type=float, default=0.15, help="final fraction of the plan spent decaying")
    p.add_argument("--group-weights", type=parse_group_weights,
                   help="sampling weight of each data group, e.g. prose=0.6,code=0.22,markup=0.18 "
                        "(default: train_data.GROUP_WEIGHTS); applies to the steps this run takes")
    p.add_argument("--freeze-embeddings", action="store_true", help="train all but the (tied) embeddings")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--minutes", type=float, default=170.0, help="stop (with a checkpoint) after this long")
    p.add_argument("--ckpt-every", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=1000)
    p.add_argument("--init-from", type=Path,
                   help="when --work has no checkpoint, start from this weights-only snapshot or exported "
                        "(or shipped, packed) model directory; the optimiser restarts")
    p.add_argument("--snapshot", type=Path, help="write a weights-only bfloat16 snapshot here when stopping")
    p.add_argument("--export", type=Path, help="write the final model here in HF layout")
    p.add_argument("--export-only", action="store_true", help="export the latest checkpoint without training")
    p.add_argument("--export-dtype", choices=("float16", "float32"), default="float16")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- model


def make_model(args: argparse.Namespace, vocab: int, bos: int) -> torch.nn.Module:
    torch.manual_seed(args.seed)
    if args.arch == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        return GPT2LMHeadModel(GPT2Config(
            vocab_size=vocab, n_positions=args.ctx, n_embd=args.width, n_layer=args.layers, n_head=args.heads,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=bos, eos_token_id=bos,
            activation_function="gelu_new", tie_word_embeddings=True))
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab, hidden_size=args.width, intermediate_size=args.ffn, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, max_position_embeddings=args.ctx,
        rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=True, attention_bias=False,
        mlp_bias=False, bos_token_id=bos, eos_token_id=bos, hidden_act="silu"))


def lr_at(step: int, plan_steps: int, args: argparse.Namespace, warm_start: int = 0) -> float:
    """Warm-up (from ``warm_start``), flat, then a linear decay to 10% over the plan's last part."""
    since = step - warm_start
    if since < args.warmup:
        return args.lr * (since + 1) / args.warmup
    decay_start = plan_steps * (1 - args.decay_frac)
    if step < decay_start:
        return args.lr
    frac = min(1.0, (step - decay_start) / max(1.0, plan_steps - decay_start))
    return args.lr * (1.0 - 0.9 * frac)


# ----------------------------------------------------------------------------- training


def read_init(path: Path, shape: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Float32 weights and {step, tokens, shape} to start from: a ``--snapshot`` file (its ``.json``
    beside it), or a model directory this script exported, packed or not (a shipped model: the
    step and tokens are its ``train_log.jsonl``'s last; the shape is taken as the arguments' once
    ``config.json`` agrees with them)."""
    if not path.is_dir():
        from safetensors.torch import load_file

        return {k: v.float() for k, v in load_file(str(path)).items()}, json.loads(path.with_suffix(".json").read_text())
    from llmzip.model_files import read_weights

    config = json.loads((path / "config.json").read_text())
    if config.get("model_type") != shape["arch"]:
        raise SystemExit(f"{path}: a {config.get('model_type')!r} model, the arguments train {shape['arch']!r}")
    seen = {"vocab": config["vocab_size"], "layers": config["num_hidden_layers"], "width": config["hidden_size"],
            "heads": config["num_attention_heads"], "kv_heads": config["num_key_value_heads"],
            "ffn": config["intermediate_size"], "ctx": config["max_position_embeddings"]}
    if any(shape[k] != v for k, v in seen.items()):
        raise SystemExit(f"{path}: config.json {seen} differs from the arguments {shape}")
    last = json.loads((path / "train_log.jsonl").read_text().splitlines()[-1])
    state, _ = read_weights(path)
    weights = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in state.items()}
    return weights, {"step": last["step"], "tokens": last["tokens"], "shape": shape}


SHAPE_KEYS = ("arch", "vocab", "layers", "width", "heads", "kv_heads", "ffn", "ctx", "batch", "seed")


class Trainer:
    """Owns the model, optimiser and counters; saves and restores them."""

    def __init__(self, args: argparse.Namespace, vocab: int, bos: int) -> None:
        self.args, self.device = args, args.device
        self.model = make_model(args, vocab, bos).to(self.device)
        self.forward: torch.nn.Module = self.model
        # Frozen (tied) embeddings keep a fine-tuned model's largest tensor equal to its base's: stored
        # as its difference from the base (llmzip.packed), that tensor then costs nothing.
        self.model.get_input_embeddings().weight.requires_grad_(not args.freeze_embeddings)
        trained = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(trained, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
        self.step, self.tokens, self.warm_start = 0, 0, 0
        self.ckpt = args.work / "checkpoint.pt"
        self.shape = {k: getattr(args, k) for k in SHAPE_KEYS}

    def restore(self) -> None:
        if self.ckpt.exists():
            state = torch.load(self.ckpt, weights_only=False, map_location=self.device)
            self._check_shape(state["shape"])
            if state.get("frozen", self.args.freeze_embeddings) != self.args.freeze_embeddings:
                raise SystemExit(f"{self.ckpt} was trained with --freeze-embeddings {'on' if state['frozen'] else 'off'}:"
                                 " resume it the same way")
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["opt"])
            self.step, self.tokens, self.warm_start = state["step"], state["tokens"], state["warm_start"]
            print(f"resumed at step {self.step} ({self.tokens / 1e6:.1f} M tokens)", flush=True)
        elif self.args.freeze_embeddings and not self.args.init_from:
            raise SystemExit("--freeze-embeddings keeps a base model's embeddings: give it --init-from")
        elif self.args.init_from:
            weights, meta = read_init(self.args.init_from, self.shape)
            self._check_shape(meta["shape"])
            missing, unexpected = self.model.load_state_dict(weights, strict=False)
            if unexpected or set(missing) - {"lm_head.weight"}:
                raise SystemExit(f"{self.args.init_from}: missing {missing}, unexpected {unexpected}")
            self.model.tie_weights()
            self.step, self.tokens, self.warm_start = meta["step"], meta["tokens"], meta["step"]
            print(f"initialised from {self.args.init_from} at step {self.step}; optimiser restarts", flush=True)

    def _check_shape(self, saved: dict) -> None:
        if saved != self.shape:
            raise SystemExit(f"checkpoint shape {saved} differs from the arguments {self.shape}")

    def save(self) -> None:
        tmp = self.ckpt.with_suffix(".tmp")
        torch.save({"model": self.model.state_dict(), "opt": self.opt.state_dict(), "step": self.step,
                    "tokens": self.tokens, "warm_start": self.warm_start, "shape": self.shape,
                    "frozen": self.args.freeze_embeddings}, tmp)
        tmp.replace(self.ckpt)

    def snapshot(self, path: Path) -> None:
        """Weights only, bfloat16, tied head stored once: what a later session resumes from."""
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        # Frozen tensors keep float32: rounded to bfloat16 they would no longer equal the base's.
        frozen = {name for name, p in self.model.named_parameters() if not p.requires_grad}
        state = {k: v.detach().to("cpu", torch.float32 if k in frozen else torch.bfloat16).contiguous()
                 for k, v in self.model.state_dict().items() if k != "lm_head.weight"}
        save_file(state, str(path))
        meta = {"step": self.step, "tokens": self.tokens, "shape": self.shape}
        path.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
        print(f"snapshot at step {self.step} written to {path}", flush=True)

    def train_step(self, ids: torch.Tensor, plan_steps: int) -> tuple[float, float]:
        lr = lr_at(self.step, plan_steps, self.args, self.warm_start)
        for group in self.opt.param_groups:
            group["lr"] = lr
        loss, count = lm_loss(self.forward, ids.to(self.device), self.device)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.step += 1
        self.tokens += count
        return loss.item(), lr


TIMED_STEPS = 30   # --plan-minutes: steps timed before the plan is fixed (all inside the warm-up)


def timed_plan(step: int, elapsed_s: float, minutes: float, warmup: int) -> int:
    """Steps that fit ``minutes`` at the rate of the first ``step`` steps (10% kept for evaluations)."""
    rate = step / max(elapsed_s, 1e-9)
    return max(warmup + 1, int(rate * (minutes * 60 * 0.9)))


def run(args: argparse.Namespace, tok_path: Path) -> Trainer:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_path))
    bos = tok.token_to_id(BOS)
    trainer = Trainer(args, tok.get_vocab_size(), bos)
    trainer.restore()
    plan_steps = int(args.plan_tokens // (args.batch * (args.ctx - 1)))
    if args.export_only or trainer.step >= plan_steps:
        return trainer
    if args.compile:   # the compiled wrapper runs the steps; checkpoints keep the plain module's names
        trainer.forward = torch.compile(trainer.model)
    sampler = Sampler(args.work, args.seed, args.ctx, bos, args.group_weights)
    held_out = HeldOut(args.work, args.ctx, bos, token_byte_lengths(tok_path))
    t0, start_tokens, log_path = time.time(), trainer.tokens, args.work / "log.jsonl"
    while trainer.step < plan_steps:
        loss, lr = trainer.train_step(sampler.batch(trainer.step, args.batch), plan_steps)
        step, elapsed = trainer.step, time.time() - t0
        if args.plan_minutes and step == trainer.warm_start + TIMED_STEPS:
            plan_steps = timed_plan(step, elapsed, args.plan_minutes, args.warmup)
            print(f"planned {plan_steps} steps to fit {args.plan_minutes} minutes", flush=True)
        record = {"step": step, "tokens": trainer.tokens, "loss": round(loss, 4), "lr": round(lr, 6),
                  "tok_per_s": round((trainer.tokens - start_tokens) / elapsed), "elapsed_s": round(elapsed)}
        if step % args.eval_every == 0 or step == plan_steps:
            record["held_out_bpb"] = held_out.score(trainer.model, args.device)
        if step % 25 == 0 or "held_out_bpb" in record:
            with log_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            print(json.dumps(record), flush=True)
        out_of_time = elapsed > args.minutes * 60
        if step % args.ckpt_every == 0 or out_of_time or step == plan_steps:
            trainer.save()
        if out_of_time:
            print(f"time limit reached at step {step}; resume with the same command", flush=True)
            break
    return trainer


def export(model: torch.nn.Module, work: Path, out: Path, dtype: str, ctx: int) -> None:
    """Write ``model`` in HF layout at ``dtype``, with the tokenizer and the training log."""
    from transformers import PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    copy.deepcopy(model).to("cpu", getattr(torch, dtype)).save_pretrained(out, safe_serialization=True)
    shutil.copyfile(work / "log.jsonl", out / "train_log.jsonl")
    (out / "generation_config.json").unlink(missing_ok=True)   # not used by llmzip
    fast = PreTrainedTokenizerFast(tokenizer_file=str(work / "tokenizer.json"), bos_token=BOS, eos_token=BOS,
                                   unk_token=None)
    fast.model_max_length = ctx
    fast.save_pretrained(out)
    for f in out.iterdir():   # safetensors writes 0600: package data must be readable by everyone
        f.chmod(0o644)
    print(f"exported to {out}", flush=True)


def prepare_data(args: argparse.Namespace) -> Path:
    tok_path = args.work / "tokenizer.json"
    docs = None
    if not tok_path.exists():
        docs = read_documents(args.data)
        t = time.time()
        train_tokenizer(docs, args.vocab, tok_path)
        print(f"tokenizer trained in {time.time() - t:.0f}s", flush=True)
    if not (args.work / "streams.json").exists():
        docs = docs or read_documents(args.data)
        t = time.time()
        build_streams(docs, tok_path, args.work)
        print(f"streams built in {time.time() - t:.0f}s", flush=True)
    return tok_path


def adopt_tokenizer(args: argparse.Namespace) -> None:
    """``--init-from DIR`` trains on with the model's own tokenizer: copied into a new work
    directory, and refused where the work directory holds another one."""
    if not (args.init_from and args.init_from.is_dir()):
        return
    from tokenizers import Tokenizer

    from llmzip.model_files import read_tokenizer_json

    theirs, ours = read_tokenizer_json(args.init_from), args.work / "tokenizer.json"
    if not ours.exists():
        ours.write_bytes(theirs.encode("utf-8"))
        return
    if Tokenizer.from_str(theirs).get_vocab() != Tokenizer.from_file(str(ours)).get_vocab():
        raise SystemExit(f"{ours} is not the tokenizer of {args.init_from}")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    adopt_tokenizer(args)
    if not args.export_only:
        (args.work / "args.json").write_text(json.dumps({k: str(v) for k, v in vars(args).items()}, indent=1))
    trainer = run(args, prepare_data(args))
    if args.snapshot:
        trainer.snapshot(args.snapshot)
    if args.export:
        export(trainer.model, args.work, args.export, args.export_dtype, args.ctx)


if __name__ == "__main__":
    main()
