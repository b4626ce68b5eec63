#!/usr/bin/env bash
# Benchmark (not a test): latency of running `true` on a node
#   burrow:   curl → gateway API → sshd reverse tunnel → agent → /bin/sh -c true → back
#   OpenSSH:  ssh -S <ControlMaster socket> host true, to an ordinary sshd on this machine
# Both are measured in the same run with hyperfine (no shell; each run starts a client process), plus
# curl's own floor and a keep-alive client; p50/p95 and the ratios go into BENCHMARKS.md.
#
# Usage: tests/bench/exec_latency.sh [RUNS]     (default 300; needs sshd, curl, hyperfine, python3; root)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-300}
command -v hyperfine >/dev/null || { echo "missing hyperfine (apt-get install -y hyperfine)"; exit 1; }
. tests/bench/lib.sh

start_burrow "$PWD/target/release/agent"
# `sh -c true` on both sides: OpenSSH always runs the command through the login shell.
echo '{"command":"true"}' > "$WORK/body.json"
CURL=(curl -sf -o /dev/null -H "Authorization: Bearer $TOKEN" --data-binary "@$WORK/body.json" "http://$API/api/v1/nodes/bench/exec")
"${CURL[@]}"

start_plain_sshd
SSH+=(-S "$WORK/cm.sock")
"${SSH[@]}" -M -f -N "$BENCH_USER@127.0.0.1"
wait_for 10 test -S "$WORK/cm.sock"
"${SSH[@]}" "$BENCH_USER@127.0.0.1" true

q() { printf '%q ' "$@"; }
hyperfine -N --warmup 20 --runs "$RUNS" --export-json "$WORK/result.json" \
  -n "burrow: curl → gateway → tunnel → agent: true" "$(q "${CURL[@]}")" \
  -n "OpenSSH ControlMaster: ssh -S sock host true" "$(q "${SSH[@]}" "$BENCH_USER@127.0.0.1" true)" \
  -n "floor: curl alone (GET /healthz, no node)" "$(q curl -sf -o /dev/null "http://$API/healthz")"

# The same exec with a client that keeps its connection open (no process start per command): what
# the gateway → tunnel → agent path itself costs, for scripts and dashboards that reuse connections.
python3 - "$API" "$TOKEN" "$RUNS" "$WORK/keepalive.json" <<'PY'
import http.client, json, sys, time
host, port = sys.argv[1].split(":")
conn = http.client.HTTPConnection(host, int(port))
def once():
    conn.request("POST", "/api/v1/nodes/bench/exec", body='{"command":"true"}',
                 headers={"Authorization": "Bearer " + sys.argv[2]})
    r = conn.getresponse(); r.read(); assert r.status == 200, r.status
for _ in range(20): once()
times = []
for _ in range(int(sys.argv[3])):
    t = time.perf_counter(); once(); times.append(time.perf_counter() - t)
json.dump({"command": "burrow: keep-alive HTTP client → gateway → tunnel → agent: true", "times": times,
           "mean": sum(times) / len(times)}, open(sys.argv[4], "w"))
PY

block=$(python3 - "$WORK/result.json" "$RUNS" "$WORK/keepalive.json" <<'PY'
import json, sys, datetime, subprocess, platform
res = json.load(open(sys.argv[1]))["results"] + [json.load(open(sys.argv[3]))]
def pct(ts, p):
    ts = sorted(ts); return ts[min(len(ts) - 1, int(round(p / 100 * (len(ts) - 1))))] * 1000
rows = [(r["command"], pct(r["times"], 50), pct(r["times"], 95), r["mean"] * 1000) for r in res]
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
cores = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
print(f"Measured {datetime.date.today()} at commit `{commit}` on {platform.machine()}, {cores} cores, loopback, "
      f"release build, {sys.argv[2]} runs each after 20 warm-up runs, with `tests/bench/exec_latency.sh {sys.argv[2]}`.\n")
print("| path | p50 (ms) | p95 (ms) | mean (ms) |\n| --- | ---: | ---: | ---: |")
for c, p50, p95, m in rows:
    print(f"| {c} | {p50:.2f} | {p95:.2f} | {m:.2f} |")
cm = rows[1][1]
print(f"\n**Ratio p50 burrow (curl) / ControlMaster: {rows[0][1] / cm:.2f}×** (goal ≤ 0.5×); "
      f"keep-alive client / ControlMaster: {rows[3][1] / cm:.2f}×; curl's own floor / ControlMaster: {rows[2][1] / cm:.2f}×.")
PY
)
echo "$block"
replace_block BENCHMARKS.md exec-latency "Exec latency: \`true\` on a node" "$block"
