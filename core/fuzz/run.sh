#!/usr/bin/env bash
# Runs each fuzz target for N seconds (default 30) from its committed corpus and fails on the first
# crash, hang or leak (libFuzzer's own verdicts; the input is kept in core/fuzz/artifacts/<target>/).
#   core/fuzz/run.sh [seconds] [target...]
# Needs nightly and cargo-fuzz (`cargo install cargo-fuzz --locked`). New inputs the fuzzer finds go
# to a temporary directory, so the committed corpus is only read; to keep finds, run a target with
# the command in README.md (it writes to corpus/<target>/) and minimise with `cargo fuzz cmin`.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-30}
shift || true
if [ $# -gt 0 ]; then
  targets=("$@")
else
  targets=(decode handshake sealed join exec_request http)
fi

# Safe Rust throughout (forbid(unsafe_code)): AddressSanitizer would find nothing Rust's own checks
# do not, and it makes the C dependencies (SQLite, ring) build several times slower and every run
# about half as fast. Debug assertions and overflow checks stay on (cargo-fuzz's default).
flags=(--sanitizer none)
cargo +nightly fuzz build "${flags[@]}"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in "${targets[@]}"; do
  echo "fuzz: $target for ${seconds}s"
  mkdir -p "$scratch/$target"
  log="$scratch/$target.log"
  if ! cargo +nightly fuzz run "${flags[@]}" "$target" "$scratch/$target" "fuzz/corpus/$target" -- \
      -max_total_time="$seconds" -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz: $target FAILED (input in core/fuzz/artifacts/$target/)"
    exit 1
  fi
  # The last status line: runs, coverage (cov: edges, ft: features), corpus and exec/s.
  grep -E '^#[0-9]+' "$log" | tail -n 1
done
echo "fuzz: ${#targets[@]} targets clean, ${seconds}s each"
