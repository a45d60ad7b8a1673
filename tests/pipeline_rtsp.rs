//! RTSP cameras into kvssink, against a local RTSP server (`tests/support/rtsp_server.py`, a
//! GstRtspServer run by Debian's python3) and the local KVS endpoint: H.264 with A-law or AAC
//! audio over UDP and TCP, our users' rtspsrc lines unchanged, and the `rtsp_gateway` example
//! surviving a camera that is killed and restarted mid-stream (a gap and a timestamp restart)
//! while the other camera goes on untouched.

mod common;
use common::examples;
use common::mkv_check;
use common::pipeline;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use gst::prelude::*;
use kvs_local_endpoint::{Config, FragmentState, LocalEndpoint};
use pipeline::{RunOptions, run, stored_frames};

/// A running `rtsp_server.py`; killed (SIGKILL, as a camera losing power) when dropped.
struct RtspServer {
    child: Child,
    url: String,
    port: u16,
}

impl RtspServer {
    /// Starts a server with `audio` (none, alaw, aac) on `port` (0: a free one).
    fn start(audio: &str, port: u16) -> RtspServer {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/rtsp_server.py");
        let mut child = Command::new("/usr/bin/python3")
            .arg(script)
            .args(["--audio", audio, "--port", &port.to_string()])
            .env_remove("GST_DEBUG")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("/usr/bin/python3 runs");
        // The READY line, read on a thread so the wait is bounded.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!("the RTSP server did not start within 20 s");
            }
        };
        let url = line
            .trim()
            .strip_prefix("READY ")
            .unwrap_or_else(|| {
                panic!("RTSP server: '{line}' (are gir1.2-gst-rtsp-server-1.0 and python3-gst-1.0 installed?)")
            })
            .to_owned();
        let port = url
            .rsplit(':')
            .next()
            .and_then(|p| p.split('/').next())
            .and_then(|p| p.parse().ok())
            .unwrap();
        RtspServer { child, url, port }
    }
}

impl Drop for RtspServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn endpoint() -> LocalEndpoint {
    LocalEndpoint::start(Config::default()).expect("the local endpoint starts")
}

/// Runs `line` (kvssink named `sink`, `{url}` replaced) until `frames` video buffers entered
/// kvssink, then ends it with EOS as `gst-launch-1.0 -e` does on Ctrl-C, and checks the upload:
/// frames per track stored = entered, all persisted, the stored stream decodes.
fn rtsp_upload(
    server: &RtspServer,
    stream: &str,
    line: &str,
    frames: u64,
    decode: &[(&str, &str)],
) {
    let ep = endpoint();
    let description = line.replace("{url}", &server.url);
    let run = run(
        &ep,
        &description,
        Duration::from_secs(60),
        RunOptions {
            on_playing: Some(Box::new(move |p: &gst::Pipeline| {
                let pad = p.by_name("sink").unwrap().static_pad("video_0").unwrap();
                let weak = p.downgrade();
                let count = Arc::new(AtomicU64::new(0));
                let sent = Arc::new(AtomicBool::new(false));
                pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
                    if count.fetch_add(1, Ordering::SeqCst) + 1 >= frames
                        && !sent.swap(true, Ordering::SeqCst)
                        && let Some(p) = weak.upgrade()
                    {
                        // Not from the streaming thread: EOS goes to the sources.
                        std::thread::spawn(move || p.send_event(gst::event::Eos::new()));
                    }
                    gst::PadProbeReturn::Ok
                });
            })),
            ..Default::default()
        },
    );
    assert!(run.errors.is_empty(), "{stream}: {:?}", run.errors);
    assert!(run.eos, "{stream}: no EOS after {:?}", run.elapsed);
    assert!(run.dropped.is_empty(), "{stream}: {:?}", run.dropped);
    let sent: Vec<u64> = ["video_0", "audio_0"]
        .iter()
        .filter_map(|p| run.frames.get(*p).copied())
        .collect();
    assert!(sent[0] >= frames, "{stream}: {:?}", run.frames);
    assert_eq!(sent.len(), decode.len(), "{stream}: {:?}", run.frames);
    assert!(sent.iter().all(|&n| n > 0), "{stream}: {:?}", run.frames);
    let stored = stored_frames(&ep, stream);
    assert_eq!(
        stored.values().copied().collect::<Vec<_>>(),
        sent,
        "{stream}: frames stored per track vs. frames that entered kvssink"
    );
    let fragments = ep.fragments(stream);
    assert!(fragments.len() >= 2, "{stream}: {fragments:?}");
    assert!(
        fragments
            .iter()
            .all(|f| f.state == FragmentState::Persisted),
        "{stream}: {fragments:?}"
    );
    let expected: Vec<usize> = sent.iter().map(|&n| n as usize).collect();
    let mkv = std::fs::read(ep.stored_mkv_path(stream).unwrap()).unwrap();
    mkv_check::check_file(stream, &mkv, &expected, decode);
}

const VIDEO: (&str, &str) = ("video_0", "h264parse ! avdec_h264");
const AAC: (&str, &str) = ("audio_0", "aacparse ! avdec_aac");
const ALAW: (&str, &str) = ("audio_0", "alawdec");

fn direct(protocols: &str, audio_depay: &str, stream: &str) -> String {
    format!(
        "rtspsrc location={{url}} protocols={protocols} latency=200 name=src \
         src. ! queue ! rtph264depay ! h264parse ! kvssink name=sink stream-name={stream} \
         src. ! queue ! {audio_depay} ! sink."
    )
}

#[test]
fn rtsp_h264_alaw_over_udp() {
    let server = RtspServer::start("alaw", 0);
    let line = direct("udp", "rtppcmadepay", "alaw-udp");
    rtsp_upload(&server, "alaw-udp", &line, 45, &[VIDEO, ALAW]);
}

#[test]
fn rtsp_h264_alaw_over_tcp() {
    let server = RtspServer::start("alaw", 0);
    let line = direct("tcp", "rtppcmadepay", "alaw-tcp");
    rtsp_upload(&server, "alaw-tcp", &line, 45, &[VIDEO, ALAW]);
}

#[test]
fn rtsp_h264_aac_over_udp() {
    let server = RtspServer::start("aac", 0);
    let line = direct("udp", "rtpmp4gdepay ! aacparse", "aac-udp");
    rtsp_upload(&server, "aac-udp", &line, 45, &[VIDEO, AAC]);
}

#[test]
fn rtsp_h264_aac_over_tcp() {
    let server = RtspServer::start("aac", 0);
    let line = direct("tcp", "rtpmp4gdepay ! aacparse", "aac-tcp");
    rtsp_upload(&server, "aac-tcp", &line, 45, &[VIDEO, AAC]);
}

/// A user's line: TCP, the camera's audio (A-law here) decoded and re-encoded to AAC.
#[test]
fn users_rtspsrc_tcp_with_decodebin_and_voaacenc() {
    let server = RtspServer::start("alaw", 0);
    let line = "rtspsrc location={url} protocols=tcp name=src \
                src. ! queue ! rtph264depay ! h264parse ! kvssink name=sink stream-name=users-rtsp-transcode \
                src. ! queue ! decodebin ! audioconvert ! voaacenc ! audio/mpeg,stream-format=raw ! sink.";
    rtsp_upload(&server, "users-rtsp-transcode", line, 45, &[VIDEO, AAC]);
}

/// A user's line from the reference's documentation, unchanged: depayloaded AVC straight into
/// kvssink. rtph264depay's caps carry no width and height, which the pad template (the
/// reference's, kept identical) names; the pads accept caps that intersect the template and the
/// size comes from the SPS.
#[test]
fn users_rtspsrc_avc_caps_and_storage_size() {
    let server = RtspServer::start("none", 0);
    let line = "rtspsrc location={url} ! rtph264depay ! video/x-h264,format=avc,alignment=au \
                ! kvssink name=sink stream-name=users-rtsp-avc storage-size=512";
    rtsp_upload(&server, "users-rtsp-avc", line, 45, &[VIDEO]);
}

/// The same line with h264parse after the depayloader (which adds width and height).
#[test]
fn users_rtspsrc_avc_caps_and_storage_size_with_h264parse() {
    let server = RtspServer::start("none", 0);
    let line = "rtspsrc location={url} ! rtph264depay ! h264parse ! video/x-h264,format=avc,alignment=au \
                ! kvssink name=sink stream-name=users-rtsp-avc storage-size=512";
    rtsp_upload(&server, "users-rtsp-avc", line, 45, &[VIDEO]);
}

/// Two cameras through `rtsp_gateway`; camera A's server is killed mid-stream and started again
/// on the same port (new session, timestamps from zero). A's stream goes on after a gap without
/// a fatal error; B's never notices (one PutMedia session, no gap); both end cleanly on Ctrl-C.
#[test]
fn rtsp_gateway_survives_a_camera_restart() {
    let ep = endpoint();
    let a = RtspServer::start("none", 0);
    let b = RtspServer::start("none", 0);
    let gw = examples::Example::start(
        "rtsp_gateway",
        &[
            "--camera",
            &format!("cam-a={}", a.url),
            "--camera",
            &format!("cam-b={}", b.url),
            "--stall-timeout",
            "3",
        ],
        &ep,
    );
    let wait = Duration::from_secs(30);
    assert!(
        ep.wait_for_persisted("cam-a", 2, wait),
        "camera A streams: {}",
        gw.stdout()
    );
    let port = a.port;
    drop(a); // SIGKILL: the camera goes away mid-stream
    assert!(
        gw.wait_for_output("cam-a: camera lost", wait),
        "the loss is seen: {}",
        gw.stdout()
    );
    let before = ep.fragments("cam-a").len();
    let _a2 = RtspServer::start("none", port);
    assert!(
        ep.wait_for_persisted("cam-a", before + 3, wait),
        "camera A streams again after the restart: {}",
        gw.stdout()
    );
    assert!(ep.wait_for_persisted("cam-b", 4, wait));
    gw.interrupt();
    let out = gw.wait(Duration::from_secs(60));
    assert!(out.status.success(), "{}", out.stderr);
    assert!(out.number("summary cam-a:", "restarts") >= 1);
    assert_eq!(out.number("summary cam-b:", "restarts"), 0);

    for (cam, frames) in [
        ("cam-a", out.number("summary cam-a:", "frames")),
        ("cam-b", out.number("summary cam-b:", "frames")),
    ] {
        let fragments = ep.fragments(cam);
        assert!(
            fragments
                .iter()
                .all(|f| f.state == FragmentState::Persisted),
            "{cam}: {fragments:?}"
        );
        assert_eq!(
            stored_frames(&ep, cam).get(&1).copied(),
            Some(frames),
            "{cam}"
        );
        let mkv = std::fs::read(ep.stored_mkv_path(cam).unwrap()).unwrap();
        mkv_check::check_file(cam, &mkv, &[frames as usize], &[VIDEO]);
    }
    // B: one session, fragments back to back (1 s GOPs: no gap above 1.5 s).
    assert_eq!(
        ep.sessions(Some("cam-b")).len(),
        1,
        "B's upload was not disturbed"
    );
    let b_frags = ep.fragments("cam-b");
    assert!(
        b_frags
            .windows(2)
            .all(|w| w[1].timecode - w[0].timecode <= 1500),
        "{b_frags:?}"
    );
    // A: timecodes keep increasing across the restart (the new session's timestamps start from
    // zero again; kvssink maps them after what it sent before).
    let a_frags = ep.fragments("cam-a");
    assert!(
        a_frags.windows(2).all(|w| w[1].timecode > w[0].timecode),
        "{a_frags:?}"
    );
}
