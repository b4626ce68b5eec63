#!/usr/bin/env bash
# The README's Quickstart, followed literally in a fresh clone (issue 12): the commands are read out of
# README.md, not copied here, so the check breaks when the README does.
#
#   tests/quickstart.sh [--with-tests]
#
# It clones this repository's HEAD into a temp dir, runs the Quickstart's gateway command there (in the
# background), builds the agent with the command the README names, creates a join string, starts the
# agent with it (the README's `'burrow1.…'` replaced by that string, the only substitution), mints an
# operator token and runs the README's curl, which must answer exit code 0 with the kernel's name.
# `--with-tests` also runs step 2, the test command (what `.ci/run` does anyway).
#
# Needs: git, cargo, curl, python3, sshd (apt-get install -y openssh-server), and the Quickstart's
# ports free (2222 and 18789). A fresh clone builds everything in release: ~10 min on 2 cores.
# Set CARGO_TARGET_DIR to reuse a build.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
with_tests=no
[ "${1:-}" = --with-tests ] && with_tests=yes

for tool in git cargo curl python3 /usr/sbin/sshd; do
  command -v "$tool" >/dev/null || { echo "quickstart: missing $tool"; exit 1; }
done

work=$(mktemp -d /var/tmp/burrow-quickstart.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

wait_for() { # wait_for SECONDS WHAT CMD...: poll a condition with a deadline
  local end=$((SECONDS + $1)) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || { echo "quickstart: timed out waiting for $what"; tail -n 30 "$work"/*.log; exit 1; }
    sleep 0.2
  done
}

echo "quickstart: fresh clone of $(git -C "$repo" rev-parse --short HEAD) in $work/burrow"
git clone -q "$repo" "$work/burrow"

# The Quickstart section's shell blocks and text, from the clone's README (what a new user reads).
readme=$work/burrow/README.md
blocks=$(python3 - "$readme" <<'PY'
import json, re, sys
text = open(sys.argv[1]).read()
section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
commands = [[l for l in b.splitlines() if l.strip() and not l.lstrip().startswith("#")] for b in blocks]
build = re.search(r"`(cargo build --release -p burrow-agent)`", section)
print(json.dumps({"steps": commands[0], "try": commands[1], "build": build and build.group(1)}))
PY
)
field() { python3 -c 'import json,sys; v=json.loads(sys.argv[1]); print(eval(sys.argv[2]))' "$blocks" "$1"; }
[ "$(field 'len(v["steps"])')" = 2 ] || { echo "quickstart: the Quickstart must have exactly two commands"; exit 1; }
serve=$(field 'v["steps"][0]')
test_cmd=$(field 'v["steps"][1]')
build=$(field 'v["build"]')
[ "$build" != None ] || { echo "quickstart: the README no longer says how to build the agent"; exit 1; }
mapfile -t try < <(field '"\n".join(v["try"])')
[ "${#try[@]}" = 4 ] || { echo "quickstart: expected 4 commands in the try-it block, found ${#try[@]}"; exit 1; }

cd "$work/burrow"
# A reused build must still be where the README's `./target/release/agent` looks.
[ -n "${CARGO_TARGET_DIR:-}" ] && ln -s "$CARGO_TARGET_DIR" target
# A new user's home (the agent's `~/.burrow`), keeping this user's Rust toolchain.
export RUSTUP_HOME=${RUSTUP_HOME:-$HOME/.rustup} CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}
export HOME=$work/home && mkdir -p "$HOME"

echo "quickstart: step 1: $serve"
bash -c "$serve" >"$work/gateway.log" 2>&1 & gateway=$!; pids+=($gateway)
exec 3>&1 # wait_for silences its condition; this one reports a gateway that died
up() { kill -0 "$gateway" || { echo "quickstart: the gateway command ended" >&3; tail -n 30 "$work/gateway.log" >&3; exit 1; }; curl -sf http://127.0.0.1:18789/healthz; }
wait_for 1200 "the gateway's API on 127.0.0.1:18789" up

if [ $with_tests = yes ]; then
  echo "quickstart: step 2: $test_cmd"
  bash -c "$test_cmd"
else
  echo "quickstart: step 2 ($test_cmd) skipped: .ci/run runs it; --with-tests runs it here"
fi

echo "quickstart: the agent: $build"
bash -c "$build"

echo "quickstart: ${try[0]}"
join=$(bash -c "${try[0]}" 2>>"$work/cli.log")
case $join in burrow1.*) ;; *) echo "quickstart: no join string: $join"; exit 1 ;; esac
agent=${try[1]//\'burrow1.…\'/\'$join\'}
[ "$agent" != "${try[1]}" ] || { echo "quickstart: the agent line has no 'burrow1.…' to fill in"; exit 1; }
echo "quickstart: ${try[1]}"
bash -c "$agent" >"$work/agent.log" 2>&1 & pids+=($!)

echo "quickstart: ${try[2]}"
eval "${try[2]}" 2>>"$work/cli.log"
[ -n "${T:-}" ] || { echo "quickstart: the token line set no T"; exit 1; }
export T
online() { curl -sf -H "Authorization: Bearer $T" http://127.0.0.1:18789/api/v1/nodes/pi-1 | grep -q '"status":"online"'; }
wait_for 60 "pi-1 online" online

echo "quickstart: ${try[3]}"
answer=$(bash -c "${try[3]}")
echo "$answer"
python3 - "$answer" <<'PY'
import json, sys
a = json.loads(sys.argv[1])
assert a.get("exit_code") == 0, a
assert a.get("stdout", "").startswith("Linux "), a
PY
echo "quickstart: ok"
