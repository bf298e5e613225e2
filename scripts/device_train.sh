#!/usr/bin/env bash
# One-shot training on a lent accelerator (the `device` tool), prepared so that a session that
# draws one spends its minutes training, not debugging:
#
#     bash scripts/device_train.sh 8            # train for ~8 minutes, results in $OUT
#
# The data: the tool sends only this working tree, at most 64 MiB with what a call carries, so
# ../shared/train (218 MB) cannot travel. Pack the CPU run's token streams first, into a folder
# git ignores, and carry it (the call's `carry`: [".devdata"]):
#
#     echo /.devdata/ >> .git/info/exclude
#     python scripts/pack_streams.py pack --work /work/llmzip-train-llama --out .devdata --budget-mb 4   # or ~50, see below
#
# The budget is what the tracked tree (62.0 MB on 2026-12-01, 59.8 MB of it the shipped models)
# leaves of the 64 MiB: about 5 MB. Moving llmzip/models/ out of the checkout for the call
# (the script does not need it) and restoring it with `git checkout` afterwards leaves room for
# ~60 MB (not yet tried with the tool). With $PACKED (default .devdata) present the script
# unpacks it; otherwise it tokenises $DATA, ../shared/train or ./shared/train. Then it trains the
# default Llama shape of train_embedded.py in bf16 with a schedule planned to fit MINUTES at
# the speed measured over the first steps, and writes to $OUT: model/ (Hugging Face layout, the
# same export the CPU runs make, for llmzip's exact CPU engine), snapshot/ (weights-only bf16,
# resumable on the CPU with --init-from) and the training log. Extra arguments go to
# train_embedded.py (e.g. --layers 8 --width 512).
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-8}
shift || true
OUT=${OUT:?set OUT to the directory that comes back}
DEVICE=${DEVICE:-cuda}
WORK=${WORK:-/tmp/llmzip-train-device}
if [ -n "${PACKED:-}" ] && [ ! -f "$PACKED/streams.json" ]; then
  echo "PACKED=$PACKED holds no finished pack (streams.json)" >&2; exit 2
fi
PACKED=${PACKED:-.devdata}   # relative paths are from the repository root
if [ -f "$PACKED/streams.json" ]; then
  python scripts/pack_streams.py unpack --packed "$PACKED" --work "$WORK"
  DATA=$PACKED   # not read: the work directory already holds the tokenizer and the streams
else
  for candidate in "${DATA:-}" ../shared/train shared/train; do
    if [ -n "$candidate" ] && [ -f "$candidate/MANIFEST.md" ]; then DATA=$candidate; break; fi
  done
  [ -f "${DATA:-}/MANIFEST.md" ] || { echo "no training data found (set DATA or PACKED)" >&2; exit 2; }
fi
python - "$DEVICE" <<'PY'
import sys, torch
if sys.argv[1].startswith("cuda") and not torch.cuda.is_available():
    sys.exit("torch sees no CUDA device")
print("torch", torch.__version__, "device", sys.argv[1],
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
PY
python scripts/train_embedded.py --data "$DATA" --work "$WORK" --device "$DEVICE" --threads "$(nproc)" \
  --batch 128 --lr 2e-3 --warmup 300 --plan-minutes "$MINUTES" --minutes "$(python -c "print($MINUTES * 1.1)")" \
  --eval-every 500 --ckpt-every 1000 --export "$OUT/model" \
  --snapshot "$OUT/snapshot/llama-6x384.safetensors" "$@" 2>&1 | tee "$OUT/stdout.log"
cp "$WORK/log.jsonl" "$OUT/log.jsonl"
