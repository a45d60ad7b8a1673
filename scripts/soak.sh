#!/usr/bin/env bash
# Soak: a live A/V pipeline (320x240 H.264 + AAC) through kvssink into the local KVS endpoint for
# N minutes while the endpoint injects a random fault every ~20 s (connection reset/close
# mid-fragment, 5–20 s stalls, ERROR ACKs of each class, control-plane 5xx and throttling,
# expiring credentials). At the end it compares, frame by frame, what the endpoint persisted with
# what entered the sink; the last line is
#   soak: <N> frames in, <M> persisted, <L> lost, <D> duplicated, <F> faults, RSS start <A> MiB end <B> MiB
# and the exit status is non-zero on any unreported loss, duplicate, error, crash, hang or RSS
# growth > 10 MiB. See examples/soak.rs for the details.
#
# usage: scripts/soak.sh [--minutes N] [--seed S] [--profile demo|release|dev] [soak options…]
#        scripts/soak.sh --help       (the soak's own options)
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

# The run must not pick up a developer's GStreamer debug settings or plugins.
unset GST_PLUGIN_PATH
export GST_REGISTRY="${CARGO_TARGET_DIR:-$PWD/target}/gst-registry-soak.bin"

echo "==> building the soak (profile $PROFILE)" >&2
cargo build --profile "$PROFILE" --locked --example soak --quiet
dir="$PROFILE"
[ "$PROFILE" = dev ] && dir=debug
exec "${CARGO_TARGET_DIR:-target}/$dir/examples/soak" "${ARGS[@]}"
