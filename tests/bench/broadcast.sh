#!/usr/bin/env bash
# Benchmark (not a test): wall time of one broadcast of `true` to 1, 10 and 50 real agents on this
# machine (each its own process, sshd session and reverse tunnel), through `POST /api/v1/exec` with
# curl; beside it, OpenSSH running `true` on as many hosts at once the way people do it by hand
# (`xargs -P N ssh -S <ControlMaster> host true`: one process and one channel per host).
# p50/p95 and the ratio to one node go into BENCHMARKS.md.
#
# Usage: tests/bench/broadcast.sh [RUNS] [NODES]   (default 30 runs, 50 nodes; root; sshd, curl, hyperfine)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-30}
NODES=${2:-50}
command -v hyperfine >/dev/null || { echo "missing hyperfine (apt-get install -y hyperfine)"; exit 1; }
. tests/bench/lib.sh
ulimit -n 65536 || true

start_burrow "$PWD/target/release/agent"
join=$("$GW" --data-dir "$WORK/gw" join create --uses "$NODES" 2>/dev/null)
for i in $(seq 1 "$NODES"); do
  ./target/release/agent --data-dir "$WORK/agent-$i" --log warn run --join "$join" --name "bc-$i" \
    2>"$WORK/agent-$i.log" & pids+=($!)
done
online() {
  curl -sf -H "Authorization: Bearer $TOKEN" "http://$API/api/v1/nodes?status=online" |
    python3 -c 'import json,sys; n=[x for x in json.load(sys.stdin)["nodes"] if x["id"].startswith("bc-")]; sys.exit(len(n) < int(sys.argv[1]))' "$NODES"
}
wait_for 120 online

body() { # body N: exec `true` on bc-1..bc-N, as one job
  python3 -c 'import json,sys; n=int(sys.argv[1]); print(json.dumps({"target": [f"bc-{i}" for i in range(1, n + 1)], "command": "true"}))' "$1"
}
sizes=(1 10 "$NODES")
for n in "${sizes[@]}"; do body "$n" > "$WORK/body-$n.json"; done
CURL=(curl -sf -o /dev/null -H "Authorization: Bearer $TOKEN" -X POST "http://$API/api/v1/exec" --data-binary)
for n in "${sizes[@]}"; do
  curl -sf -H "Authorization: Bearer $TOKEN" --data-binary "@$WORK/body-$n.json" "http://$API/api/v1/exec" |
    python3 -c 'import json,sys; a=json.load(sys.stdin); assert a["summary"]["succeeded"] == int(sys.argv[1]), a["summary"]' "$n"
done

start_plain_sshd
SSH+=(-S "$WORK/cm.sock")
"${SSH[@]}" -M -f -N "$BENCH_USER@127.0.0.1"
wait_for 10 test -S "$WORK/cm.sock"

q() { printf '%q ' "$@"; }
args=()
for n in "${sizes[@]}"; do
  args+=(-n "burrow: one job, true on $n nodes" "$(q "${CURL[@]}" "@$WORK/body-$n.json")")
done
for n in "${sizes[@]}"; do
  ssh_cmd="seq $n | xargs -P $n -I{} $(q "${SSH[@]}") $BENCH_USER@127.0.0.1 true"
  args+=(-n "OpenSSH: xargs -P $n ssh -S cm host true" "$ssh_cmd")
done
hyperfine --warmup 3 --runs "$RUNS" --export-json "$WORK/result.json" "${args[@]}"

block=$(python3 - "$WORK/result.json" "$RUNS" "$NODES" <<'PY'
import json, sys
sys.path.insert(0, "tests/bench")
from benchlib import pct, machine
res = json.load(open(sys.argv[1]))["results"]
print(f"{machine()}, loopback, "
      f"release build, {sys.argv[3]} agents on this machine, {sys.argv[2]} runs each after 3 warm-up runs, "
      f"with `tests/bench/broadcast.sh {sys.argv[2]} {sys.argv[3]}`.\n")
print("| what | p50 (ms) | p95 (ms) | p50 / one node |\n| --- | ---: | ---: | ---: |")
half = len(res) // 2
for group in (res[:half], res[half:]):
    one = pct(group[0]["times"], 50)
    for r in group:
        p50 = pct(r["times"], 50)
        print(f"| {r['command']} | {p50:.1f} | {pct(r['times'], 95):.1f} | {p50 / one:.2f}× |")
PY
)
echo "$block"
replace_block BENCHMARKS.md broadcast "Broadcast: \`true\` on 1, 10 and 50 nodes" "$block"
