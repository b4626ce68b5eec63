#!/usr/bin/env bash
# Benchmark (not a test): the agent's idle cost with the issue-8 heartbeat (every real filesystem,
# per-core CPU, network, temperatures… every 30 s ± 10 %) and its 20 s dead-link bound (pings after
# 5 s of quiet), side by side with an OpenSSH client holding the same reverse forward to the same
# sshd: `ssh -N -R 127.0.0.1:<the node's second port>:127.0.0.1:1` logged in with the node's own key
# (the key line permits exactly that forward), `ServerAliveInterval 5`, `ServerAliveCountMax 4` (its
# own ≈20 s bound). Every 10 s it samples VmRSS and utime+stime (/proc/PID/stat) of both processes
# for MINUTES minutes, then prints a Markdown table (the lead copies it into BENCHMARKS.md).
#
# Usage: tests/bench/idle.sh [MINUTES] [AGENT_BINARY]
#   MINUTES defaults to 10; AGENT_BINARY to the release build (`cargo build --release -p burrow-agent`,
#   under $CARGO_TARGET_DIR if set). Pass e.g. the `--profile agent` build or a static musl build
#   from cross/ to measure what ships to a Pi.
set -euo pipefail
cd "$(dirname "$0")/../.."
MINUTES=${1:-10}
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
AGENT=${2:-$TARGET/release/agent}
. tests/bench/lib.sh

start_burrow "$AGENT"
AGENT=$(realpath "$AGENT")

# The node's login, key and ports as the agent keeps them (agent.json, agent.key).
read -r SSH_ADDR SSH_USER PORT2 < <(python3 -c '
import json, sys
s = json.load(open(sys.argv[1]))
print(s["gateway"]["ssh"], s["gateway"]["user"], s["ports"][1])' "$WORK/agent/agent.json")
ssh -N -i "$WORK/agent/agent.key" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
  -o LogLevel=ERROR -o BatchMode=yes -o ExitOnForwardFailure=yes \
  -o ServerAliveInterval=5 -o ServerAliveCountMax=4 \
  -p "${SSH_ADDR##*:}" -R "127.0.0.1:$PORT2:127.0.0.1:1" "$SSH_USER@${SSH_ADDR%:*}" \
  2>"$WORK/ssh-R.log" & SSH_PID=$!
pids+=("$SSH_PID")
# The forward is up once its port listens on the gateway host.
forward_up() { python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1)' "$PORT2"; }
wait_for 15 forward_up
kill -0 "$SSH_PID" || { echo "ssh -R exited: $(cat "$WORK/ssh-R.log")"; exit 1; }

# What the gateway got in the agent's last heartbeat, to show the new contents are in the run.
node_json() { curl -sf -H "Authorization: Bearer $TOKEN" "http://$API/api/v1/nodes/bench"; }

PYTHONPATH=tests/bench python3 - "$MINUTES" "$AGENT_PID" "$SSH_PID" "$AGENT" "$(node_json)" <<'PY'
import json, os, sys, time, subprocess
from benchlib import machine
minutes, agent, ssh, binary, node = float(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
tick = os.sysconf("SC_CLK_TCK")
def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])  # utime + stime, in ticks
def rss(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])  # kB
pids = {"agent": agent, "ssh": ssh}
start = {k: cpu(p) for k, p in pids.items()}
samples = {k: [] for k in pids}
t0 = time.monotonic()
while True:
    for k, p in pids.items():
        samples[k].append(rss(p))
    left = minutes * 60 - (time.monotonic() - t0)
    if left <= 0:
        break
    time.sleep(min(10, left))
elapsed = time.monotonic() - t0
names = {"agent": "burrow agent (tunnel + command service + heartbeats)",
         "ssh": "OpenSSH `ssh -N -R` (tunnel only), same sshd and key"}
kind = subprocess.run(["file", "-b", binary], capture_output=True, text=True).stdout.split(",")[:2]
m = json.loads(node).get("metrics") or {}
print(f"{machine()}, {elapsed:.0f} s idle, {len(samples['agent'])} samples every 10 s, with "
      f"`tests/bench/idle.sh {sys.argv[1]}`. Agent binary: `{os.path.basename(binary)}` "
      f"({','.join(kind).strip()}) run with its defaults (this branch: heartbeat every 30 s ± 10 %, dead-link bound 20 s "
      f"with a ping after 5 s of quiet); its last beat carried {len(m.get('filesystems', []))} filesystem(s), "
      f"{len(m.get('cpu_cores', []))} core(s), {len(m.get('network', []))} interface(s), "
      f"{len(m.get('temperatures', []))} sensor(s).\n")
print("| process | idle RSS max (MB) | idle RSS avg (MB) | CPU time (s) | CPU (% of one core, average) |")
print("| --- | ---: | ---: | ---: | ---: |")
for k, p in pids.items():
    used = (cpu(p) - start[k]) / tick
    s = samples[k]
    print(f"| {names[k]} | {max(s)/1024:.2f} | {sum(s)/len(s)/1024:.2f} | {used:.2f} | {100*used/elapsed:.3f} |")
print("\nBudget (issue 8): agent idle RSS ≤ 6 MB, CPU ≤ 0.2 % of a core.")
PY
