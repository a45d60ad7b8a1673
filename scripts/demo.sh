#!/usr/bin/env bash
# The demo: start the project's local KVS endpoint, stream a live test pipeline (H.264 video +
# AAC audio, ~10 s) through kvssink into it with gst-launch-1.0, and show what arrived; then
# print the endpoint's page and an `ffplay` line for an HLS session (DEMO_KEEP=1: keep serving).
# Works on a fresh Debian 12 machine as root: installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/system-deps.sh
. scripts/lib/system-deps.sh

SECONDS_TO_STREAM="${DEMO_SECONDS:-10}"
STREAM="${DEMO_STREAM:-kvssink-demo}"

ensure_packages "${KVSSINK_BUILD_PACKAGES[@]}" "${KVSSINK_RUNTIME_PACKAGES[@]}" ffmpeg curl
ensure_rust

echo "==> building the plugin and the local endpoint (profile demo: optimized, no LTO)"
cargo build --profile demo --locked --lib --quiet
cargo build --profile demo --locked --bin kvs_local_endpoint --quiet

WORK="$(mktemp -d /tmp/kvssink-demo.XXXXXX)"
LOG="$WORK/endpoint.log"
target/demo/kvs_local_endpoint --storage-dir "$WORK/storage" >"$LOG" 2>&1 &
ENDPOINT_PID=$!
trap 'kill $ENDPOINT_PID 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  grep -q '^export CONTROL_PLANE_URI=' "$LOG" && break
  sleep 0.1
done
if ! grep -q '^export CONTROL_PLANE_URI=' "$LOG"; then
  echo "error: the local endpoint did not start:" >&2
  cat "$LOG" >&2
  exit 1
fi
# The endpoint prints the environment that points kvssink at it.
eval "$(grep '^export ' "$LOG")"
echo "==> local KVS endpoint at $CONTROL_PLANE_URI"
echo "    page (streams, fragments, ACKs, live player): $CONTROL_PLANE_URI/_local/?stream=$STREAM"

FRAMES=$((SECONDS_TO_STREAM * 30))
AUDIO_BUFFERS=$((SECONDS_TO_STREAM * 44100 / 1024))
echo "==> streaming ${SECONDS_TO_STREAM} s of live video + audio to stream '$STREAM'"
set -x
GST_PLUGIN_PATH="$PWD/target/demo" gst-launch-1.0 -e \
  videotestsrc is-live=true num-buffers=$FRAMES ! video/x-raw,format=I420,width=640,height=480,framerate=30/1 \
  ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 bframes=0 ! h264parse ! queue \
  ! kvssink name=sink stream-name="$STREAM" \
  audiotestsrc is-live=true num-buffers=$AUDIO_BUFFERS samplesperbuffer=1024 ! audio/x-raw,rate=44100,channels=2 \
  ! avenc_aac ! aacparse ! queue ! sink.
{ set +x; } 2>/dev/null

echo "==> what arrived"
curl -s "$CONTROL_PLANE_URI/_local/streams/$STREAM/fragments" >"$WORK/fragments.json"
python3 - "$WORK/fragments.json" <<'PY'
import json, sys
frags = json.load(open(sys.argv[1]))
if isinstance(frags, dict):
    frags = frags.get("fragments", frags.get("Fragments", []))
persisted = [f for f in frags if str(f.get("state", "")).lower() == "persisted"]
tracks = {}
for f in persisted:
    for t, n in (f.get("frames_per_track") or {}).items():
        tracks[t] = tracks.get(t, 0) + n
print(f"fragments persisted: {len(persisted)} of {len(frags)}")
for t in sorted(tracks):
    kind = "video" if str(t) == "1" else "audio"
    print(f"frames on track {t} ({kind}): {tracks[t]}")
PY
MKV="$WORK/storage/$STREAM.mkv"
if [ ! -f "$MKV" ]; then
  MKV="$(find "$WORK/storage" -name '*.mkv' | head -1)"
fi
echo "stored stream: $MKV"
echo "==> decode check (ffmpeg)"
if ffmpeg -v error -i "$MKV" -enc_time_base -1 -f null - ; then
  ffprobe -v error -show_entries stream=index,codec_name,width,height,sample_rate -of compact "$MKV"
  echo "decoded without errors; play it with: gst-play-1.0 $MKV"
else
  echo "error: the stored stream did not decode" >&2
  exit 1
fi

echo "==> HLS (an ON_DEMAND session over what was stored)"
HLS_URL="$(curl -s "$CONTROL_PLANE_URI/_local/streams/$STREAM/hls?PlaybackMode=ON_DEMAND" \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["HLSStreamingSessionURL"])')"
if ffmpeg -v error -i "$HLS_URL" -enc_time_base -1 -f null - ; then
  echo "decoded without errors; while the endpoint runs, play it with:"
  echo "  ffplay '$HLS_URL'"
  echo "  page: $CONTROL_PLANE_URI/_local/?stream=$STREAM"
else
  echo "error: the HLS session did not decode" >&2
  exit 1
fi
if [ "${DEMO_KEEP:-0}" = 1 ]; then
  echo "==> the endpoint keeps serving (DEMO_KEEP=1); Ctrl-C to stop"
  wait "$ENDPOINT_PID"
else
  echo "(the endpoint stops now; DEMO_KEEP=1 keeps it serving for ffplay and the page)"
fi
