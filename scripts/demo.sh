#!/usr/bin/env bash
# The main job (README): builds the shim (release), starts a private
# containerd, imports the demo images built from fixtures/, runs a Wasm
# command in each image shape and a Wasm HTTP service (with a request
# against it), and prints each result with its start-to-exit time.
# Pass --address /run/containerd/containerd.sock to use a running
# containerd that already has the shim installed.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/prepare.sh scripts/demo.sh
# The shim as shipped (target/shim/release), then the demo driver.
bash scripts/build-shim.sh --release >/dev/null
cargo build --release --quiet -p wasmhybrid-harness
exec ./target/release/wasmhybrid-demo "$@"
