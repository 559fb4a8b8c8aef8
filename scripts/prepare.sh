#!/usr/bin/env bash
# Shared first step of scripts/demo.sh and scripts/test.sh: checks for root
# (containerd and runc need it), installs what is missing and builds the
# Wasm fixtures.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "${1:-this script} needs root: it runs containerd and runc" >&2
  exit 1
fi
bash scripts/ci-deps.sh
bash scripts/build-fixtures.sh
