#!/usr/bin/env bash
# Benchmark (not a test): stream throughput agent → gateway, end to end through the secure link:
#   `head -c N /dev/zero | tr '\0' a` on the node → agent (sealed Data frames) → sshd reverse tunnel →
#   gateway → NDJSON streaming exec → curl (to /dev/null).
# 'a' bytes cost one byte each in the NDJSON answer, so the figure is the link's, not JSON escaping's.
# Gateway → agent has no API path yet (no stdin streams in the binaries); the AEAD cost on its own is
# `cargo test --release -p burrow-core -- --ignored bench_seal_open --nocapture`.
#
# Usage: tests/bench/stream_throughput.sh [MB] [RUNS]     (default 100 MB, 3 runs; needs curl, python3)
set -euo pipefail
cd "$(dirname "$0")/../.."
MB=${1:-100}
RUNS=${2:-3}
. tests/bench/lib.sh

start_burrow "$PWD/target/release/agent"
BYTES=$((MB * 1000 * 1000))
python3 -c 'import json,sys; print(json.dumps({"command": "head -c %s /dev/zero | tr \"\\0\" a" % sys.argv[1], "timeout_s": 600}))' \
  "$BYTES" > "$WORK/body.json"
for run in $(seq "$RUNS"); do
  out=$(curl -sS -N -o /dev/null -w '%{time_total} %{size_download}' -H "Authorization: Bearer $TOKEN" \
    -H 'Accept: application/x-ndjson' --data-binary "@$WORK/body.json" "http://$API/api/v1/nodes/bench/exec")
  read -r secs size <<<"$out"
  [ "$size" -ge "$BYTES" ] || { echo "short answer: $size bytes"; exit 1; }
  python3 -c 'import sys; s=float(sys.argv[1]); print(f"run {sys.argv[3]}: {int(sys.argv[2])/1e6:.0f} MB in {s:.2f} s = {int(sys.argv[2])/1e6/s:.1f} MB/s")' \
    "$secs" "$BYTES" "$run"
done
