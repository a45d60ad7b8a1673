#!/usr/bin/python3
"""A stand-in RTSP camera for the tests: GstRtspServer serving live H.264 video and, optionally,
A-law or AAC audio at rtsp://127.0.0.1:PORT/cam.

Run it with /usr/bin/python3 (Debian's python3-gi, python3-gst-1.0 and
gir1.2-gst-rtsp-server-1.0). It prints one line `READY rtsp://127.0.0.1:PORT/cam` on stdout once
it listens (PORT 0 picks a free port), then serves until it is killed. Every client gets its own
media, so timestamps start anew for each connection (and for a restarted server).
"""

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def media_launch(args):
    video = (
        "videotestsrc is-live=true pattern=ball "
        f"! video/x-raw,format=I420,width={args.width},height={args.height},framerate={args.fps}/1 "
        "! x264enc tune=zerolatency speed-preset=ultrafast bframes=0 "
        f"key-int-max={args.key_int} "
        "! rtph264pay name=pay0 pt=96 config-interval=-1"
    )
    if args.audio == "alaw":
        audio = (
            "audiotestsrc is-live=true wave=sine samplesperbuffer=160 "
            "! audio/x-raw,rate=8000,channels=1 ! alawenc ! rtppcmapay name=pay1 pt=8"
        )
    elif args.audio == "aac":
        audio = (
            "audiotestsrc is-live=true wave=sine samplesperbuffer=1024 "
            "! audio/x-raw,rate=16000,channels=1 ! avenc_aac ! aacparse "
            "! rtpmp4gpay name=pay1 pt=97"
        )
    else:
        audio = ""
    return f"( {video} {audio} )"


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--audio", choices=["none", "alaw", "aac"], default="none")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--fps", type=int, default=15)
    parser.add_argument("--key-int", type=int, default=15)
    args = parser.parse_args()

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(media_launch(args))
    factory.set_shared(False)
    server.get_mount_points().add_factory("/cam", factory)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{args.port}", file=sys.stderr)
        sys.exit(1)

    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    print(f"READY rtsp://127.0.0.1:{server.get_bound_port()}/cam", flush=True)
    loop.run()


if __name__ == "__main__":
    main()
