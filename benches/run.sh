#!/usr/bin/env bash
# Runs a benchmark of benches/ (release build), e.g. `bash benches/run.sh delegation`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/prepare.sh benches/run.sh
cargo build --release --quiet -p wasmhybrid-shim
cargo bench --quiet -p wasmhybrid-benches --bench "${1:-delegation}"
