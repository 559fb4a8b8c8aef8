#!/usr/bin/env bash
# Installs what building and testing wasmhybrid needs on Debian 12, only
# when it is missing: containerd and runc (the real runtime parts the tests
# drive), the CNI plugins and iproute2 (the CRI tests' pod network),
# bsdutils' script (a terminal for `ctr run -t`),
# protobuf-compiler and libseccomp-dev (runwasi's crates build with
# them), the wasm32 Rust targets for the fixtures, and the musl target the
# shim's launcher is built for (scripts/build-shim.sh).
set -euo pipefail

need=()
command -v containerd >/dev/null || need+=(containerd)
command -v runc >/dev/null || need+=(runc)
command -v protoc >/dev/null || need+=(protobuf-compiler)
dpkg -s libseccomp-dev >/dev/null 2>&1 || need+=(libseccomp-dev)
command -v pkg-config >/dev/null || need+=(pkg-config)
[ -x /bin/busybox ] || need+=(busybox-static)
[ -x /usr/lib/cni/bridge ] || [ -x /opt/cni/bin/bridge ] || need+=(containernetworking-plugins)
command -v ip >/dev/null || need+=(iproute2)
# `script` gives `ctr run -t` a terminal in the ctr test.
command -v script >/dev/null || need+=(bsdutils)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing packages: ${need[*]}; run as root or: sudo apt-get install ${need[*]}" >&2
    exit 1
  fi
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
for t in wasm32-wasip1 wasm32-wasip2 "$(uname -m)-unknown-linux-musl"; do
  rustup target list --installed | grep -qx "$t" || rustup target add "$t"
done
