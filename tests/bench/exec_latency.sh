#!/usr/bin/env bash
# Benchmark (not a test): latency of running `true` on a node
#   burrow:   curl → gateway API → sshd reverse tunnel → agent → fork/exec → back
#   OpenSSH:  ssh -S <ControlMaster socket> host true, to an ordinary sshd on this machine
# Both are measured in the same run with hyperfine (no shell; each run starts a client process), and
# p50/p95 plus the ratio are written into BENCHMARKS.md between the exec-latency markers.
#
# Usage: tests/bench/exec_latency.sh [RUNS]     (default 300; needs sshd, curl, hyperfine, python3)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-300}
for tool in curl hyperfine python3 /usr/sbin/sshd; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y curl hyperfine openssh-server)"; exit 1; }
done

cargo build --release -q -p burrow-gateway -p burrow-agent
GW=$PWD/target/release/gateway AG=$PWD/target/release/agent
WORK=$(mktemp -d /var/tmp/burrow-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
wait_for() { # wait_for SECONDS CMD... : poll a condition with a deadline
  local end=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do [ $SECONDS -lt $end ] || { echo "timed out: $*"; exit 1; }; sleep 0.1; done
}

# --- burrow ----------------------------------------------------------------------------------------
"$GW" --data-dir "$WORK/gw" --log warn serve --api 127.0.0.1:0 --ssh 127.0.0.1:0 2>"$WORK/gw.log" & pids+=($!)
wait_for 30 test -f "$WORK/gw/run.json"
API=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["api"])' "$WORK/gw/run.json")
JOIN=$("$GW" --data-dir "$WORK/gw" join create 2>/dev/null)
"$AG" --data-dir "$WORK/agent" --log warn run --join "$JOIN" --name bench 2>"$WORK/agent.log" & pids+=($!)
TOKEN=$("$GW" --data-dir "$WORK/gw" token create --role operator)
node_online() { curl -sf -H "Authorization: Bearer $TOKEN" "http://$API/api/v1/nodes/bench" | grep -q '"status":"online"'; }
wait_for 30 node_online
# `sh -c true` on both sides: OpenSSH always runs the command through the login shell.
echo '{"command":"true"}' > "$WORK/body.json"
CURL=(curl -sf -o /dev/null -H "Authorization: Bearer $TOKEN" --data-binary "@$WORK/body.json" "http://$API/api/v1/nodes/bench/exec")
"${CURL[@]}"

# --- OpenSSH ControlMaster to an ordinary sshd -----------------------------------------------------
# A dedicated user whose login shell is /bin/sh: logging in as root here would make bash source root's
# ~/.bashrc on every command (sshd sets SSH_CLIENT), which on developer machines costs 100+ ms and says
# nothing about OpenSSH.
BENCH_USER=burrow-bench
if ! id "$BENCH_USER" >/dev/null 2>&1; then
  useradd --system --no-create-home --home-dir / --shell /bin/sh "$BENCH_USER"
  usermod -p '*' "$BENCH_USER"   # no password, but not locked (sshd refuses locked accounts without PAM)
fi
mkdir -p "$WORK/sshd" /run/sshd && chmod 755 "$WORK" "$WORK/sshd"  # sshd reads authorized_keys as the bench user
ssh-keygen -q -t ed25519 -N '' -f "$WORK/sshd/host"
ssh-keygen -q -t ed25519 -N '' -f "$WORK/sshd/user"
cp "$WORK/sshd/user.pub" "$WORK/sshd/authorized_keys" && chmod 644 "$WORK/sshd/authorized_keys"
SSH_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$WORK/sshd/config" <<CFG
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $WORK/sshd/host
AuthorizedKeysFile $WORK/sshd/authorized_keys
PidFile none
UsePAM no
StrictModes no
PasswordAuthentication no
CFG
/usr/sbin/sshd -D -e -f "$WORK/sshd/config" 2>"$WORK/sshd.log" & pids+=($!)
SSH=(ssh -i "$WORK/sshd/user" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR
     -o BatchMode=yes -p "$SSH_PORT" -S "$WORK/cm.sock")
wait_for 10 "${SSH[@]}" -o ControlMaster=no -o ControlPath=none "$BENCH_USER@127.0.0.1" true
"${SSH[@]}" -M -f -N "$BENCH_USER@127.0.0.1"
wait_for 10 test -S "$WORK/cm.sock"
"${SSH[@]}" "$BENCH_USER@127.0.0.1" true

# --- measure, same run ------------------------------------------------------------------------------
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

python3 - "$WORK/result.json" "$RUNS" "$WORK/keepalive.json" <<'PY'
import json, sys, datetime, subprocess, platform, re, pathlib
res = json.load(open(sys.argv[1]))["results"] + [json.load(open(sys.argv[3]))]
def pct(ts, p):
    ts = sorted(ts); return ts[min(len(ts) - 1, int(round(p / 100 * (len(ts) - 1))))] * 1000
rows = [(r["command"], pct(r["times"], 50), pct(r["times"], 95), r["mean"] * 1000) for r in res]
ratio = rows[0][1] / rows[1][1]
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
out = [
    "<!-- exec-latency:start -->",
    f"Measured {datetime.date.today()} at commit `{commit}` on {platform.machine()}, {subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} cores, loopback, "
    f"release build, {sys.argv[2]} runs each after 20 warm-up runs, with `tests/bench/exec_latency.sh {sys.argv[2]}`.",
    "",
    "| path | p50 (ms) | p95 (ms) | mean (ms) |",
    "| --- | ---: | ---: | ---: |",
]
out += [f"| {c} | {p50:.2f} | {p95:.2f} | {m:.2f} |" for c, p50, p95, m in rows]
out += ["", f"**Ratio p50 burrow (curl) / ControlMaster: {ratio:.2f}×** (goal ≤ 0.5×); "
        f"keep-alive client / ControlMaster: {rows[3][1] / rows[1][1]:.2f}×; "
        f"curl's own floor / ControlMaster: {rows[2][1] / rows[1][1]:.2f}×.", "<!-- exec-latency:end -->"]
block = "\n".join(out)
print(block)
path = pathlib.Path("BENCHMARKS.md")
text = path.read_text() if path.exists() else "# Benchmarks\n"
if "<!-- exec-latency:start -->" in text:
    text = re.sub(r"<!-- exec-latency:start -->.*<!-- exec-latency:end -->", lambda _: block, text, flags=re.S)
else:
    text += "\n## Exec latency: `true` on a node\n\n" + block + "\n"
path.write_text(text)
PY
