#!/usr/bin/env bash
# Release artefacts in one command: dist/ with the static agent for every target (cross/build.sh), the
# gateway for x86_64 Linux, both systemd units and example configs as `install` writes them for
# /usr/local/bin, and SHA256SUMS over all of it.
#
#   cross/release.sh [TARGET...]    targets as for cross/build.sh (default: all four)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BURROW_LOCKED=1 cross/build.sh "$@"
cargo build --release --locked -q -p burrow-gateway -p burrow-agent
install -m 0755 target/release/gateway dist/gateway-x86_64-linux-gnu
for bin in agent gateway; do
  # --config /dev/null: the units and configs show the defaults, not this machine's settings.
  "target/release/$bin" --config /dev/null install --bin "/usr/local/bin/$bin" --print unit \
    > "dist/burrow-$bin.service" 2>/dev/null
  "target/release/$bin" --config /dev/null install --bin "/usr/local/bin/$bin" --print config \
    > "dist/$bin.toml.example" 2>/dev/null
done
(cd dist && rm -f SHA256SUMS && sha256sum -- agent-* gateway-* *.service *.toml.example > SHA256SUMS)
echo "dist/:"
(cd dist && ls -l && echo && cat SHA256SUMS)
