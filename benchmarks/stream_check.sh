#!/usr/bin/env bash
# Stream N random bytes through `llmzip compress -c | llmzip decompress -c` and compare digests;
# prints each process's peak RSS (GNU time's %M) and wall time, and the archive's size.
#
#     bash benchmarks/stream_check.sh [BYTES]      (default 200000000; run from the repository root)
set -euo pipefail
bytes=${1:-200000000}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
llmzip=(python -m llmzip.cli)
head -c "$bytes" /dev/urandom \
  | tee >(sha256sum > "$tmp/in.sha") \
  | /usr/bin/time -f "compress: peak RSS %M KB, %e s" "${llmzip[@]}" compress -c \
  | tee >(wc -c > "$tmp/archive.bytes") \
  | /usr/bin/time -f "decompress: peak RSS %M KB, %e s" "${llmzip[@]}" decompress -c \
  | sha256sum > "$tmp/out.sha"
sleep 1   # let the tee'd digest and count finish
echo "input: $bytes bytes, archive: $(cat "$tmp/archive.bytes") bytes"
if cmp -s "$tmp/in.sha" "$tmp/out.sha"; then echo "round trip: identical"; else echo "round trip: DIFFERENT"; exit 1; fi
