#!/usr/bin/env bash
# End-to-end benchmark: 1 and 8 realtime 1080p30 streams through kvssink into the local KVS
# endpoint; prints CPU per stream-minute, peak RSS, frame latency and fragment latency (see
# examples/bench_streams.rs for the method, docs/benchmarks.md for results).
#
#   scripts/bench-streams.sh                       # defaults: --streams 1,8 --seconds 60
#   scripts/bench-streams.sh --streams 4 --seconds 30 --no-baseline
#   scripts/bench-streams.sh --uplink-bps 6300000 --streams 1   # a slow uplink per connection
#
# Arguments go to bench_streams (--help lists them); --uplink-bps N also limits how fast the
# endpoint reads each PutMedia connection (a device's uplink). Builds the plugin and the benchmark with
# the release profile (what users ship) and the endpoint with the demo profile; the endpoint
# runs as its own process on 127.0.0.1, so its CPU is not counted in the element's figures.
# Honours CARGO_TARGET_DIR. Exits non-zero on any error, dropped fragment or ERROR ACK.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/system-deps.sh
. scripts/lib/system-deps.sh

ensure_packages "${KVSSINK_BUILD_PACKAGES[@]}" "${KVSSINK_RUNTIME_PACKAGES[@]}"
ensure_rust

TARGET="${CARGO_TARGET_DIR:-target}"
echo "==> building the plugin and the benchmark (profile release) and the local endpoint (profile demo)"
cargo build --release --locked --lib --example bench_streams --quiet
cargo build --profile demo --locked --bin kvs_local_endpoint --quiet

WORK="$(mktemp -d /tmp/kvssink-bench.XXXXXX)"
LOG="$WORK/endpoint.log"
ENDPOINT_PID=""
cleanup() {
  if [ -n "$ENDPOINT_PID" ]; then
    kill "$ENDPOINT_PID" 2>/dev/null || true
    wait "$ENDPOINT_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

ENDPOINT_ARGS=(--record-frame-arrivals)
ARGS=("$@")
for ((i = 0; i < ${#ARGS[@]}; i++)); do
  if [ "${ARGS[$i]}" = "--uplink-bps" ] && [ $((i + 1)) -lt ${#ARGS[@]} ]; then
    ENDPOINT_ARGS+=(--uplink-bps "${ARGS[$((i + 1))]}")
  fi
done

# Stored fragments are not needed: they go to the temporary directory, removed at exit.
"$TARGET/demo/kvs_local_endpoint" --bind 127.0.0.1 --storage-dir "$WORK/storage" \
  "${ENDPOINT_ARGS[@]}" >"$LOG" 2>&1 &
ENDPOINT_PID=$!
for _ in $(seq 100); do
  grep -q '^export CONTROL_PLANE_URI=' "$LOG" && break
  sleep 0.1
done
if ! grep -q '^export CONTROL_PLANE_URI=' "$LOG"; then
  echo "error: the local endpoint did not start:" >&2
  grep -v '^export ' "$LOG" >&2 || true
  exit 1
fi
# The endpoint's environment (URL, its local credentials, region), not echoed.
eval "$(grep '^export ' "$LOG")"
echo "==> local KVS endpoint at $CONTROL_PLANE_URI (pid $ENDPOINT_PID)"

echo "==> machine: $(nproc) CPU(s), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), \
$(awk '/MemTotal/ {printf "%.0f GiB RAM", $2/1048576}' /proc/meminfo), Linux $(uname -r), \
$(gst-launch-1.0 --gst-version 2>/dev/null | head -1), $(rustc --version)"

"$TARGET/release/examples/bench_streams" --endpoint-pid "$ENDPOINT_PID" "$@"
