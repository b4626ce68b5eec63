#!/usr/bin/env bash
# Smoke test of the built static agents under qemu-user-static against a real gateway and its real
# OpenSSH sshd on this machine: each agent joins (reporting the architecture it was built for), comes
# online, runs a command through the tunnel, sends a heartbeat with metrics, then is stopped. (The
# command itself is a host program: qemu-user emulates only the agent.) Reports the qemu process's RSS
# (the emulator dominates it: no budget there).
#
#   cross/smoke.sh [--record] [TARGET...]   default: every dist/agent-* present
#   --record writes the result table into BENCHMARKS.md (block "qemu-smoke").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RECORD=0
[[ ${1:-} == --record ]] && { RECORD=1; shift; }

qemu_for() {
  case $1 in
    aarch64-*) echo "qemu-aarch64-static -cpu cortex-a53" ;; # Pi 3's core
    armv7-*)   echo "qemu-arm-static -cpu cortex-a7" ;;      # Pi 2's core
    arm-*)     echo "qemu-arm-static -cpu arm1176" ;;        # Pi Zero/1's ARMv6 core
    x86_64-*)  echo "" ;;
    *) echo "unknown target $1" >&2; return 1 ;;
  esac
}
expected_arch() { # Rust's std::env::consts::ARCH of the agent, as it reports it when pairing
  case $1 in aarch64-*) echo aarch64 ;; arm*) echo arm ;; x86_64-*) echo x86_64 ;; esac
}

if [[ $# -gt 0 ]]; then targets=("$@"); else
  targets=(); for f in dist/agent-*; do [[ -f $f && $f != *.gz ]] && targets+=("${f#dist/agent-}"); done
fi
[[ ${#targets[@]} -gt 0 ]] || { echo "no dist/agent-* found: run cross/build.sh first" >&2; exit 1; }
if ! command -v qemu-aarch64-static >/dev/null; then
  apt-get update -qq && apt-get install -y -qq qemu-user-static >/dev/null
fi
. tests/bench/lib.sh   # WORK, cleanup, wait_for, replace_block

cargo build --release -q -p burrow-gateway
GW=$PWD/target/release/gateway
"$GW" --data-dir "$WORK/gw" --log info serve --api 127.0.0.1:0 --ssh 127.0.0.1:0 2>"$WORK/gw.log" & pids+=($!)
wait_for 30 test -f "$WORK/gw/run.json"
API=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["api"])' "$WORK/gw/run.json")
TOKEN=$("$GW" --data-dir "$WORK/gw" token create --role operator)
api() { curl -sf -H "Authorization: Bearer $TOKEN" "$@"; }
field() { python3 -c 'import json,sys; v=json.load(sys.stdin); [v:=v[k] if not k.isdigit() else v[int(k)] for k in sys.argv[1].split(".")]; print(v)' "$1"; }

rows=() fail=0
for t in "${targets[@]}"; do
  bin=$PWD/dist/agent-$t name=smoke-${t%%-*}
  runner=$(qemu_for "$t")
  version=$($runner "$bin" --version 2>&1) || { echo "FAIL  $t: --version: $version"; fail=1; rows+=("| $t | fails to start | | | | | |"); continue; }
  join=$("$GW" --data-dir "$WORK/gw" join create 2>/dev/null)
  $runner "$bin" --data-dir "$WORK/agent-$t" --log info run --join "$join" --name "$name" 2>"$WORK/agent-$t.log" &
  pid=$!; pids+=("$pid")
  start=$SECONDS
  online() { api "http://$API/api/v1/nodes/$name" | grep -q '"status":"online"'; }
  if ! (wait_for 120 online); then
    echo "FAIL  $t: never came online"; tail -5 "$WORK/agent-$t.log"; fail=1; rows+=("| $t | $version | | never online | | | |"); kill "$pid"; continue
  fi
  joined=$((SECONDS - start))
  out=$(api -d '{"command":"echo tunnel-ok"}' "http://$API/api/v1/nodes/$name/exec")
  said=$(field stdout <<<"$out" | tr -d '\n'); code=$(field exit_code <<<"$out")
  node=$(api "http://$API/api/v1/nodes/$name")
  arch=$(field arch <<<"$node"); metrics=$(field metrics.mem_total <<<"$node")
  rss=$(awk '/^VmRSS/ {printf "%.1f", $2/1024}' "/proc/$pid/status")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  if [[ $code == 0 && $said == tunnel-ok && $arch == "$(expected_arch "$t")" && $metrics != None && $metrics -gt 0 ]]; then
    echo "ok    $t: $version, arch $arch, online in ${joined}s, exec ok, heartbeat metrics ok, RSS ${rss} MB${runner:+ under $runner}"
    rows+=("| $t | $version | $arch | ${joined} s | ok (exit $code) | ok | ${rss} MB |")
  else
    echo "FAIL  $t: arch=$arch exec gave $out, metrics.mem_total=$metrics"; fail=1
    rows+=("| $t | $version | $arch | ${joined} s | FAILED ($said / $code) | $metrics | ${rss} MB |")
  fi
done

table="Run $(date -u +%Y-%m-%d) at commit \`$(git rev-parse --short HEAD)\` with \`cross/smoke.sh --record\`: each static agent under
qemu-user-static (aarch64: \`-cpu cortex-a53\`, armv7: \`-cpu cortex-a7\`, armv6: \`-cpu arm1176\`) joined a real
gateway and its OpenSSH sshd on 127.0.0.1 (reporting the architecture it was built for), came online,
ran \`echo\` through the tunnel, and sent a heartbeat with metrics. RSS is the qemu process's (the
emulator dominates it); x86_64 runs natively.

| target | --version | reported arch | join → online | exec | heartbeat metrics | RSS |
| --- | --- | --- | ---: | --- | --- | ---: |
$(printf '%s\n' "${rows[@]}")"
echo "$table"
[[ $RECORD == 1 ]] && replace_block BENCHMARKS.md qemu-smoke "Static agents under qemu: join, exec, heartbeat" "$table"
exit $fail
