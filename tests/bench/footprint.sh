#!/usr/bin/env bash
# Benchmark (not a test): idle footprint of a connected agent, side by side with an OpenSSH client
# holding the same kind of tunnel (`ssh -N -R 127.0.0.1:0:… -o ServerAliveInterval=30`, to an ordinary
# sshd) in the same run: resident memory (VmRSS, sampled every 5 s; VmHWM) and CPU time over DURATION.
# The agent heartbeats every 30 s as in production. Results go into BENCHMARKS.md.
#
# Usage: tests/bench/footprint.sh [DURATION_S] [AGENT_BINARY]
#   default 600 s and dist/agent-x86_64-unknown-linux-musl (the static build; `cross/build.sh
#   x86_64-unknown-linux-musl` makes it), falling back to target/release/agent.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${1:-600}
AGENT=${2:-dist/agent-x86_64-unknown-linux-musl}
[ -x "$AGENT" ] || { echo "note: $AGENT not built; using target/release/agent (glibc, dynamic)"; AGENT=target/release/agent; }
AGENT=$(realpath "$AGENT")
. tests/bench/lib.sh

start_burrow "$AGENT"
start_plain_sshd
"${SSH[@]}" -N -o ExitOnForwardFailure=yes -o ServerAliveInterval=30 \
  -R 127.0.0.1:0:127.0.0.1:9 "$BENCH_USER@127.0.0.1" 2>"$WORK/ssh-R.log" & SSH_PID=$!
pids+=("$SSH_PID")
# Logged in a second time (the first was start_plain_sshd's check) = the tunnel is up.
tunnel_up() { [ "$(grep -c "Accepted publickey for $BENCH_USER" "$WORK/sshd.log")" -ge 2 ]; }
wait_for 10 tunnel_up

python3 - "$DURATION" "$AGENT_PID" "$SSH_PID" "$AGENT" > "$WORK/block.md" <<'PY'
import os, sys, time, datetime, subprocess, platform
duration, agent, ssh, binary = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
tick = os.sysconf("SC_CLK_TCK")
def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])  # utime + stime, in ticks
def status(pid, key):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])  # kB
pids = {"agent": agent, "ssh": ssh}
start = {k: cpu(p) for k, p in pids.items()}
peak = {k: 0 for k in pids}
t0 = time.monotonic()
while time.monotonic() - t0 < duration:
    for k, p in pids.items():
        peak[k] = max(peak[k], status(p, "VmRSS"))
    time.sleep(5)
elapsed = time.monotonic() - t0
rows = []
for k, p in pids.items():
    used = (cpu(p) - start[k]) / tick
    rows.append((k, status(p, "VmRSS"), peak[k], status(p, "VmHWM"), used, 100 * used / elapsed))
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
kind = subprocess.run(["file", "-b", binary], capture_output=True, text=True).stdout.split(",")[:2]
print(f"Measured {datetime.date.today()} at commit `{commit}` on {platform.machine()}, {elapsed:.0f} s idle, "
      f"heartbeat every 30 s, with `tests/bench/footprint.sh {duration}`. Agent binary: "
      f"`{os.path.relpath(binary)}` ({','.join(kind).strip()}).\n")
print("| process | RSS at end (MB) | RSS max sampled (MB) | VmHWM (MB) | CPU time (s) | CPU (% of one core) |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
names = {"agent": "burrow agent (tunnel + command service + heartbeats)",
         "ssh": "OpenSSH client `ssh -N -R` (tunnel only)"}
for k, rss, mx, hwm, used, pct in rows:
    print(f"| {names[k]} | {rss/1024:.2f} | {mx/1024:.2f} | {hwm/1024:.2f} | {used:.2f} | {pct:.3f} |")
print("\nBudget (issue #3): agent idle RSS ≤ 6 MB, CPU ≤ 0.2 % of a core.")
PY
cat "$WORK/block.md"
replace_block BENCHMARKS.md footprint "Idle footprint: agent vs OpenSSH client" "$(cat "$WORK/block.md")"
