#!/usr/bin/env bash
# Benchmark (not a test): bulk output from a node, agent → gateway, MB/s
#   burrow:   curl -N (NDJSON stream) ← gateway API ← sshd reverse tunnel ← agent ← `head -c N
#             /dev/zero | tr '\0' a` (plain 'a's cost one byte each in NDJSON, so the figure is the
#             link's, not JSON escaping's)
#   OpenSSH:  ssh host '<the same command>' > /dev/null, to an ordinary sshd on this machine
# Both in the same run, best of RUNS each. The secure channel alone (no sshd, no HTTP) is measured by
# `cargo run --release -p burrow-core --example channel_throughput`. Gateway → agent has no API path
# yet (stdin streams come with the command bus); that direction is measured by the example only.
#
# Usage: tests/bench/throughput.sh [MB] [RUNS]     (default 200 MB, 3 runs; needs sshd, curl, python3; root)
set -euo pipefail
cd "$(dirname "$0")/../.."
MB=${1:-200}
RUNS=${2:-3}
. tests/bench/lib.sh

start_burrow "$PWD/target/release/agent"
start_plain_sshd
BYTES=$((MB * 1000 * 1000))
COMMAND="head -c $BYTES /dev/zero | tr '\\0' a"
python3 -c 'import json,sys; print(json.dumps({"command": sys.argv[1], "timeout_s": 600}))' "$COMMAND" > "$WORK/body.json"

best() { # best NAME CMD...: fastest wall time of RUNS runs, in seconds
  local best=999999 t0 t1 s
  for _ in $(seq "$RUNS"); do
    t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N)
    s=$(python3 -c "print($t1 - $t0)")
    best=$(python3 -c "print(min($best, $s))")
  done
  echo "$best"
}
burrow_stream() {
  curl -sfN -H "Authorization: Bearer $TOKEN" -H 'Accept: application/x-ndjson' \
    --data-binary "@$WORK/body.json" "http://$API/api/v1/nodes/bench/exec" -o "$WORK/out.ndjson"
  tail -n 1 "$WORK/out.ndjson" | grep -q '"exit_code":0'
}
openssh() { "${SSH[@]}" "$BENCH_USER@127.0.0.1" "$COMMAND" > /dev/null; }

t_burrow=$(best burrow_stream)
t_ssh=$(best openssh)
commit=$(git rev-parse --short HEAD)
block=$(python3 - "$MB" "$t_burrow" "$t_ssh" "$commit" "$RUNS" <<'PY'
import sys, datetime, platform, os
mb, tb, ts, commit, runs = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
print(f"Measured {datetime.date.today()} at commit `{commit}` on {platform.machine()}, {os.cpu_count()} cores, "
      f"loopback, release build, best of {runs}, with `tests/bench/throughput.sh {int(mb)} {runs}`.\n")
print("| path (node → operator, %d MB) | seconds | MB/s |\n| --- | ---: | ---: |" % mb)
print(f"| burrow: curl -N ← gateway (NDJSON) ← secure link ← sshd tunnel ← agent | {tb:.2f} | {mb / tb:.1f} |")
print(f"| OpenSSH: ssh host '…' > /dev/null | {ts:.2f} | {mb / ts:.1f} |")
PY
)
echo "$block"
