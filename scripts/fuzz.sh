#!/usr/bin/env bash
# Fuzzing: builds the cargo-fuzz targets in fuzz/ and runs each for SECONDS (default 60).
#   bash scripts/fuzz.sh [SECONDS]
# Environment: FUZZ_TARGETS="a b" runs only those targets.
# Installs what it needs (the nightly toolchain, cargo-fuzz, the GStreamer headers the plugin
# crate links against). Everything runs under `nice -n 19`. New corpus entries go to
# fuzz/corpus/<target> (not committed; the committed seeds are fuzz/seeds/<target>), logs to
# fuzz/target/fuzz-logs/<target>.log, crashing inputs to fuzz/artifacts/<target>/.
# Exit status: non-zero if any target crashed (or did not build).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/system-deps.sh
. scripts/lib/system-deps.sh

SECONDS_PER_TARGET="${1:-60}"
case "$SECONDS_PER_TARGET" in
  '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;;
esac

ensure_packages "${KVSSINK_BUILD_PACKAGES[@]}"
ensure_rust
if ! rustup toolchain list | grep -q '^nightly'; then
  echo "==> installing the nightly toolchain (cargo-fuzz needs -Z sanitizer flags)"
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz"
  nice -n 19 cargo install cargo-fuzz --locked
fi

echo "==> cargo +nightly fuzz build (debug assertions on, AddressSanitizer)"
nice -n 19 cargo +nightly fuzz build

# Larger inputs where the format needs room (whole MKV fragments, several access units).
max_len() {
  case "$1" in
    local_mkv) echo 16384 ;;
    annexb | ack_parser) echo 8192 ;;
    *) echo 4096 ;;
  esac
}

logs=fuzz/target/fuzz-logs
mkdir -p "$logs"
targets="${FUZZ_TARGETS:-$(cargo +nightly fuzz list)}"
failed=()
summary=()
for t in $targets; do
  mkdir -p "fuzz/corpus/$t"
  echo "==> fuzzing $t for ${SECONDS_PER_TARGET}s"
  status=0
  nice -n 19 cargo +nightly fuzz run "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
    -max_total_time="$SECONDS_PER_TARGET" -max_len="$(max_len "$t")" -timeout=25 \
    -print_final_stats=1 >"$logs/$t.log" 2>&1 || status=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$t.log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$logs/$t.log" | tail -1 | cut -d' ' -f2)
  if [ "$status" -ne 0 ]; then
    failed+=("$t")
    summary+=("$t: FAILED (exit $status), see $logs/$t.log and fuzz/artifacts/$t/")
    grep -E 'panicked at|ERROR: (libFuzzer|AddressSanitizer)|^SUMMARY' "$logs/$t.log" | head -5 >&2 || true
  else
    summary+=("$t: ok, ${execs:-?} executions, coverage ${cov:-?} edges")
  fi
done

echo "==> fuzzing summary (${SECONDS_PER_TARGET}s per target)"
printf '  %s\n' "${summary[@]}"
if [ ${#failed[@]} -ne 0 ]; then
  echo "error: ${#failed[@]} target(s) failed: ${failed[*]}" >&2
  exit 1
fi
