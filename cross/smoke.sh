#!/usr/bin/env bash
# Smoke test of the built agents under qemu-user-static against a real sshd and gateway on this
# machine: join, exec, heartbeat, exit (issue #3). Not written yet: it lands once the agent and the
# gateway can pair. Until then it only checks that each dist/agent-<target> starts and exits 0.
#
#   cross/smoke.sh [TARGET...]      default: every dist/agent-* present
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

qemu_for() {
  case $1 in
    aarch64-*) echo "qemu-aarch64-static -cpu cortex-a53" ;;   # Pi 3's core
    armv7-*)   echo "qemu-arm-static -cpu cortex-a7" ;;        # Pi 2's core
    arm-*)     echo "qemu-arm-static -cpu arm1176" ;;          # Pi Zero/1's ARMv6 core
    x86_64-*)  echo "" ;;
    *) echo "unknown target $1" >&2; return 1 ;;
  esac
}

if [[ $# -gt 0 ]]; then targets=("$@"); else
  targets=(); for f in dist/agent-*; do [[ -f $f ]] && targets+=("${f#dist/agent-}"); done
fi
[[ ${#targets[@]} -gt 0 ]] || { echo "no dist/agent-* found: run cross/build.sh first" >&2; exit 1; }
command -v qemu-aarch64-static >/dev/null || apt-get install -y -qq qemu-user-static >/dev/null

fail=0
for t in "${targets[@]}"; do
  runner=$(qemu_for "$t")
  if $runner "dist/agent-$t" --help >/dev/null 2>&1; then echo "ok    $t: --help exits 0${runner:+ under $runner}"
  else echo "FAIL  $t: --help exited $?${runner:+ under $runner}"; fail=1; fi
done
exit $fail
