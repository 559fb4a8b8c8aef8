#!/usr/bin/env bash
# Builds what a node installs, into target/shim/<profile>/ (debug, or
# release with --release):
#   containerd-shim-wasmhybrid-v1  the launcher containerd runs for every
#                                  container's start and delete: static,
#                                  for musl (no dynamic loader, no glibc
#                                  start-up), without the daemon feature;
#   wasmhybrid                     the shim daemon and the operator tool
#                                  (Wasmtime; glibc, libseccomp).
# The launcher starts the daemon binary from its own directory, so the two
# are always installed side by side. Prints the directory (absolute).
# Honors CARGO_TARGET_DIR. Installs the musl Rust target when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=debug
flags=()
if [ "${1:-}" = "--release" ]; then
  profile=release
  flags=(--release)
fi
musl="$(uname -m)-unknown-linux-musl"
rustup target list --installed | grep -qx "$musl" || rustup target add "$musl" >&2
target="${CARGO_TARGET_DIR:-target}"
cargo build --quiet "${flags[@]}" -p wasmhybrid-shim --bin wasmhybrid >&2
cargo build --quiet "${flags[@]}" -p wasmhybrid-shim --no-default-features \
  --bin containerd-shim-wasmhybrid-v1 --target "$musl" >&2
mkdir -p "$target/shim/$profile"
out="$(realpath "$target/shim/$profile")"
install -m 0755 "$target/$musl/$profile/containerd-shim-wasmhybrid-v1" "$out/"
install -m 0755 "$target/$profile/wasmhybrid" "$out/"
echo "$out"
