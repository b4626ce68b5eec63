#!/usr/bin/env bash
# Measures the agent's size under each profile knob and prints a Markdown table (for BENCHMARKS.md).
#
#   cross/sizes.sh [TARGET]      default: aarch64-unknown-linux-musl
#   SIZES_ONLY=1,2,14 cross/sizes.sh     only some rows (numbers as listed in ROWS)
#   SIZES_REV=...    label for the source measured, when it is not this checkout's HEAD
#
# Every row starts from the same reference (opt-level "s", fat LTO, codegen-units 1, panic abort,
# strip, C code at its build scripts' -O2, unwind tables kept) and changes one or more knobs through
# CARGO_PROFILE_AGENT_*, CFLAGS_<target> and CARGO_TARGET_<TARGET>_RUSTFLAGS, so no file is edited; the
# last rows are what cross/build.sh ships: [profile.agent] as committed plus cross/flags.env, with
# the vendored OpenSSL (openssl-src, every algorithm) and with the trimmed one (cross/openssl.sh).
# Needs what cross/build.sh installs (run it once first). Each row is a full build: ~3 min on 2 cores.
set -euo pipefail

TARGET=${1:-aarch64-unknown-linux-musl}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=cross/flags.env
. cross/flags.env
# shellcheck source=cross/openssl.sh
. cross/openssl.sh
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | grep -o '"target_directory":"[^"]*"' | cut -d'"' -f4)
CF=CFLAGS_$(tr '-' '_' <<<"$TARGET")
RF=CARGO_TARGET_$(tr 'a-z-' 'A-Z_' <<<"$TARGET")_RUSTFLAGS
NOUW_C="-fno-asynchronous-unwind-tables -fno-unwind-tables"

REF="CARGO_PROFILE_AGENT_OPT_LEVEL=s;CARGO_PROFILE_AGENT_LTO=fat;CARGO_PROFILE_AGENT_CODEGEN_UNITS=1;CARGO_PROFILE_AGENT_PANIC=abort;CARGO_PROFILE_AGENT_STRIP=true;$RF=-C target-feature=+crt-static"
# name | ';'-separated assignments applied on top of REF ("-": none; "shipped": no REF, flags.env)
ROWS=(
  "reference: opt-level s, lto fat, codegen-units 1, panic abort|-"
  "opt-level z|CARGO_PROFILE_AGENT_OPT_LEVEL=z"
  "opt-level 2|CARGO_PROFILE_AGENT_OPT_LEVEL=2"
  "opt-level 3|CARGO_PROFILE_AGENT_OPT_LEVEL=3"
  "lto thin|CARGO_PROFILE_AGENT_LTO=thin"
  "lto off|CARGO_PROFILE_AGENT_LTO=off"
  "codegen-units 16|CARGO_PROFILE_AGENT_CODEGEN_UNITS=16"
  "panic unwind|CARGO_PROFILE_AGENT_PANIC=unwind"
  "C at -Os|$CF=-Os"
  "C at -Oz|$CF=-Oz"
  "no unwind tables (Rust + C)|$RF=-C target-feature=+crt-static -C force-unwind-tables=no;$CF=$NOUW_C"
  "opt-level z + C -Os + no unwind tables|CARGO_PROFILE_AGENT_OPT_LEVEL=z;$RF=-C target-feature=+crt-static -C force-unwind-tables=no;$CF=-Os $NOUW_C"
  "opt-level z + C -Oz + no unwind tables|CARGO_PROFILE_AGENT_OPT_LEVEL=z;$RF=-C target-feature=+crt-static -C force-unwind-tables=no;$CF=-Oz $NOUW_C"
  "[profile.agent] + cross/flags.env, vendored OpenSSL|shipped"
  "[profile.agent] + cross/flags.env, trimmed OpenSSL (build.sh default)|trimmed"
)
pick=",${SIZES_ONLY:-},"

CMD="cargo zigbuild -p burrow-agent --profile agent --features vendored-openssl --target $TARGET"
dirty=$(git status --porcelain -- agent core Cargo.toml Cargo.lock 2>/dev/null | head -1 || true)
rev=${SIZES_REV:-$(git rev-parse --short HEAD 2>/dev/null || echo '?')${dirty:+ + uncommitted changes}}
echo "Target \`$TARGET\`, $(date -u +%Y-%m-%d), commit $rev, $(rustc --version | cut -d' ' -f1-2), cargo-zigbuild $(cargo-zigbuild --version | cut -d' ' -f2)."
echo "Each row: \`env <reference> <row> $CMD\`, reference = \`${REF//;/ }\`."
echo "The last two rows start from no reference but cross/flags.env; the trimmed one builds OpenSSL with cross/openssl.sh, drops \`--features vendored-openssl\` and sets \`<TARGET>_OPENSSL_DIR\`, \`<TARGET>_OPENSSL_STATIC=1\`."
echo
echo "| # | variant | stripped bytes | MiB | gzip -9 bytes | vs reference | build s |"
echo "| ---: | --- | ---: | ---: | ---: | ---: | ---: |"
ref_size=
i=0
for row in "${ROWS[@]}"; do
  i=$((i + 1))
  [[ $pick == ",," || $pick == *",$i,"* ]] || continue
  name=${row%%|*}; extra=${row#*|}
  cmd=$CMD
  if [[ $extra == shipped ]]; then vars=("$RF=$AGENT_RUSTFLAGS" "$CF=$AGENT_CFLAGS")
  elif [[ $extra == trimmed ]]; then
    # shellcheck disable=SC2086
    prefix=$(trimmed_openssl "$TARGET" "$TARGET_DIR" $AGENT_CFLAGS)
    TU=$(tr 'a-z-' 'A-Z_' <<<"$TARGET")
    vars=("$RF=$AGENT_RUSTFLAGS" "$CF=$AGENT_CFLAGS" "${TU}_OPENSSL_DIR=$prefix" "${TU}_OPENSSL_STATIC=1")
    cmd=${CMD/ --features vendored-openssl/}
  else
    IFS=';' read -ra vars <<<"$REF"
    if [[ $extra != - ]]; then IFS=';' read -ra more <<<"$extra"; vars+=("${more[@]}"); fi
  fi
  printf '==> %s: env %s %s\n' "$name" "${vars[*]}" "$cmd" >&2
  start=$SECONDS
  # shellcheck disable=SC2086  # $cmd is a command line, split on purpose
  if ! env "${vars[@]}" $cmd >/tmp/sizes-build.log 2>&1; then
    tail -20 /tmp/sizes-build.log >&2; echo "| $i | $name | build failed | | | | |"; continue
  fi
  secs=$((SECONDS - start))
  bin="$TARGET_DIR/$TARGET/agent/agent"
  size=$(stat -c %s "$bin"); gz=$(gzip -9c "$bin" | wc -c)
  [[ -z $ref_size ]] && ref_size=$size
  awk -v i="$i" -v n="$name" -v s="$size" -v g="$gz" -v r="$ref_size" -v t="$secs" 'BEGIN {
    printf "| %d | %s | %d | %.2f | %d | %+.1f %% | %d |\n", i, n, s, s/1048576, g, (s-r)*100/r, t }'
done
