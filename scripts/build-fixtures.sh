#!/usr/bin/env bash
# Builds the Wasm fixture programs (fixtures/) for wasm32-wasip1 and
# wasm32-wasip2, and wh-cmd for this machine, statically linked (the
# benchmarks run the same program natively under runc); with --big, also
# wh-big, the benchmarks' large module.
# Installs the rustup targets when missing.
set -euo pipefail
cd "$(dirname "$0")/../fixtures"
# The harness reads the fixtures from fixtures/target, whatever
# CARGO_TARGET_DIR says for the main workspace.
export CARGO_TARGET_DIR="$PWD/target"
for t in wasm32-wasip1 wasm32-wasip2; do
  rustup target list --installed | grep -qx "$t" || rustup target add "$t"
done
cargo build --quiet --release --target wasm32-wasip1 -p wh-cmd
cargo build --quiet --release --target wasm32-wasip2 -p wh-cmd -p wh-http
host="$(uname -m)-unknown-linux-gnu"
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --quiet --release --target "$host" -p wh-cmd
# The large module of benches/aot.rs, only when asked for (not in CI).
if [ "${1:-}" = "--big" ]; then
  cargo build --quiet --profile big --target wasm32-wasip1 -p wh-big
fi
