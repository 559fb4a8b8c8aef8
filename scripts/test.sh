#!/usr/bin/env bash
# The test command (README, .ci/run): installs what is missing, builds the
# Wasm fixtures, checks formatting and lints, then runs every test: unit
# tests and the containerd integration tests, which start their own private
# containerd and need root. Under CI=true nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/prepare.sh scripts/test.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== scripts/build-shim.sh"
# The shim as shipped (static launcher + daemon binary), which the
# containerd tests run.
WASMHYBRID_SHIM_DIR="$(bash scripts/build-shim.sh)"
export WASMHYBRID_SHIM_DIR
echo "shim: $WASMHYBRID_SHIM_DIR"
echo "== cargo test"
# Unit and integration tests; not the benchmarks (benches/run.sh runs those).
cargo test --workspace --lib --bins --tests 2>&1 | tee target/test-output.txt
# One closing line for the whole run; a run that executed nothing fails.
awk '/^test result:/ { p += $4; f += $6 } END {
  printf "%d passed, %d failed\n", p, f
  exit (p == 0 || f > 0)
}' target/test-output.txt
