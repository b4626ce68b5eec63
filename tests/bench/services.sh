#!/usr/bin/env bash
# Benchmark (not a test), issue 10: reaching a node's own sshd through burrow vs an `ssh -R` tunnel.
#   throughput: `ssh … 'head -c N /dev/zero' > /dev/null` to the node's sshd,
#     burrow:   ssh -o ProxyCommand='gateway connect %h ssh' (stream on the secure link ← sshd tunnel
#               ← agent → the node's sshd)
#     ssh -R:   what an autossh user runs: the node holds `ssh -N -R PORT:127.0.0.1:22 vm`, the
#               operator runs `ssh -p PORT 127.0.0.1` on the VM (same sshd, same cipher)
#     plain:    ssh straight to the node's sshd (one hop, the upper bound)
#   keystroke:  one byte typed into `cat` on a remote terminal until its echo comes back,
#     burrow:   gateway shell bench cat
#     OpenSSH:  ssh -tt node cat
# On one machine the "node's sshd" and the "VM's sshd" are one ordinary sshd (tests/bench/lib.sh).
#
# Usage: tests/bench/services.sh [MB] [RUNS] [KEYS]   (default 256 MB, 3 runs, 300 keystrokes; root)
set -euo pipefail
cd "$(dirname "$0")/../.."
MB=${1:-256}
RUNS=${2:-3}
KEYS=${3:-300}
. tests/bench/lib.sh

start_plain_sshd
AGENT_EXTRA=(--service "ssh=127.0.0.1:$SSH_PORT")
start_burrow "${CARGO_TARGET_DIR:-$PWD/target}/release/agent"
BYTES=$((MB * 1024 * 1024))
COMMAND="head -c $BYTES /dev/zero"
TARGET="$BENCH_USER@127.0.0.1"

# The autossh-style tunnel: the "node" forwards a VM port to its own sshd.
FWD_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"${SSH[@]}" -N -o ExitOnForwardFailure=yes -R "127.0.0.1:$FWD_PORT:127.0.0.1:$SSH_PORT" "$TARGET" & pids+=($!)
SSH_FWD=("${SSH[@]}" -p "$FWD_PORT")
wait_for 10 "${SSH_FWD[@]}" "$TARGET" true
SSH_BURROW=("${SSH[@]}" -o "ProxyCommand=$GW --data-dir $WORK/gw connect %h ssh")
wait_for 30 "${SSH_BURROW[@]}" "$BENCH_USER@bench" true

best() { # best CMD...: fastest wall time of RUNS runs, in seconds
  local best=999999 t0 t1
  for _ in $(seq "$RUNS"); do
    t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N)
    best=$(python3 -c "print(min($best, $t1 - $t0))")
  done
  echo "$best"
}
t_burrow=$(best "${SSH_BURROW[@]}" "$BENCH_USER@bench" "$COMMAND")
t_fwd=$(best "${SSH_FWD[@]}" "$TARGET" "$COMMAND")
t_plain=$(best "${SSH[@]}" "$TARGET" "$COMMAND")

# keystroke ROUNDS: a pty driver types one byte at a time into the remote `cat` and times its echo.
keystrokes() {
  python3 - "$KEYS" "$@" <<'PY'
import os, pty, select, sys, time
keys, argv = int(sys.argv[1]), sys.argv[2:]
pid, fd = pty.fork()
if pid == 0:
    import tty
    tty.setraw(0)  # no local echo: only the remote terminal's echo counts
    os.execvp(argv[0], argv)
def read_until(want, limit=10.0):
    got, end = b"", time.monotonic() + limit
    while want not in got:
        r, _, _ = select.select([fd], [], [], max(0.0, end - time.monotonic()))
        if not r:
            sys.exit(f"no echo of {want!r} within {limit}s (got {got[-200:]!r})")
        got += os.read(fd, 4096)
    return got
# Wait for the remote terminal: a marker typed and echoed proves the session is up.
deadline = time.monotonic() + 30
while True:
    os.write(fd, b"r")
    try:
        read_until(b"r", 1.0); break
    except SystemExit:
        if time.monotonic() > deadline: raise
times = []
for i in range(keys):
    k = bytes([ord("a") + i % 26])
    t0 = time.perf_counter(); os.write(fd, k); read_until(k); times.append(time.perf_counter() - t0)
os.write(fd, b"\r\x04")
times.sort()
p = lambda q: times[min(len(times) - 1, int(round(q / 100 * (len(times) - 1))))] * 1000
print(f"{p(50):.2f} {p(95):.2f} {times[-1] * 1000:.2f}")
PY
}
read -r k_burrow_p50 k_burrow_p95 k_burrow_max < <(keystrokes "$GW" --data-dir "$WORK/gw" shell bench cat)
read -r k_ssh_p50 k_ssh_p95 k_ssh_max < <(keystrokes "${SSH[@]}" -tt "$TARGET" cat)

block=$(python3 - "$MB" "$RUNS" "$KEYS" "$t_burrow" "$t_fwd" "$t_plain" \
  "$k_burrow_p50" "$k_burrow_p95" "$k_burrow_max" "$k_ssh_p50" "$k_ssh_p95" "$k_ssh_max" <<'PY'
import sys
sys.path.insert(0, "tests/bench")
from benchlib import machine
mb, runs, keys = float(sys.argv[1]), sys.argv[2], sys.argv[3]
tb, tf, tp = map(float, sys.argv[4:7])
kb, ks = sys.argv[7:10], sys.argv[10:13]
print(f"{machine()}, loopback, release build, with `tests/bench/services.sh {int(mb)} {runs} {keys}`.\n")
print(f"| ssh session to the node's own sshd, `head -c {int(mb)}M /dev/zero` | seconds (best of {runs}) | MiB/s | vs ssh -R |")
print("| --- | ---: | ---: | ---: |")
print(f"| burrow: `ssh -o ProxyCommand='gateway connect %h ssh'` | {tb:.2f} | {mb / tb:.0f} | {tf / tb:.2f}× |")
print(f"| autossh style: `ssh -p PORT 127.0.0.1` through `ssh -R PORT:127.0.0.1:22` | {tf:.2f} | {mb / tf:.0f} | 1.00× |")
print(f"| plain ssh to the node's sshd (one hop, upper bound) | {tp:.2f} | {mb / tp:.0f} | {tf / tp:.2f}× |")
print()
print(f"| keystroke round trip into a remote `cat` ({keys} keys) | p50 ms | p95 ms | max ms |")
print("| --- | ---: | ---: | ---: |")
print(f"| burrow: `gateway shell NODE cat` | {kb[0]} | {kb[1]} | {kb[2]} |")
print(f"| OpenSSH: `ssh -tt host cat` | {ks[0]} | {ks[1]} | {ks[2]} |")
PY
)
echo "$block"
replace_block BENCHMARKS.md services "Services and shell (issue 10): gateway connect vs ssh -R, keystrokes vs ssh" "$block"
