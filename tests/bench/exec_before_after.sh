#!/usr/bin/env bash
# Benchmark (not a test): exec latency of `true` on one node, for this tree's binaries and for an
# older build given by its directory (e.g. the commit before the command bus), in the same run with
# the same client, next to OpenSSH ControlMaster: whether a change put something slow (a store
# fsync, a ledger fdatasync on the agent) on the hot path.
#
# Usage: tests/bench/exec_before_after.sh OLD_RELEASE_DIR [RUNS] [LABEL]
#   OLD_RELEASE_DIR holds `gateway` and `agent` built from the older commit, e.g.
#     git worktree add /tmp/before <commit> && (cd /tmp/before && cargo build --release)
#     tests/bench/exec_before_after.sh /tmp/before/target/release 300 "before the command bus"
set -euo pipefail
cd "$(dirname "$0")/../.."
OLD=${1:?usage: exec_before_after.sh OLD_RELEASE_DIR [RUNS] [LABEL]}
RUNS=${2:-300}
LABEL=${3:-older build}
command -v hyperfine >/dev/null || { echo "missing hyperfine (apt-get install -y hyperfine)"; exit 1; }
. tests/bench/lib.sh

start_burrow "$PWD/target/release/agent"
NEW_API=$API NEW_TOKEN=$TOKEN

# The older gateway and agent, in their own data dirs.
"$OLD/gateway" --data-dir "$WORK/old-gw" --log warn serve --api 127.0.0.1:0 --ssh 127.0.0.1:0 2>"$WORK/old-gw.log" & pids+=($!)
wait_for 30 test -f "$WORK/old-gw/run.json"
OLD_API=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["api"])' "$WORK/old-gw/run.json")
join=$("$OLD/gateway" --data-dir "$WORK/old-gw" join create 2>/dev/null)
"$OLD/agent" --data-dir "$WORK/old-agent" --log warn run --join "$join" --name bench 2>"$WORK/old-agent.log" & pids+=($!)
OLD_TOKEN=$("$OLD/gateway" --data-dir "$WORK/old-gw" token create --role operator)
old_online() { curl -sf -H "Authorization: Bearer $OLD_TOKEN" "http://$OLD_API/api/v1/nodes/bench" | grep -q '"status":"online"'; }
wait_for 30 old_online

echo '{"command":"true"}' > "$WORK/body.json"
q() { printf '%q ' "$@"; }
curl_exec() { q curl -sf -o /dev/null -H "Authorization: Bearer $2" --data-binary "@$WORK/body.json" "http://$1/api/v1/nodes/bench/exec"; }
start_plain_sshd
SSH+=(-S "$WORK/cm.sock")
"${SSH[@]}" -M -f -N "$BENCH_USER@127.0.0.1"
wait_for 10 test -S "$WORK/cm.sock"
hyperfine -N --warmup 20 --runs "$RUNS" --export-json "$WORK/result.json" \
  -n "burrow at this commit: curl → gateway → tunnel → agent: true" "$(curl_exec "$NEW_API" "$NEW_TOKEN")" \
  -n "burrow $LABEL: the same" "$(curl_exec "$OLD_API" "$OLD_TOKEN")" \
  -n "OpenSSH ControlMaster: ssh -S sock host true" "$(q "${SSH[@]}" "$BENCH_USER@127.0.0.1" true)"

# Keep-alive clients for both: the gateway → tunnel → agent path without a process start.
python3 - "$NEW_API" "$NEW_TOKEN" "$OLD_API" "$OLD_TOKEN" "$RUNS" "$WORK/keepalive.json" "$LABEL" <<'PY'
import http.client, json, sys, time
def measure(api, token, runs):
    host, port = api.split(":")
    conn = http.client.HTTPConnection(host, int(port))
    def once():
        conn.request("POST", "/api/v1/nodes/bench/exec", body='{"command":"true"}',
                     headers={"Authorization": "Bearer " + token})
        r = conn.getresponse(); r.read(); assert r.status == 200, r.status
    for _ in range(20): once()
    times = []
    for _ in range(runs):
        t = time.perf_counter(); once(); times.append(time.perf_counter() - t)
    return times
runs = int(sys.argv[5])
# Interleaved rounds, so drift on the machine hits both alike.
new, old = [], []
for _ in range(5):
    new += measure(sys.argv[1], sys.argv[2], runs // 5)
    old += measure(sys.argv[3], sys.argv[4], runs // 5)
json.dump([{"command": "burrow at this commit: keep-alive client", "times": new},
           {"command": f"burrow {sys.argv[7]}: keep-alive client", "times": old}], open(sys.argv[6], "w"))
PY

block=$(python3 - "$WORK/result.json" "$WORK/keepalive.json" "$RUNS" "$LABEL" <<'PY'
import json, sys
sys.path.insert(0, "tests/bench")
from benchlib import pct, machine
res = json.load(open(sys.argv[1]))["results"] + json.load(open(sys.argv[2]))
print(f"{machine()}, against {sys.argv[4]}, loopback, release builds, {sys.argv[3]} runs each after 20 warm-up runs, with "
      f"`tests/bench/exec_before_after.sh OLD_DIR {sys.argv[3]} \"{sys.argv[4]}\"`.\n")
print("| path | p50 (ms) | p95 (ms) |\n| --- | ---: | ---: |")
rows = [(r["command"], pct(r["times"], 50), pct(r["times"], 95)) for r in res]
for c, p50, p95 in rows:
    print(f"| {c} | {p50:.2f} | {p95:.2f} |")
print(f"\n**p50 this commit / {sys.argv[4]}: curl {rows[0][1] / rows[1][1]:.2f}×, keep-alive "
      f"{rows[3][1] / rows[4][1]:.2f}×**; curl / ControlMaster {rows[0][1] / rows[2][1]:.2f}×.")
PY
)
echo "$block"
replace_block BENCHMARKS.md exec-before-after "Exec latency, this commit against $LABEL" "$block"
