//! Our users' pipelines, end to end against the local KVS endpoint: their `gst-launch-1.0` lines
//! (test sources in place of cameras and microphones) and the `examples/` programs, each checked
//! for what arrived — frames per track equal to the buffers that entered kvssink, every fragment
//! persisted, the stored stream decodable by four independent tools — and, for file uploads,
//! the file's own timing. The RTSP lines are in `pipeline_rtsp.rs`.

mod common;
use common::examples;
use common::mkv_check;
use common::pipeline;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use examples::Example;
use kvs_local_endpoint::{Config, FragmentState, LocalEndpoint};
use pipeline::{Run, RunOptions, gst_launch, run, stored_frames};

const H264_AAC: &[(&str, &str)] = &[
    ("video_0", "h264parse ! avdec_h264"),
    ("audio_0", "aacparse ! avdec_aac"),
];

fn endpoint() -> LocalEndpoint {
    LocalEndpoint::start(Config::default()).expect("the local endpoint starts")
}

/// What every upload must show: a clean end, all frames stored and persisted, and a stored
/// stream that decodes.
fn check_upload(ep: &LocalEndpoint, stream: &str, sent: &[u64], decode: &[(&str, &str)]) {
    let stored = stored_frames(ep, stream);
    assert_eq!(
        stored.values().copied().collect::<Vec<_>>(),
        sent,
        "{stream}: frames stored per track vs. frames that entered kvssink"
    );
    let fragments = ep.fragments(stream);
    assert!(!fragments.is_empty(), "{stream}: nothing arrived");
    assert!(
        fragments
            .iter()
            .all(|f| f.state == FragmentState::Persisted),
        "{stream}: {fragments:?}"
    );
    let expected: Vec<usize> = sent.iter().map(|&n| n as usize).collect();
    let mkv = std::fs::read(ep.stored_mkv_path(stream).expect("a stored mkv")).unwrap();
    mkv_check::check_file(stream, &mkv, &expected, decode);
}

fn check_run(ep: &LocalEndpoint, stream: &str, run: &Run, decode: &[(&str, &str)]) {
    assert!(run.errors.is_empty(), "{stream}: {:?}", run.errors);
    assert!(run.eos, "{stream}: no EOS after {:?}", run.elapsed);
    assert!(
        run.dropped.is_empty(),
        "{stream}: {:?}\nnot persisted: {:?}\nwarnings: {:?}",
        run.dropped,
        ep.fragments(stream)
            .iter()
            .filter(|f| f.state != FragmentState::Persisted)
            .map(|f| (f.timecode, f.error_id, f.frames_per_track.clone()))
            .collect::<Vec<_>>(),
        run.warnings
    );
    let sent: Vec<u64> = ["video_0", "audio_0"]
        .iter()
        .filter_map(|p| run.frames.get(*p).copied())
        .collect();
    assert!(sent.iter().all(|&n| n > 0), "{stream}: {:?}", run.frames);
    assert_eq!(
        run.persisted(),
        ep.fragments(stream).len(),
        "a PERSISTED per fragment"
    );
    check_upload(ep, stream, &sent, decode);
}

/// Writes `seconds` of H.264 (a key frame every `key_int` of 30 frames/s) + AAC into a Matroska
/// or MP4 file with gst-launch-1.0.
fn make_file(dir: &Path, name: &str, seconds: u32, key_int: u32, h265: bool) -> PathBuf {
    let (enc, parse) = if h265 {
        (
            "x265enc speed-preset=ultrafast tune=zerolatency",
            "h265parse",
        )
    } else {
        ("x264enc speed-preset=ultrafast bframes=0", "h264parse")
    };
    make_file_with(dir, name, seconds, key_int, enc, parse)
}

fn make_file_with(
    dir: &Path,
    name: &str,
    seconds: u32,
    key_int: u32,
    enc: &str,
    parse: &str,
) -> PathBuf {
    let path = dir.join(name);
    let mux = if name.ends_with(".mp4") {
        "mp4mux"
    } else {
        "matroskamux"
    };
    let line = format!(
        "videotestsrc num-buffers={frames} ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 \
         ! {enc} key-int-max={key_int} ! {parse} ! queue ! {mux} name=mux ! filesink location={path} \
         audiotestsrc num-buffers={audio} samplesperbuffer=1024 ! audio/x-raw,rate=44100,channels=1 \
         ! avenc_aac ! aacparse ! queue ! mux.",
        frames = seconds * 30,
        audio = seconds * 44100 / 1024,
        path = path.display()
    );
    gst_launch(&line);
    path
}

/// `(pts in ms, key frame)` of every packet of the file's first stream of `kind` (v or a), in
/// presentation order as ffprobe reads them.
fn packets(file: &Path, kind: &str) -> Vec<(u64, bool)> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", &format!("{kind}:0")])
        .args(["-show_entries", "packet=pts_time,flags", "-of", "csv=p=0"])
        .arg(file)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let (pts, flags) = l.split_once(',').unwrap();
            let ms = (pts.parse::<f64>().unwrap() * 1000.0).round() as u64;
            (ms, flags.starts_with('K'))
        })
        .collect()
}

/// The camera line of the reference's documentation: x264enc with byte-stream baseline caps
/// and h264parse, voaacenc audio at 24 kHz (test sources for v4l2src/alsasrc).
#[test]
fn users_x264_baseline_byte_stream_with_voaacenc() {
    let ep = endpoint();
    let name = "users-x264-voaacenc";
    let line = format!(
        "videotestsrc is-live=true num-buffers=90 ! video/x-raw,width=320,height=240,framerate=30/1 ! videoconvert \
         ! x264enc bframes=0 key-int-max=60 byte-stream=TRUE tune=zerolatency \
         ! video/x-h264,stream-format=byte-stream,alignment=au,profile=baseline ! h264parse \
         ! kvssink name=sink stream-name={name} \
         audiotestsrc is-live=true num-buffers=70 ! audioconvert ! audio/x-raw,rate=24000 ! voaacenc \
         ! audio/mpeg,stream-format=raw ! queue ! sink."
    );
    let run = run(&ep, &line, Duration::from_secs(60), RunOptions::default());
    check_run(&ep, name, &run, H264_AAC);
    assert_eq!(ep.fragments(name).len(), 2, "a fragment per 60 frames");
}

/// The offline file line: matroskademux → h264parse / aacparse → kvssink streaming-type=offline.
#[test]
fn users_offline_mkv_through_matroskademux() {
    let dir = tempfile::tempdir().unwrap();
    let file = make_file(dir.path(), "in.mkv", 10, 30, false);
    let ep = endpoint();
    let name = "users-offline-mkv";
    let line = format!(
        "filesrc location={} ! matroskademux name=demux ! queue ! h264parse \
         ! kvssink name=sink stream-name={name} streaming-type=offline file-start-time=1700000000 \
         demux. ! queue ! aacparse ! sink.",
        file.display()
    );
    let run = run(&ep, &line, Duration::from_secs(60), RunOptions::default());
    check_run(&ep, name, &run, H264_AAC);
    assert_eq!(run.frames["video_0"], 300);
    let first = ep.fragments(name)[0].timecode;
    assert_eq!(first, 1_700_000_000_000, "file-start-time + the file's 0");
}

/// `file_upload` of a 60 s MKV keeps its timing: every fragment's timecode is file-start-time
/// (in ms) + its key frame's timestamp in the file; every frame of the file arrives; exit 0.
#[test]
fn file_upload_example_keeps_the_timing_of_a_60_s_file() {
    let dir = tempfile::tempdir().unwrap();
    // Key frames every 1.5 s: timecodes that are not whole seconds.
    let file = make_file(dir.path(), "sixty.mkv", 60, 45, false);
    let (video, audio) = (packets(&file, "v"), packets(&file, "a"));
    assert_eq!(video.len(), 1800);
    let key_pts: Vec<u64> = video.iter().filter(|p| p.1).map(|p| p.0).collect();

    let ep = endpoint();
    let start_s = 1_690_000_000u64;
    let out = Example::run(
        "file_upload",
        &[
            file.to_str().unwrap(),
            "--stream",
            "sixty",
            "--start-time",
            &start_s.to_string(),
        ],
        &ep,
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.number("summary:", "persisted"), key_pts.len() as u64);
    assert_eq!(out.number("summary:", "dropped"), 0);

    let fragments = ep.fragments("sixty");
    let timecodes: Vec<u64> = fragments.iter().map(|f| f.timecode).collect();
    let expected: Vec<u64> = key_pts.iter().map(|p| start_s * 1000 + p).collect();
    assert_eq!(
        timecodes, expected,
        "fragment timecodes = file-start-time + key frame PTS"
    );
    assert!(
        fragments
            .iter()
            .all(|f| f.state == FragmentState::Persisted)
    );
    check_upload(
        &ep,
        "sixty",
        &[video.len() as u64, audio.len() as u64],
        H264_AAC,
    );
}

/// An MP4 with H.265 and AAC goes through the same example (qtdemux found by parsebin).
#[test]
fn file_upload_example_takes_an_h265_mp4() {
    common::init();
    if gst::ElementFactory::find("x265enc").is_none() {
        eprintln!("skipped: x265enc is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = make_file(dir.path(), "clip.mp4", 4, 30, true);
    let (video, audio) = (packets(&file, "v"), packets(&file, "a"));
    let ep = endpoint();
    let out = Example::run(
        "file_upload",
        &[file.to_str().unwrap(), "--start-time", "1700000000"],
        &ep,
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", out.stderr);
    // The stream is named after the file.
    check_upload(
        &ep,
        "clip",
        &[video.len() as u64, audio.len() as u64],
        &[
            ("video_0", "h265parse ! avdec_h265"),
            ("audio_0", "aacparse ! avdec_aac"),
        ],
    );
}

/// Files with B-frames (key frames presented after they are decoded) and audio: the audio
/// presented before a key frame stays in the fragment that key frame closes, so no fragment
/// starts before the previous one ended (the service's 4004).
#[test]
fn file_upload_example_with_b_frames_and_audio() {
    common::init();
    let dir = tempfile::tempdir().unwrap();
    let file = make_file_with(
        dir.path(),
        "bframes.mp4",
        20,
        30,
        "x264enc speed-preset=ultrafast bframes=3 b-adapt=false",
        "h264parse",
    );
    let (video, audio) = (packets(&file, "v"), packets(&file, "a"));
    let ep = endpoint();
    let out = Example::run(
        "file_upload",
        &[file.to_str().unwrap(), "--start-time", "1700000000"],
        &ep,
        Duration::from_secs(90),
    );
    assert!(out.status.success(), "{}", out.stderr);
    // Not `check_upload`: ffmpeg guesses DTS for Matroska B-frames and warns about equal ones
    // unless the track has a DefaultDuration, which the reference's layout does not write.
    assert_eq!(
        stored_frames(&ep, "bframes")
            .values()
            .copied()
            .collect::<Vec<_>>(),
        [video.len() as u64, audio.len() as u64],
        "frames stored per track vs. packets in the file"
    );
    let fragments = ep.fragments("bframes");
    assert_eq!(fragments.len(), 20, "{fragments:?}");
    assert!(
        fragments
            .iter()
            .all(|f| f.state == FragmentState::Persisted),
        "{fragments:?}"
    );
    let mkv = ep.stored_mkv_path("bframes").unwrap();
    let decode = Command::new("gst-launch-1.0")
        .args(["-q", "filesrc"])
        .arg(format!("location={}", mkv.display()))
        .args("! matroskademux name=d d.video_0 ! queue ! h264parse ! avdec_h264 ! fakesink d.audio_0 ! queue ! aacparse ! avdec_aac ! fakesink".split_whitespace())
        .env_remove("GST_DEBUG")
        .output()
        .unwrap();
    assert!(
        decode.status.success(),
        "{}",
        String::from_utf8_lossy(&decode.stderr)
    );
}

/// `file_upload` exits 1 when a fragment is not persisted (the service refuses one).
#[test]
fn file_upload_example_fails_when_a_fragment_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = make_file(dir.path(), "short.mkv", 5, 30, false);
    let ep = endpoint();
    // 4002 (MAX_FRAGMENT_DURATION_REACHED) is not retried: the fragment is dropped.
    ep.faults().error_ack(2, 4002);
    let out = Example::run(
        "file_upload",
        &[file.to_str().unwrap(), "--stream", "refused"],
        &ep,
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("dropped"), "{}", out.stderr);
}

/// The camera example with test sources: what entered kvssink is what was stored.
#[test]
fn camera_example_with_test_sources() {
    let ep = endpoint();
    let out = Example::run(
        "camera",
        &[
            "--test-sources",
            "--stream",
            "cam",
            "--width",
            "320",
            "--height",
            "240",
            "--framerate",
            "15",
            "--bitrate",
            "300",
            "--duration",
            "4.5",
        ],
        &ep,
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", out.stderr);
    let (video, audio) = (
        out.number("summary:", "video_0"),
        out.number("summary:", "audio_0"),
    );
    assert!(video >= 30, "{video} frames in 4.5 s at 15 fps");
    // A fragment per 2 s (30 frames): 2 or 3, as the encoder keeps up with the clock.
    let fragments = ep.fragments("cam");
    assert_eq!(fragments.len() as u64, video.div_ceil(30), "{fragments:?}");
    let persisted = out.number("summary:", "persisted");
    assert_eq!(
        persisted,
        fragments.len() as u64,
        "kvssink-fragment-ack messages"
    );
    assert_eq!(
        out.number("summary:", "signal-persisted"),
        persisted,
        "fragment-ack signal"
    );
    check_upload(&ep, "cam", &[video, audio], H264_AAC);
}

/// The metadata example: the persistent item is on every fragment, each one-off item on one.
#[test]
fn metadata_example_tags_fragments() {
    let ep = endpoint();
    let out = Example::run(
        "metadata",
        &[
            "--stream",
            "tags",
            "--persistent",
            "camera=front-door",
            "--event",
            "motion",
            "--every",
            "1",
            "--duration",
            "4.5",
        ],
        &ep,
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", out.stderr);
    let sent = out.number("summary:", "events");
    assert!(sent >= 3, "{sent}");
    let fragments = ep.fragments("tags");
    assert!(fragments.len() >= 4, "{fragments:?}");
    for f in &fragments {
        assert!(
            f.tags.contains(&("camera".into(), "front-door".into())),
            "{:?}",
            f.tags
        );
    }
    for n in 1..=sent {
        let carrying = fragments
            .iter()
            .filter(|f| f.tags.contains(&("motion".into(), n.to_string())))
            .count();
        // The last one may come after the last fragment began: it then has no fragment.
        let expected = if n < sent { 1..=1 } else { 0..=1 };
        assert!(
            expected.contains(&carrying),
            "motion={n} on {carrying} fragments"
        );
    }
}

/// Every example answers --help with its usage (exit 0) and refuses an unknown option (exit 2).
#[test]
fn examples_answer_help_and_refuse_unknown_options() {
    let ep = endpoint();
    for name in ["camera", "file_upload", "rtsp_gateway", "metadata"] {
        let out = Example::run(name, &["--help"], &ep, Duration::from_secs(20));
        assert!(out.status.success(), "{name} --help");
        assert!(
            out.stdout.contains("Usage: cargo run --example"),
            "{name}: {}",
            out.stdout
        );
        let out = Example::run(
            name,
            &["--no-such-option", "x"],
            &ep,
            Duration::from_secs(20),
        );
        assert_eq!(out.status.code(), Some(2), "{name}: {}", out.stderr);
    }
}
