#!/usr/bin/env bash
# Benchmark (not a test): what holding a fleet costs the gateway host when nothing runs. N real
# agents (each its own process, sshd session and reverse tunnel) stay linked for SECONDS, sending
# their heartbeats; the gateway's CPU and RSS and its managed sshd's CPU (all its processes) are
# read from /proc before and after. Beside it, the same number of plain OpenSSH reverse tunnels
# (`ssh -N -R` with ServerAliveInterval 30) held to an ordinary sshd for the same time: the floor of
# keeping N tunnels open at all. Extra arguments go to every agent (`--heartbeat-interval 5s`).
#
# Usage: tests/bench/heartbeats.sh [NODES] [SECONDS] [AGENT ARGS…]   (default 50 nodes, 300 s; root)
set -euo pipefail
cd "$(dirname "$0")/../.."
NODES=${1:-50}
DURATION=${2:-300}
shift 2 || true
AGENT_ARGS=("$@")
. tests/bench/lib.sh
ulimit -n 65536 || true
TICK=$(getconf CLK_TCK)

start_burrow "$PWD/target/release/agent"
GW_PID=${pids[0]}
join=$("$GW" --data-dir "$WORK/gw" join create --uses "$NODES" 2>/dev/null)
for i in $(seq 1 "$NODES"); do
  ./target/release/agent --data-dir "$WORK/agent-$i" --log warn run --join "$join" --name "hb-$i" \
    "${AGENT_ARGS[@]}" 2>"$WORK/agent-$i.log" & pids+=($!)
done
online() {
  curl -sf -H "Authorization: Bearer $TOKEN" "http://$API/api/v1/nodes?status=online" |
    python3 -c 'import json,sys; n=[x for x in json.load(sys.stdin)["nodes"] if x["id"].startswith("hb-")]; sys.exit(len(n) < int(sys.argv[1]))' "$NODES"
}
wait_for 180 online

# cpu_ticks PID…: utime + stime of the processes, in clock ticks.
cpu_ticks() {
  local sum=0 p
  for p in "$@"; do
    [ -r "/proc/$p/stat" ] || continue
    sum=$((sum + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$sum"
}
# pids_of PATTERN: processes whose command line contains PATTERN.
pids_of() { pgrep -f -- "$1" | tr '\n' ' '; }
# tree_of PID…: the processes and all their descendants. sshd's per-connection processes
# ("sshd: root [priv]", "sshd: root@notty") do not carry the listener's command line.
tree_of() {
  local p
  for p in "$@"; do
    echo -n "$p "
    tree_of $(pgrep -P "$p" | tr '\n' ' ')
  done
}
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

sshd_pids=$(tree_of $(pids_of "$WORK/gw/sshd"))
gw0=$(cpu_ticks "$GW_PID"); sshd0=$(cpu_ticks $sshd_pids)
sleep "$DURATION" # the measured interval itself, not synchronisation
gw1=$(cpu_ticks "$GW_PID"); sshd1=$(cpu_ticks $sshd_pids)
gw_rss=$(rss_kb "$GW_PID")
beats=$(curl -sf -H "Authorization: Bearer $TOKEN" "http://$API/api/v1/nodes" |
  python3 -c 'import json,sys; print(sum(1 for x in json.load(sys.stdin)["nodes"] if x["id"].startswith("hb-") and x["status"] == "online"))')

# The OpenSSH floor: N reverse tunnels to an ordinary sshd, held as long.
start_plain_sshd
ssh_pids=()
for i in $(seq 1 "$NODES"); do
  "${SSH[@]}" -N -o ServerAliveInterval=30 -R "0:127.0.0.1:1" "$BENCH_USER@127.0.0.1" 2>/dev/null & ssh_pids+=($!)
  pids+=($!)
done
sessions() { [ "$(pgrep -c -f "sshd: $BENCH_USER" || true)" -ge "$NODES" ]; }
wait_for 120 sessions
plain_pids=$(tree_of $(pids_of "$WORK/sshd/config"))
plain0=$(cpu_ticks $plain_pids); cli0=$(cpu_ticks "${ssh_pids[@]}")
sleep "$DURATION" # the measured interval itself
plain1=$(cpu_ticks $plain_pids); cli1=$(cpu_ticks "${ssh_pids[@]}")

block=$(python3 - "$NODES" "$DURATION" "$TICK" "$gw0" "$gw1" "$sshd0" "$sshd1" "$gw_rss" "$beats" \
  "$plain0" "$plain1" "$cli0" "$cli1" "${AGENT_ARGS[*]:-}" <<'PY'
import sys
sys.path.insert(0, "tests/bench")
from benchlib import machine
n, dur, tick = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
gw0, gw1, s0, s1, rss, online, p0, p1, c0, c1 = map(int, sys.argv[4:14])
extra = sys.argv[14]
pct = lambda a, b: 100.0 * (b - a) / tick / dur
print(f"{machine()}; {n} nodes linked for {dur:.0f} s{(', agents with ' + extra) if extra else ''}; "
      f"{online} online at the end.\n")
print("| what | CPU (% of one core) |")
print("|---|---|")
print(f"| burrow gateway process (heartbeats, pings, health) | {pct(gw0, gw1):.3f} |")
print(f"| its managed sshd (all session processes) | {pct(s0, s1):.3f} |")
print(f"| OpenSSH: plain sshd holding {n} `ssh -N -R` tunnels | {pct(p0, p1):.3f} |")
print(f"| OpenSSH: the {n} `ssh -N -R` clients together | {pct(c0, c1):.3f} |")
print(f"\nGateway RSS at the end: {rss / 1024:.1f} MiB.")
PY
)
echo "$block"
cmd="tests/bench/heartbeats.sh $NODES $DURATION ${AGENT_ARGS[*]:-}"
replace_block BENCHMARKS.md heartbeats "Holding a fleet: gateway CPU for heartbeats" "Command: \`${cmd% }\`

$block"
