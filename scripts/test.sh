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
echo "== cargo test"
cargo test --workspace 2>&1 | tee target/test-output.txt
# Guard against a run that executed nothing (e.g. a filter typo).
grep -q "test result: ok. [1-9]" target/test-output.txt
