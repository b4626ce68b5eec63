#!/usr/bin/env bash
# Builds the static agent for the Raspberry Pi family (and x86_64) without Docker.
#
#   cross/build.sh [TARGET...]      default: all four targets below
#
# Each target is linked by `cargo zigbuild` (zig ships musl and a clang that cross-compiles OpenSSL,
# libssh2 and zlib). OpenSSL is by default a trimmed build (cross/openssl.sh: ~1.1 MB less on aarch64);
# BURROW_OPENSSL=vendored uses the crate feature `vendored-openssl` (openssl-src, every algorithm)
# instead. Targets whose rust-std rustup cannot install (here the arm*-musleabihf ones answer 404) are
# built with nightly `-Zbuild-std`; zig then supplies the C runtime, hence `-C link-self-contained=no`.
# Missing tools are installed on first use. Size flags: cross/flags.env.
# Results: dist/agent-<target>, with size, gzip size and `file` output. Fails if one is not static.
#
# Environment:
#   BURROW_PROFILE   cargo profile (default: agent, see [profile.agent] in Cargo.toml)
#   BURROW_OPENSSL   trimmed (default) | vendored
#   BURROW_NIGHTLY   toolchain for -Zbuild-std (default: nightly)
#   BURROW_BUILD_STD auto (default: only when rust-std cannot be installed) | always | never
#   BURROW_LOCKED    set to 1 to pass --locked (release builds: Cargo.lock must be up to date)
#   CARGO_TARGET_DIR honoured as usual
set -euo pipefail

ALL_TARGETS=(
  aarch64-unknown-linux-musl      # Pi 3/4/5 with a 64-bit OS
  armv7-unknown-linux-musleabihf  # Pi 2/3/4 with a 32-bit OS
  arm-unknown-linux-musleabihf    # Pi Zero/1 (ARMv6)
  x86_64-unknown-linux-musl       # PCs, VMs
)
PROFILE=${BURROW_PROFILE:-agent}
NIGHTLY=${BURROW_NIGHTLY:-nightly}
BUILD_STD=${BURROW_BUILD_STD:-auto}
PACKAGE=burrow-agent
OPENSSL_MODE=${BURROW_OPENSSL:-trimmed}
case $OPENSSL_MODE in
  trimmed)  FEATURES= ;;
  vendored) FEATURES=vendored-openssl ;;
  *) echo "cross/build.sh: BURROW_OPENSSL must be trimmed or vendored" >&2; exit 1 ;;
esac

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=cross/flags.env
. cross/flags.env   # AGENT_RUSTFLAGS, AGENT_CFLAGS
# shellcheck source=cross/openssl.sh
. cross/openssl.sh  # trimmed_openssl

say() { printf '%s\n' "$*" >&2; }
die() { say "cross/build.sh: error: $*"; exit 1; }

if [[ $# -gt 0 ]]; then TARGETS=("$@"); else TARGETS=("${ALL_TARGETS[@]}"); fi
for t in "${TARGETS[@]}"; do
  [[ " ${ALL_TARGETS[*]} " == *" $t "* ]] || die "unknown target '$t' (known: ${ALL_TARGETS[*]})"
done

# --- tools: installed only when absent, silent when present ---------------------------------------

command -v rustup >/dev/null || die "rustup is required (https://rustup.rs)"

pip_install() {
  local py
  py=$(command -v python3 || command -v python || true)
  [[ -n $py ]] && "$py" -m pip install --quiet --disable-pip-version-check "$@" 2>/dev/null
}

if ! command -v zig >/dev/null && ! python3 -c 'import ziglang' 2>/dev/null; then
  say "installing zig (PyPI ziglang)…"
  pip_install ziglang || die "zig is missing and 'pip install ziglang' failed; install zig and retry"
fi
if ! command -v cargo-zigbuild >/dev/null; then
  say "installing cargo-zigbuild…"
  pip_install cargo-zigbuild || cargo install --quiet --locked cargo-zigbuild \
    || die "could not install cargo-zigbuild (pip or cargo install)"
  hash -r
  command -v cargo-zigbuild >/dev/null || die "cargo-zigbuild installed but not on PATH"
fi
for tool in perl make; do   # OpenSSL's build
  command -v $tool >/dev/null || die "$tool is required to build OpenSSL (apt-get install $tool)"
done
if ! command -v file >/dev/null; then
  say "installing file(1)…"
  { apt-get install -y -qq file >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq file >/dev/null; }; } \
    || die "file(1) is required to check static linking"
fi

has_std() { rustup target list --installed ${2:+--toolchain "$2"} 2>/dev/null | grep -qx "$1"; }

# Decides how a target is built: "stable" (rust-std from rustup) or "build-std" (nightly).
mode_for() {
  local t=$1
  case $BUILD_STD in
    always) echo build-std; return ;;
    never)  has_std "$t" || rustup target add "$t" >&2 || die "rustup cannot install rust-std for $t"
            echo stable; return ;;
  esac
  if has_std "$t" || rustup target add "$t" >/dev/null 2>&1; then echo stable; else echo build-std; fi
}

ensure_nightly_src() {
  rustup component list --installed --toolchain "$NIGHTLY" 2>/dev/null | grep -q '^rust-src' && return
  say "installing $NIGHTLY toolchain with rust-src (for -Zbuild-std)…"
  rustup toolchain install "$NIGHTLY" --profile minimal --component rust-src >/dev/null 2>&1 \
    || rustup component add rust-src --toolchain "$NIGHTLY" >/dev/null \
    || die "cannot install rust-src for $NIGHTLY"
}

# --- build -----------------------------------------------------------------------------------------

TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | grep -o '"target_directory":"[^"]*"' | cut -d'"' -f4)
mkdir -p dist
summary=()

for t in "${TARGETS[@]}"; do
  mode=$(mode_for "$t")
  rfvar=CARGO_TARGET_$(tr 'a-z-' 'A-Z_' <<<"$t")_RUSTFLAGS
  cfvar=CFLAGS_$(tr '-' '_' <<<"$t")
  rflags="$AGENT_RUSTFLAGS${!rfvar:+ ${!rfvar}}"
  # flags.env drops unwind tables, which only a panic = "abort" profile (like `agent`) can do without.
  [[ $PROFILE == agent ]] || rflags=${rflags//-C force-unwind-tables=no/}
  cflags="$AGENT_CFLAGS${!cfvar:+ ${!cfvar}}"   # the caller's own CFLAGS_<target> come last and win
  cmd=(cargo)
  if [[ $mode == build-std ]]; then
    ensure_nightly_src
    cmd+=("+$NIGHTLY")
    rflags+=" -C link-self-contained=no"
  fi
  cmd+=(zigbuild ${BURROW_LOCKED:+--locked} -p "$PACKAGE" --profile "$PROFILE" ${FEATURES:+--features "$FEATURES"} --target "$t")
  # shellcheck disable=SC2054  # one cargo argument, commas included
  [[ $mode == build-std ]] && cmd+=(-Zbuild-std=std,panic_abort)
  vars=("$rfvar=$rflags" "$cfvar=$cflags")

  start=$SECONDS
  if [[ $OPENSSL_MODE == trimmed ]]; then
    tu=$(tr 'a-z-' 'A-Z_' <<<"$t")
    # shellcheck disable=SC2086
    prefix=$(trimmed_openssl "$t" "$TARGET_DIR" $cflags) || die "trimmed OpenSSL build failed for $t"
    vars+=("${tu}_OPENSSL_DIR=$prefix" "${tu}_OPENSSL_STATIC=1")
  fi
  say "==> $t ($mode, $OPENSSL_MODE OpenSSL): ${vars[*]} ${cmd[*]}"
  env "${vars[@]}" "${cmd[@]}" || die "build failed for $t"
  secs=$((SECONDS - start))

  bin="$TARGET_DIR/$t/$PROFILE/agent"
  [[ -f $bin ]] || die "expected binary not found: $bin"
  out="dist/agent-$t"
  cp -f "$bin" "$out"

  desc=$(file -b "$out")
  if [[ $desc == *"dynamically linked"* ]] || [[ $desc != *"statically linked"* && $desc != *"static-pie linked"* ]] \
     || { command -v readelf >/dev/null && readelf -lW "$out" | grep -q 'INTERP'; }; then
    die "$out is not statically linked: $desc"
  fi
  size=$(stat -c %s "$out")
  gz=$(gzip -9c "$out" | wc -c)
  summary+=("$(awk -v o="$out" -v s="$size" -v g="$gz" -v t="$secs" -v m="$mode" 'BEGIN {
    printf "%-42s %9d B (%5.2f MiB)  gzip %8d B (%4.2f MiB)  %4ds  %s", o, s, s/1048576, g, g/1048576, t, m }')")
  summary+=("    $desc")
done

echo
echo "profile: $PROFILE   OpenSSL: $OPENSSL_MODE   features: ${FEATURES:-none}"
printf '%s\n' "${summary[@]}"
