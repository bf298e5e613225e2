#!/usr/bin/env python3
"""Write tests/data/golden-tiny: the fixed tiny GPT-2 the golden archive tests decode with.

Run once; the output is committed and must never change (the golden tests pin archives made
with it). Weights are drawn at a larger scale than GPT-2's init so that attention is peaked
and GELU, LayerNorm and softmax see realistic ranges.
"""

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "golden-tiny"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    text = "".join(p.read_text() for p in sorted((OUT.parents[2] / "llmzip").glob("*.py")))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([text], trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    fast.save_pretrained(OUT)
    torch.manual_seed(20261123)
    config = GPT2Config(vocab_size=len(fast), n_positions=48, n_embd=32, n_layer=2, n_head=4,
                        bos_token_id=0, eos_token_id=0, activation_function="gelu_new")
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.mul_(8.0)            # std 0.16 instead of 0.02: peaked, non-trivial predictions
            elif name.endswith("bias"):
                p.normal_(0.0, 0.1)
    model.save_pretrained(OUT, safe_serialization=True)


if __name__ == "__main__":
    main()
