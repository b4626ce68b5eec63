# Shared pieces of the benchmark scripts (sourced, not run): a burrow gateway + agent and an ordinary
# OpenSSH sshd for the side-by-side comparison, all on 127.0.0.1 in $WORK, cleaned up on exit.

for tool in curl python3 /usr/sbin/sshd; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y curl openssh-server)"; exit 1; }
done
WORK=$(mktemp -d /var/tmp/burrow-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

wait_for() { # wait_for SECONDS CMD... : poll a condition with a deadline
  local end=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do [ $SECONDS -lt $end ] || { echo "timed out: $*"; exit 1; }; sleep 0.1; done
}

# start_burrow AGENT_BINARY: release gateway with managed sshd, one agent "bench" joined and online,
# run with the extra flags in AGENT_EXTRA (an array, may be unset). Sets GW, API, TOKEN, AGENT_PID.
start_burrow() {
  cargo build --release -q -p burrow-gateway -p burrow-agent
  GW=${CARGO_TARGET_DIR:-$PWD/target}/release/gateway
  "$GW" --data-dir "$WORK/gw" --log warn serve --api 127.0.0.1:0 --ssh 127.0.0.1:0 2>"$WORK/gw.log" & pids+=($!)
  wait_for 30 test -f "$WORK/gw/run.json"
  API=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["api"])' "$WORK/gw/run.json")
  local join; join=$("$GW" --data-dir "$WORK/gw" join create 2>/dev/null)
  "$1" --data-dir "$WORK/agent" --log warn run --join "$join" --name bench ${AGENT_EXTRA[@]+"${AGENT_EXTRA[@]}"} 2>"$WORK/agent.log" & AGENT_PID=$!
  pids+=("$AGENT_PID")
  TOKEN=$("$GW" --data-dir "$WORK/gw" token create --role operator)
  wait_for 30 node_online
}
node_online() { curl -sf -H "Authorization: Bearer $TOKEN" "http://$API/api/v1/nodes/bench" | grep -q '"status":"online"'; }

# start_plain_sshd: an ordinary sshd for user $BENCH_USER with key $WORK/sshd/user. Sets SSH_PORT and
# SSH (the client command prefix). The user's login shell is /bin/sh: logging in as root here would
# make bash source root's ~/.bashrc on every command (sshd sets SSH_CLIENT), which on developer
# machines costs 100+ ms and says nothing about OpenSSH.
BENCH_USER=burrow-bench
start_plain_sshd() {
  if ! id "$BENCH_USER" >/dev/null 2>&1; then
    useradd --system --no-create-home --home-dir / --shell /bin/sh "$BENCH_USER"
    usermod -p '*' "$BENCH_USER" # no password, but not locked (sshd refuses locked accounts without PAM)
  fi
  mkdir -p "$WORK/sshd" /run/sshd && chmod 755 "$WORK" "$WORK/sshd" # sshd reads authorized_keys as the user
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
ClientAliveInterval 15
MaxSessions 100
MaxStartups 100:30:200
CFG
  /usr/sbin/sshd -D -e -f "$WORK/sshd/config" 2>"$WORK/sshd.log" & pids+=($!)
  SSH=(ssh -i "$WORK/sshd/user" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR
       -o BatchMode=yes -p "$SSH_PORT")
  wait_for 10 "${SSH[@]}" "$BENCH_USER@127.0.0.1" true
}

# replace_block FILE NAME TITLE CONTENT: put CONTENT between <!-- NAME:start/end --> in FILE.
replace_block() {
  python3 - "$@" <<'PY'
import pathlib, re, sys
path, name, title, block = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
block = f"<!-- {name}:start -->\n{block}\n<!-- {name}:end -->"
text = path.read_text() if path.exists() else "# Benchmarks\n"
if f"<!-- {name}:start -->" in text:
    text = re.sub(f"<!-- {name}:start -->.*<!-- {name}:end -->", lambda _: block, text, flags=re.S)
else:
    text += f"\n## {title}\n\n{block}\n"
path.write_text(text)
PY
}
