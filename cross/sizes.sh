#!/usr/bin/env bash
# Measures the agent's size under each profile knob and prints a Markdown table (for BENCHMARKS.md).
#
#   cross/sizes.sh [TARGET]      default: aarch64-unknown-linux-musl
#
# Every row starts from the same reference (opt-level "s", fat LTO, codegen-units 1, panic abort,
# strip) and changes one knob through cargo's CARGO_PROFILE_AGENT_* variables, so Cargo.toml is not
# touched; the last row is [profile.agent] exactly as committed. C code (OpenSSL, libssh2, zlib) is
# compiled at -O2 by its build scripts whatever the profile says; CFLAGS_<target> rows show -Os/-Oz there.
# Needs what cross/build.sh installs (run it once first). Each row is a full build: ~3 min on 2 cores.
set -euo pipefail

TARGET=${1:-aarch64-unknown-linux-musl}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | grep -o '"target_directory":"[^"]*"' | cut -d'"' -f4)
CFLAGS_VAR=CFLAGS_$(tr '-' '_' <<<"$TARGET")
# Same flags as cross/build.sh, so its artefacts are reused rather than rebuilt.
export CARGO_TARGET_$(tr 'a-z-' 'A-Z_' <<<"$TARGET")_RUSTFLAGS="-C target-feature=+crt-static"

REF="CARGO_PROFILE_AGENT_OPT_LEVEL=s CARGO_PROFILE_AGENT_LTO=fat CARGO_PROFILE_AGENT_CODEGEN_UNITS=1 CARGO_PROFILE_AGENT_PANIC=abort CARGO_PROFILE_AGENT_STRIP=true"
# name | environment on top of the reference ("-" = none; "committed" = no overrides at all)
ROWS=(
  "reference (s, fat, cgu 1, abort)|-"
  "opt-level z|CARGO_PROFILE_AGENT_OPT_LEVEL=z"
  "opt-level 2|CARGO_PROFILE_AGENT_OPT_LEVEL=2"
  "opt-level 3|CARGO_PROFILE_AGENT_OPT_LEVEL=3"
  "lto thin|CARGO_PROFILE_AGENT_LTO=thin"
  "lto off|CARGO_PROFILE_AGENT_LTO=off"
  "codegen-units 16|CARGO_PROFILE_AGENT_CODEGEN_UNITS=16"
  "panic unwind|CARGO_PROFILE_AGENT_PANIC=unwind"
  "C at -Os|$CFLAGS_VAR=-Os"
  "C at -Oz|$CFLAGS_VAR=-Oz"
  "opt-level z + C at -Oz|CARGO_PROFILE_AGENT_OPT_LEVEL=z $CFLAGS_VAR=-Oz"
  "[profile.agent] as committed|committed"
)
[[ -n ${SIZES_ONLY:-} ]] && { IFS=','; read -ra pick <<<"$SIZES_ONLY"; unset IFS; }

CMD="cargo zigbuild -p burrow-agent --profile agent --features vendored-openssl --target $TARGET"
echo "Target \`$TARGET\`, $(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- agent core Cargo.toml Cargo.lock 2>/dev/null || echo ' + uncommitted changes'), $(rustc --version | cut -d' ' -f1-2)."
echo "Each row: \`env <reference> <row> $CMD\`; reference = \`$REF\`."
echo
echo "| variant | stripped bytes | MiB | gzip -9 bytes | vs reference | build s |"
echo "| --- | ---: | ---: | ---: | ---: | ---: |"
ref_size=
i=0
for row in "${ROWS[@]}"; do
  i=$((i + 1))
  if [[ -n ${pick+x} ]] && [[ " ${pick[*]} " != *" $i "* ]]; then continue; fi
  name=${row%%|*}; extra=${row#*|}
  if [[ $extra == committed ]]; then vars=(); else vars=($REF); [[ $extra != - ]] && vars+=($extra); fi
  printf '==> %s: %s %s\n' "$name" "${vars[*]}" "$CMD" >&2
  start=$SECONDS
  env "${vars[@]}" $CMD >&2 2>/tmp/sizes-build.log || { tail -20 /tmp/sizes-build.log >&2; echo "| $name | build failed | | | | |"; continue; }
  secs=$((SECONDS - start))
  bin="$TARGET_DIR/$TARGET/agent/agent"
  size=$(stat -c %s "$bin"); gz=$(gzip -9c "$bin" | wc -c)
  [[ -z $ref_size ]] && ref_size=$size
  awk -v n="$name" -v s="$size" -v g="$gz" -v r="$ref_size" -v t="$secs" 'BEGIN {
    printf "| %s | %d | %.2f | %d | %+.1f %% | %d |\n", n, s, s/1048576, g, (s-r)*100/r, t }'
done
