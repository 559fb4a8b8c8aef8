#!/usr/bin/env bash
# Runs a benchmark of benches/ (release build), e.g. `bash benches/run.sh delegation`
# or `bash benches/run.sh aot` (which also builds the large fixture, wh-big).
# With WASMHYBRID_BENCH_SHIM_DIR set, that directory's shim is measured and
# none is built.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/prepare.sh benches/run.sh
if [ -z "${WASMHYBRID_BENCH_SHIM_DIR:-}" ]; then
  # The shim as shipped, into target/shim/release.
  bash scripts/build-shim.sh --release >/dev/null
fi
if [ "${1:-delegation}" = aot ]; then bash scripts/build-fixtures.sh --big; fi
cargo bench --quiet -p wasmhybrid-benches --bench "${1:-delegation}"
