#!/usr/bin/env bash
# The test command: everything CI checks (`.ci/run` calls exactly this).
# Works on a fresh Debian 12 machine as root: installs the system packages it needs when they
# are missing, then runs rustfmt, clippy and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/system-deps.sh
. scripts/lib/system-deps.sh

ensure_packages "${KVSSINK_BUILD_PACKAGES[@]}" "${KVSSINK_RUNTIME_PACKAGES[@]}" "${KVSSINK_TEST_PACKAGES[@]}"
ensure_rust

# Tests must not pick up a developer's GStreamer debug settings or a stale registry.
unset GST_DEBUG GST_PLUGIN_PATH
# No test may ask the EC2 instance-metadata address for credentials (the test binaries set this
# themselves too, see tests/common/no_instance_metadata.rs).
export AWS_EC2_METADATA_DISABLED=true
export GST_REGISTRY="${CARGO_TARGET_DIR:-$PWD/target}/gst-registry.bin"

echo "==> cargo fmt --check"
cargo fmt --all --check
echo "==> cargo clippy"
cargo clippy --all-targets --all-features --locked -- -D warnings
echo "==> cargo build (the plugin .so the tests load)"
cargo build --lib --locked
if cargo nextest --version >/dev/null 2>&1; then
  echo "==> cargo nextest run"
  cargo nextest run --all-features --locked --profile ci
else
  # Machines without cargo-nextest: building it from source would cost more than it saves.
  # One test at a time, as nextest isolates them: pipeline tests measure their own process.
  echo "==> cargo test (cargo-nextest is not installed)"
  cargo test --all-features --locked -- --test-threads=1
fi

# A one-minute soak (random faults against the local endpoint, every frame accounted for; see
# README "Hardening"): ~2 min with the dev build the tests already made. The 10/30-minute soak
# and the 1000 start/stop cycles (scripts/cycles.sh) are run by hand.
echo "==> soak, 1 minute"
SOAK_NO_DEPS=1 bash scripts/soak.sh --profile dev --minutes 1 --fault-interval-s 8
