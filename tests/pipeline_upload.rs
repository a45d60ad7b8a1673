//! Real pipelines through kvssink into the local KVS endpoint: every codec combination the
//! element takes, checked end to end — every frame that entered the sink is stored by the
//! endpoint, persisted, and both the stored stream and the `KVS_DEBUG_DUMP_DATA_FILE_DIR` dump
//! pass the four independent Matroska checks.

mod common;
use common::mkv_check;
use common::pipeline;

use std::time::{Duration, Instant};

use gst::prelude::*;

use kvs_local_endpoint::{Config, LocalEndpoint};
use pipeline::{RunOptions, run, stored_frames};

const VIDEO_H264: &str = "videotestsrc is-live=true num-buffers=60 ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15 bframes=0";
const VIDEO_H265: &str = "videotestsrc is-live=true num-buffers=60 ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 ! x265enc tune=zerolatency speed-preset=ultrafast key-int-max=15";

fn endpoint() -> LocalEndpoint {
    LocalEndpoint::start(Config::default()).expect("the local endpoint starts")
}

fn has(element: &str) -> bool {
    common::init();
    gst::ElementFactory::find(element).is_some()
}

/// Runs `line`, then checks the upload and the files. `tracks` are `(pad, decoder chain)` with
/// video first.
fn upload_and_check(name: &str, line: &str, decode: &[(&str, &str)]) {
    let ep = endpoint();
    let dump = mkv_check::tmpdir(&format!("dump-{name}"));
    let description = format!("{line} kvssink name=sink stream-name={name}");
    let run = run(
        &ep,
        &description,
        Duration::from_secs(60),
        RunOptions {
            dump_dir: Some(&dump),
            ..Default::default()
        },
    );
    assert!(run.errors.is_empty(), "{name}: {:?}", run.errors);
    assert!(run.eos, "{name}: no EOS after {:?}", run.elapsed);
    assert!(run.warnings.is_empty(), "{name}: {:?}", run.warnings);

    // Sent = stored, per track (video is track 1, audio 2).
    let sent: Vec<u64> = ["video_0", "audio_0"]
        .iter()
        .filter_map(|p| run.frames.get(*p).copied())
        .collect();
    let stored = stored_frames(&ep, name);
    assert_eq!(
        stored.values().copied().collect::<Vec<_>>(),
        sent,
        "{name}: frames stored per track vs. frames that entered kvssink"
    );
    let fragments = ep.fragments(name);
    assert!(!fragments.is_empty());
    assert!(
        fragments
            .iter()
            .all(|f| f.state == kvs_local_endpoint::FragmentState::Persisted),
        "{name}: {fragments:?}"
    );
    assert_eq!(
        run.persisted(),
        fragments.len(),
        "a PERSISTED message per fragment"
    );
    assert!(
        ep.requests().iter().all(
            |r| r.status == 200 || r.error_type.as_deref() == Some("ResourceNotFoundException")
        ),
        "every request's signature verified (only the first DescribeStream may be 404): {:?}",
        ep.requests()
    );

    let expected: Vec<usize> = sent.iter().map(|&n| n as usize).collect();
    let stored_mkv = std::fs::read(ep.stored_mkv_path(name).expect("stored mkv")).unwrap();
    mkv_check::check_file(&format!("{name}-stored"), &stored_mkv, &expected, decode);
    let dumped: Vec<_> = std::fs::read_dir(&dump).unwrap().flatten().collect();
    assert_eq!(dumped.len(), 1, "one dump file");
    let dumped = std::fs::read(dumped[0].path()).unwrap();
    mkv_check::check_file(&format!("{name}-dump"), &dumped, &expected, decode);
    std::fs::remove_dir_all(dump).unwrap();
}

#[test]
fn h264_avc_with_aac() {
    upload_and_check(
        "h264-aac",
        &format!(
            "{VIDEO_H264} ! h264parse ! video/x-h264,stream-format=avc,alignment=au ! sink.video_%u \
             audiotestsrc is-live=true num-buffers=86 samplesperbuffer=1024 ! audio/x-raw,rate=44100,channels=1 ! avenc_aac ! aacparse ! sink.audio_%u"
        ),
        &[
            ("video_0", "h264parse ! avdec_h264"),
            ("audio_0", "aacparse ! avdec_aac"),
        ],
    );
}

#[test]
fn h264_with_alaw() {
    upload_and_check(
        "h264-alaw",
        &format!(
            "{VIDEO_H264} ! h264parse ! sink.video_%u \
             audiotestsrc is-live=true num-buffers=50 samplesperbuffer=320 ! audio/x-raw,rate=8000,channels=1 ! alawenc ! sink.audio_%u"
        ),
        &[
            ("video_0", "h264parse ! avdec_h264"),
            ("audio_0", "alawdec"),
        ],
    );
}

#[test]
fn h264_with_mulaw() {
    upload_and_check(
        "h264-mulaw",
        &format!(
            "{VIDEO_H264} ! h264parse ! sink.video_%u \
             audiotestsrc is-live=true num-buffers=50 samplesperbuffer=320 ! audio/x-raw,rate=8000,channels=1 ! mulawenc ! sink.audio_%u"
        ),
        &[
            ("video_0", "h264parse ! avdec_h264"),
            ("audio_0", "mulawdec"),
        ],
    );
}

#[test]
fn h264_byte_stream_straight_from_the_encoder() {
    upload_and_check(
        "h264-annexb",
        &format!(
            "{VIDEO_H264} ! video/x-h264,stream-format=byte-stream,alignment=au ! sink.video_%u"
        ),
        &[("video_0", "h264parse ! avdec_h264")],
    );
}

#[test]
fn h265_hvc1() {
    if !has("x265enc") {
        eprintln!("skipped: x265enc is not installed");
        return;
    }
    upload_and_check(
        "h265-hvc1",
        &format!(
            "{VIDEO_H265} ! h265parse ! video/x-h265,stream-format=hvc1,alignment=au ! sink.video_%u"
        ),
        &[("video_0", "h265parse ! avdec_h265")],
    );
}

#[test]
fn h265_byte_stream_straight_from_the_encoder() {
    if !has("x265enc") {
        eprintln!("skipped: x265enc is not installed");
        return;
    }
    upload_and_check(
        "h265-annexb",
        &format!(
            "{VIDEO_H265} ! video/x-h265,stream-format=byte-stream,alignment=au ! sink.video_%u"
        ),
        &[("video_0", "h265parse ! avdec_h265")],
    );
}

/// An A/V stream whose audio stops after 2 s (no EOS, no GAP) keeps producing video
/// fragments: the silent track holds the others back by at most the interleaver's bound.
#[test]
fn video_keeps_flowing_when_audio_stops() {
    let ep = endpoint();
    let name = "audio-stops";
    let line = format!(
        "{} ! h264parse ! sink.video_%u \
         audiotestsrc is-live=true num-buffers=260 samplesperbuffer=1024 ! audio/x-raw,rate=44100,channels=1 ! valve name=valve drop=false drop-mode=forward-sticky-events ! avenc_aac ! aacparse ! sink.audio_%u \
         kvssink name=sink stream-name={name}",
        VIDEO_H264.replace("num-buffers=60", "num-buffers=180")
    );
    let run = run(
        &ep,
        &line,
        Duration::from_secs(60),
        RunOptions {
            on_playing: Some(Box::new(|p: &gst::Pipeline| {
                let valve = p.by_name("valve").unwrap();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_secs(2));
                    valve.set_property("drop", true);
                });
            })),
            ..Default::default()
        },
    );
    assert!(run.errors.is_empty(), "{:?}", run.errors);
    assert!(run.eos);
    let fragments = ep.fragments(name);
    let video_after = fragments
        .iter()
        .filter(|f| f.timecode >= fragments[0].timecode + 3500)
        .filter(|f| f.frames_per_track.get(&1).copied().unwrap_or(0) > 0)
        .count();
    assert!(
        video_after >= 3,
        "video fragments kept coming after the audio stopped: {fragments:?}"
    );
    let stored = stored_frames(&ep, name);
    assert_eq!(stored.get(&1).copied(), run.frames.get("video_0").copied());
    // The encoder's last frames, flushed at EOS long after the stall, arrive too late to be
    // placed in order: dropped, and reported on the bus.
    let (stored_audio, sent_audio) = (stored[&2], run.frames["audio_0"]);
    assert!(
        stored_audio <= sent_audio && sent_audio - stored_audio <= 3,
        "{stored_audio} of {sent_audio}"
    );
    if stored_audio < sent_audio {
        assert!(
            run.warnings.iter().any(|w| w.contains("dropped")),
            "late frames are reported: {:?}",
            run.warnings
        );
    }
    assert!(
        run.frames["audio_0"] < 120,
        "the audio really stopped: {:?}",
        run.frames
    );
}

/// `kvs-add-metadata` events become fragment tags: persistent ones on every fragment, one-off
/// ones once; a name the service reserves is refused with a warning naming the rule.
#[test]
fn metadata_events_become_fragment_tags() {
    let ep = endpoint();
    let name = "metadata";
    let line =
        format!("{VIDEO_H264} ! h264parse ! sink.video_%u kvssink name=sink stream-name={name}");
    let run = run(
        &ep,
        &line,
        Duration::from_secs(60),
        RunOptions {
            on_playing: Some(Box::new(|p: &gst::Pipeline| {
                let pad = p.by_name("sink").unwrap().static_pad("video_0").unwrap();
                for (n, v, persist) in [
                    ("camera", "front-door", true),
                    ("motion", "1", false),
                    ("AWS_RESERVED", "x", false),
                ] {
                    let s = gst::Structure::builder("kvs-add-metadata")
                        .field("name", n)
                        .field("value", v)
                        .field("persist", persist)
                        .build();
                    pad.send_event(gst::event::CustomDownstream::new(s));
                }
            })),
            ..Default::default()
        },
    );
    assert!(run.errors.is_empty(), "{:?}", run.errors);
    assert!(run.eos);
    assert_eq!(run.warnings.len(), 1, "{:?}", run.warnings);
    assert!(
        run.warnings[0].contains("AWS_RESERVED") && run.warnings[0].contains("AWS"),
        "{:?}",
        run.warnings
    );
    let fragments = ep.fragments(name);
    assert!(fragments.len() >= 3, "{fragments:?}");
    for f in &fragments {
        assert!(
            f.tags
                .contains(&("camera".to_owned(), "front-door".to_owned())),
            "persistent tag on every fragment: {:?}",
            f.tags
        );
    }
    let motion = fragments
        .iter()
        .filter(|f| f.tags.iter().any(|(n, _)| n == "motion"))
        .count();
    assert_eq!(motion, 1, "a one-off tag appears once");
    assert!(
        fragments.iter().all(|f| f.end_of_fragment),
        "every fragment is closed with the end-of-fragment tag as it is sent, so the service \
         persists it at once rather than when the next one starts"
    );
}

/// Offline: 10 s of media pushed as fast as it comes keeps its timing (`file-start-time` + PTS),
/// and EOS is posted within 1 s of the last PERSISTED ACK.
#[test]
fn offline_upload_keeps_timing_and_ends_right_after_the_last_persisted() {
    let ep = endpoint();
    let name = "offline";
    let start_s = 1_700_000_000u64;
    let line = format!(
        "videotestsrc num-buffers=300 ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 bframes=0 ! h264parse \
         ! kvssink name=sink stream-name={name} streaming-type=offline file-start-time={start_s}"
    );
    let run = run(&ep, &line, Duration::from_secs(60), RunOptions::default());
    assert!(run.errors.is_empty(), "{:?}", run.errors);
    assert!(run.eos);
    let fragments = ep.fragments(name);
    assert_eq!(fragments.len(), 10, "a fragment per second: {fragments:?}");
    for (i, f) in fragments.iter().enumerate() {
        assert_eq!(f.timecode, start_s * 1000 + i as u64 * 1000, "fragment {i}");
        assert_eq!(f.state, kvs_local_endpoint::FragmentState::Persisted);
    }
    assert_eq!(stored_frames(&ep, name).get(&1).copied(), Some(300));
    assert_eq!(
        run.persisted_latencies.len(),
        10,
        "every PERSISTED message carries latency-us"
    );
    assert!(
        run.persisted_latencies
            .iter()
            .all(|l| *l < Duration::from_secs(10)),
        "{:?}",
        run.persisted_latencies
    );
    let gap = run.eos_after.unwrap() - run.last_persisted_after.unwrap();
    assert!(
        gap < Duration::from_secs(1),
        "EOS {gap:?} after the last PERSISTED"
    );
}

/// 8 sinks in one process, 50 start/stop cycles: memory and threads come back.
#[test]
fn many_sinks_and_cycles_do_not_leak() {
    fn rss_kb() -> u64 {
        let s = std::fs::read_to_string("/proc/self/status").unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    }
    fn threads() -> usize {
        std::fs::read_dir("/proc/self/task").unwrap().count()
    }
    let ep = endpoint();
    let branch = |i: usize, element: &str| {
        format!(
            "videotestsrc num-buffers=20 ! video/x-raw,format=I420,width=160,height=120,framerate=30/1 \
             ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=10 bframes=0 ! h264parse \
             ! kvssink name={element} stream-name=cycle-{i} streaming-type=offline "
        )
    };
    let eight: String = (0..8)
        .map(|i| {
            branch(
                i,
                &if i == 0 {
                    "sink".to_owned()
                } else {
                    format!("sink{i}")
                },
            )
        })
        .collect();
    let one = |cycle: usize| {
        let r = run(
            &ep,
            &branch(cycle % 8, "sink"),
            Duration::from_secs(30),
            RunOptions::default(),
        );
        assert!(
            r.eos && r.errors.is_empty(),
            "cycle {cycle}: {:?}",
            r.errors
        );
    };
    let eight_sinks = || {
        let r = run(&ep, &eight, Duration::from_secs(60), RunOptions::default());
        assert!(r.eos && r.errors.is_empty(), "8 sinks: {:?}", r.errors);
    };
    // Warm up the runtime, plugin, encoders and thread pools (GStreamer's and tokio's keep
    // idle threads for a while) once.
    one(0);
    eight_sinks();
    let (rss0, threads0) = (rss_kb(), threads());
    for cycle in 1..=50 {
        one(cycle);
    }
    // 8 concurrent sinks in one pipeline (offline: each posts EOS when its upload is done).
    eight_sinks();
    // Idle pool threads (tokio's blocking pool keeps them 10 s, GStreamer's task pool) go away
    // by themselves; a leaked thread does not.
    let settled = Instant::now();
    while threads() > threads0 + 2 && settled.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(250));
    }
    let (rss1, threads1) = (rss_kb(), threads());
    eprintln!("RSS {rss0} kB -> {rss1} kB, threads {threads0} -> {threads1}");
    assert!(
        rss1 < rss0 + 24 * 1024,
        "RSS grew by {} kB over 50 cycles and 8 sinks",
        rss1.saturating_sub(rss0)
    );
    assert!(threads1 <= threads0 + 2, "threads {threads0} -> {threads1}");
    // Every cycle and every concurrent sink stored its 20 frames.
    for i in 0..8 {
        let runs = 2 + (0..=50).filter(|c| c % 8 == i).count() as u64;
        assert_eq!(
            stored_frames(&ep, &format!("cycle-{i}")).get(&1).copied(),
            Some(20 * runs),
            "stream cycle-{i}"
        );
    }
}

/// A resolution change mid-stream (new SPS/PPS, new codec_data) starts a new session header at
/// the next key frame: the uploader opens a new PutMedia session and nothing is lost.
#[test]
fn resolution_change_starts_a_new_header_and_session() {
    let ep = endpoint();
    let name = "caps-change";
    let line = format!(
        "videotestsrc is-live=true num-buffers=90 ! capsfilter name=cf caps=video/x-raw,format=I420,width=320,height=240,framerate=30/1 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15 bframes=0 ! h264parse ! kvssink name=sink stream-name={name}"
    );
    let run = run(
        &ep,
        &line,
        Duration::from_secs(60),
        RunOptions {
            on_playing: Some(Box::new(|p: &gst::Pipeline| {
                let cf = p.by_name("cf").unwrap();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(1500));
                    let caps = gst::Caps::builder("video/x-raw")
                        .field("format", "I420")
                        .field("width", 640i32)
                        .field("height", 480i32)
                        .field("framerate", gst::Fraction::new(30, 1))
                        .build();
                    cf.set_property("caps", caps);
                });
            })),
            ..Default::default()
        },
    );
    assert!(run.errors.is_empty(), "{:?}", run.errors);
    assert!(run.eos);
    assert_eq!(
        stored_frames(&ep, name).get(&1).copied(),
        run.frames.get("video_0").copied()
    );
    assert!(
        ep.sessions(Some(name)).len() >= 2,
        "the new header went out on a new session: {:?}",
        ep.sessions(Some(name))
    );
    assert!(
        ep.fragments(name)
            .iter()
            .all(|f| f.state == kvs_local_endpoint::FragmentState::Persisted)
    );
}

/// PLAYING → PAUSED → PLAYING mid-stream: the stream goes on, nothing is lost.
#[test]
fn pause_and_resume_mid_stream() {
    let ep = endpoint();
    let name = "pause-resume";
    let line = format!("{VIDEO_H264} ! h264parse ! kvssink name=sink stream-name={name}");
    let run = run(
        &ep,
        &line,
        Duration::from_secs(60),
        RunOptions {
            on_playing: Some(Box::new(|p: &gst::Pipeline| {
                let p = p.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(700));
                    p.set_state(gst::State::Paused).unwrap();
                    std::thread::sleep(Duration::from_millis(1000));
                    p.set_state(gst::State::Playing).unwrap();
                });
            })),
            ..Default::default()
        },
    );
    assert!(run.errors.is_empty(), "{:?}", run.errors);
    assert!(run.eos);
    assert!(
        run.elapsed >= Duration::from_millis(2500),
        "it did pause: {:?}",
        run.elapsed
    );
    assert_eq!(
        stored_frames(&ep, name).get(&1).copied(),
        run.frames.get("video_0").copied()
    );
}
