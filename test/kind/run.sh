#!/usr/bin/env bash
# End-to-end test on a kind cluster: builds the node-setup image (installer
# plus shim), creates a cluster, installs wasmhybrid with the node-setup
# DaemonSet, applies the RuntimeClass and the examples, and checks each:
# the Wasm Job's log, the Wasm HTTP Deployment through its Service, the
# heavy-I/O Deployment under runc, the mixed pod. Deletes the cluster at
# the end (KEEP_CLUSTER=1 keeps it).
#
# Needs Docker (a running daemon), kind and kubectl, and internet access
# for the base images (rust, debian, postgres, busybox, pause). Where they
# are missing it says so and exits 77 (skipped), not 0 or 1.
set -euo pipefail
cd "$(dirname "$0")/../.."

SKIP=77
CLUSTER=wasmhybrid-test
IMAGE=localhost/wasmhybrid/node-setup:dev

missing=()
for tool in docker kind kubectl; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "SKIP: the kind test needs Docker, kind and kubectl; missing: ${missing[*]}" >&2
  echo "      (install them, then run: bash test/kind/run.sh)" >&2
  exit "$SKIP"
fi
if ! docker info >/dev/null 2>&1; then
  echo "SKIP: the kind test needs a running Docker daemon (docker info failed)" >&2
  exit "$SKIP"
fi

work=$(mktemp -d)
cleanup() {
  if [ "${KEEP_CLUSTER:-0}" != 1 ]; then kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

step() { echo "== $*"; }
fail() { echo "FAIL: $*" >&2; kubectl get pods -A -o wide >&2 || true; exit 1; }

step "build the node-setup image and the example images"
docker build -f node-setup/Dockerfile -t "$IMAGE" .
bash scripts/build-fixtures.sh
cargo run --quiet -p wasmhybrid-harness --bin wasmhybrid-images -- "$work/images"

step "create the cluster"
kind create cluster --config test/kind/kind-config.yaml --wait 120s
kind load docker-image --name "$CLUSTER" "$IMAGE"
for archive in "$work"/images/*.tar; do
  kind load image-archive --name "$CLUSTER" "$archive"
done

step "install wasmhybrid with the node-setup DaemonSet"
sed -e "s#registry.example.com/wasmhybrid/node-setup:0.1.0#$IMAGE#" \
  node-setup/deploy/daemonset.yaml >"$work/daemonset.yaml"
kubectl apply -f "$work/daemonset.yaml"
kubectl -n kube-system rollout status daemonset/wasmhybrid-node-setup --timeout=300s
kubectl wait node --all --for=jsonpath='{.metadata.labels.wasmhybrid\.io/ready}'=true --timeout=120s \
  || fail "nodes not labelled wasmhybrid.io/ready=true"

step "apply the RuntimeClass and the examples"
kubectl apply -f runtimeclass/runtimeclass.yaml
for f in runtimeclass/examples/*.yaml; do
  sed -e 's#registry.example.com/wasmhybrid/wh-cmd:0.1.0#localhost/wasmhybrid/wh-cmd:dev#' \
      -e 's#registry.example.com/wasmhybrid/wh-http:0.1.0#localhost/wasmhybrid/wh-http:dev#' \
      -e 's#^\(\s*image: localhost/.*\)$#\1\n          imagePullPolicy: Never#' \
      "$f" >"$work/$(basename "$f")"
done
kubectl apply -f "$work/wasm-job.yaml" -f "$work/wasm-http.yaml" -f "$work/heavy-io.yaml" -f "$work/mixed-pod.yaml"

step "Wasm Job"
kubectl wait --for=condition=complete job/wasm-hello --timeout=180s || fail "the Wasm Job did not complete"
kubectl logs job/wasm-hello | tee "$work/job.log"
grep -q "hi from a Wasm Job" "$work/job.log" || fail "the Job's log lacks its greeting"

step "Wasm HTTP Deployment through its Service"
kubectl rollout status deployment/wasm-http --timeout=180s
kubectl port-forward service/wasm-http 18080:80 >"$work/pf.log" 2>&1 &
pf=$!
ok=0
for _ in $(seq 1 30); do
  if body=$(curl -fsS http://127.0.0.1:18080/ 2>/dev/null); then ok=1; break; fi
  sleep 1
done
kill "$pf" 2>/dev/null || true
[ "$ok" = 1 ] || fail "no answer through service/wasm-http"
echo "$body"

step "heavy-I/O Deployment (runc)"
kubectl rollout status deployment/heavy-io --timeout=300s || fail "the heavy-I/O Deployment is not available"

step "mixed pod"
kubectl wait --for=condition=Ready pod/mixed --timeout=180s || fail "the mixed pod is not ready"

echo "kind test passed"
