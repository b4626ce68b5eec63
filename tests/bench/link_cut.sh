#!/usr/bin/env bash
# Benchmark (not a test; needs root for network namespaces): the agent's side of issue 8 §1. An
# agent in a network namespace behind a veth, the gateway's sshd on the root side. Cut = the root end of the veth down (the agent's packets are
# dropped silently), restored after CUT seconds. Prints when the agent noticed, when it had a new
# SSH session, and when the API showed the node online again.
#
# Usage: tests/bench/link_cut.sh [CUT_SECONDS] [DIR_WITH_GATEWAY_AND_AGENT]   (release builds by default)
set -euo pipefail
cd "$(dirname "$0")/../.."
CUT=${1:-30}
BIN=${2:-${CARGO_TARGET_DIR:-$PWD/target}/release}
W=$(mktemp -d /var/tmp/burrow-cut.XXXXXX)
NS=burrow-cut-$$
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; ip netns del $NS 2>/dev/null || true; ip link del vh$$ 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
ip netns add $NS
ip link add vh$$ type veth peer name vn$$
ip link set vn$$ netns $NS
ip addr add 10.231.0.1/24 dev vh$$ && ip link set vh$$ up
ip netns exec $NS ip addr add 10.231.0.2/24 dev vn$$
ip netns exec $NS ip link set vn$$ up
ip netns exec $NS ip link set lo up
"$BIN/gateway" --data-dir "$W/gw" --log info serve --api 127.0.0.1:0 --ssh 10.231.0.1:0 2>"$W/gw.log" & pids+=($!)
for i in $(seq 300); do [ -f "$W/gw/run.json" ] && break; sleep 0.1; done
API=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["api"])' "$W/gw/run.json")
JOIN=$("$BIN/gateway" --data-dir "$W/gw" join create 2>/dev/null)
TOKEN=$("$BIN/gateway" --data-dir "$W/gw" token create --role operator)
ip netns exec $NS "$BIN/agent" --data-dir "$W/agent" --log info run --join "$JOIN" --name cut 2>"$W/agent.log" & pids+=($!)
status() { curl -sf -H "Authorization: Bearer $TOKEN" "http://$API/api/v1/nodes/cut" | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])' 2>/dev/null || echo none; }
now() { date +%s.%N; }
until [ "$(status)" = online ]; do sleep 0.1; done
sleep 3
echo "online; cutting for ${CUT}s"
t_cut=$(now); ip link set vh$$ down
t_notice=0
while python3 -c 'import sys,time; sys.exit(0 if time.time() < float(sys.argv[1]) + float(sys.argv[2]) else 1)' "$t_cut" "$CUT"; do
  if [ "$t_notice" = 0 ] && grep -q "session to .* ended\|session to .* failed" "$W/agent.log"; then t_notice=$(now); fi
  sleep 0.05
done
t_up=$(now); ip link set vh$$ up
echo "restored"
until [ "$(grep -c "connected to" "$W/agent.log")" -ge 2 ]; do sleep 0.05; done
t_ssh=$(now)
echo "agent log:"; grep -E "ended|failed|unreachable|answers again|connected to|reconnecting" "$W/agent.log" | sed 's/^/  /'
for i in $(seq 600); do [ "$(status)" = online ] && break; sleep 0.05; done
t_online=$(now)
python3 - "$t_cut" "$t_up" "$t_ssh" "$t_online" "$t_notice" <<'PY'
import sys
cut, up, ssh, online, notice = map(float, sys.argv[1:])
print(f"agent dropped the dead session {notice-cut:.2f} s after the cut" if notice else "agent did not drop the session during the cut")
print(f"new SSH session {ssh-up:.2f} s after the restore; node online in the API {online-up:.2f} s after it")
PY
echo "gateway log:"; grep -iE "cut|offline|link|dial" "$W/gw.log" | tail -8 | sed 's/^/  /'
