#!/usr/bin/env bash
# Start/stop cycles: 1000 NULL→PLAYING→NULL cycles of a live A/V pipeline through kvssink with
# data flowing into the local KVS endpoint (stopped at random points, mostly mid-fragment), then
# 1000 kvssink create/destroy, in one process. Prints RSS, threads and open fds before, after the
# first cycle, after 100 and at the end; exits non-zero when they are not flat, on an error
# message, or when a state change hangs. See examples/cycles.rs.
#
# usage: scripts/cycles.sh [--cycles N] [--elements N] [--seed S] [--profile demo|release|dev]
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE=demo
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) PROFILE="$2"; shift 2 ;;
    --profile=*) PROFILE="${1#--profile=}"; shift ;;
    *) ARGS+=("$1"); shift ;;
  esac
done

if [ -z "${SOAK_NO_DEPS:-}" ]; then
  # shellcheck source=scripts/lib/system-deps.sh
  . scripts/lib/system-deps.sh
  ensure_packages "${KVSSINK_BUILD_PACKAGES[@]}" "${KVSSINK_RUNTIME_PACKAGES[@]}"
  ensure_rust
fi
unset GST_PLUGIN_PATH GST_DEBUG
export GST_REGISTRY="${CARGO_TARGET_DIR:-$PWD/target}/gst-registry-soak.bin"

echo "==> building (profile $PROFILE)" >&2
cargo build --profile "$PROFILE" --locked --example cycles --bin kvs_local_endpoint --quiet
dir="$PROFILE"
[ "$PROFILE" = dev ] && dir=debug
bin="${CARGO_TARGET_DIR:-target}/$dir"

WORK="$(mktemp -d /tmp/kvssink-cycles.XXXXXX)"
LOG="$WORK/endpoint.log"
# The endpoint is a separate process: its threads and descriptors are not counted.
"$bin/kvs_local_endpoint" --storage-dir "$WORK/storage" --stream cycles --stream cycles-element >"$LOG" 2>&1 &
ENDPOINT_PID=$!
trap 'kill $ENDPOINT_PID 2>/dev/null || true; rm -rf "$WORK"' EXIT
for _ in $(seq 100); do
  grep -q '^export CONTROL_PLANE_URI=' "$LOG" && break
  sleep 0.1
done
if ! grep -q '^export CONTROL_PLANE_URI=' "$LOG"; then
  echo "error: the local endpoint did not start:" >&2
  cat "$LOG" >&2
  exit 1
fi
eval "$(grep '^export ' "$LOG")"
"$bin/examples/cycles" "${ARGS[@]}"
