//! Interleaving as our users' pipelines need it, end to end against the local KVS endpoint:
//! non-live sources whose branches run at different speeds (an encoder, two files), encoders with
//! their default latency, live tracks that end or are released early, and flushes, seeks and
//! state changes while a pad waits for another. Every frame that entered the sink must be stored
//! (or be counted and reported), in one PutMedia session, and nothing may hang.

mod common;
use common::pipeline;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use gst::prelude::*;
use kvs_local_endpoint::{Config, FragmentState, LocalEndpoint};
use pipeline::{
    Entries, Run, RunOptions, frame_latencies, gst_launch, record_entries, run, stored_frames,
};

fn endpoint() -> LocalEndpoint {
    LocalEndpoint::start(Config {
        record_frame_arrivals: true,
        ..Config::default()
    })
    .expect("the local endpoint starts")
}

/// Everything that entered the sink was stored, nothing was reported dropped, one session.
fn assert_all_stored(ep: &LocalEndpoint, stream: &str, run: &Run, sessions: usize) {
    assert!(run.errors.is_empty(), "{stream}: {:?}", run.errors);
    assert!(run.eos, "{stream}: no EOS after {:?}", run.elapsed);
    assert!(
        run.dropped.is_empty(),
        "{stream}: dropped {:?}",
        run.dropped
    );
    let drop_warnings: Vec<_> = run
        .warnings
        .iter()
        .filter(|w| w.contains("dropped"))
        .collect();
    assert!(drop_warnings.is_empty(), "{stream}: {drop_warnings:?}");
    let stored: Vec<u64> = stored_frames(ep, stream).values().copied().collect();
    // Track numbers: video 1, audio 2.
    let entered: Vec<u64> = ["video_0", "audio_0"]
        .iter()
        .filter_map(|p| run.frames.get(*p).copied())
        .collect();
    assert_eq!(
        stored, entered,
        "{stream}: frames stored per track vs. buffers that entered kvssink per pad {:?}",
        run.frames
    );
    assert!(
        ep.fragments(stream)
            .iter()
            .all(|f| f.state == FragmentState::Persisted)
    );
    assert_eq!(
        ep.sessions(Some(stream)).len(),
        sessions,
        "{stream}: PutMedia sessions"
    );
}

/// Median latency (frame enters kvssink → its block read by the endpoint) of the video frames
/// that entered after `after` (running time).
fn video_latency_p50_after(
    ep: &LocalEndpoint,
    name: &str,
    entries: &Entries,
    after: Duration,
) -> Duration {
    let cut = after.as_millis() as u64;
    let late: Entries = Default::default();
    late.lock().unwrap().insert(
        "video_0".into(),
        entries.lock().unwrap()["video_0"]
            .iter()
            .filter(|(pts, _)| *pts >= cut)
            .copied()
            .collect(),
    );
    // frame_latencies anchors the time axis on the first video entry: keep it.
    late.lock()
        .unwrap()
        .get_mut("video_0")
        .unwrap()
        .insert(0, entries.lock().unwrap()["video_0"][0]);
    let mut lat = frame_latencies(ep, name, "video_0", 1, &late);
    assert!(lat.len() > 60, "{} video frames matched", lat.len());
    lat.sort();
    let p50 = lat[lat.len() / 2];
    eprintln!(
        "{name}: video frame latency p50 {p50:?}, max {:?}",
        lat[lat.len() - 1]
    );
    p50
}

/// An MKV with H.265 video only and one with A-law audio only, `seconds` long.
fn two_files(dir: &Path, seconds: u32) -> (PathBuf, PathBuf) {
    let video = dir.join("video.mkv");
    let audio = dir.join("audio.mkv");
    gst_launch(&format!(
        "videotestsrc num-buffers={} ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 \
         ! x265enc speed-preset=ultrafast tune=zerolatency key-int-max=30 ! h265parse \
         ! matroskamux ! filesink location={}",
        seconds * 30,
        video.display()
    ));
    gst_launch(&format!(
        "audiotestsrc num-buffers={} samplesperbuffer=160 ! audio/x-raw,rate=8000,channels=1 \
         ! alawenc ! matroskamux ! filesink location={}",
        seconds * 50,
        audio.display()
    ));
    (video, audio)
}

/// The first line of issue 12's table: non-live test sources, the video branch slower (an
/// encoder) than the audio branch. Realtime (default) and offline.
#[test]
fn non_live_test_sources_store_every_frame_in_one_session() {
    for (mode, extra) in [
        ("realtime", ""),
        (
            "offline",
            "streaming-type=offline file-start-time=1700000000",
        ),
    ] {
        let ep = endpoint();
        let name = format!("nonlive-sources-{mode}");
        let line = format!(
            "videotestsrc num-buffers=150 ! x264enc tune=zerolatency key-int-max=30 ! h264parse \
             ! kvssink name=sink stream-name={name} {extra} \
             audiotestsrc num-buffers=200 ! avenc_aac ! aacparse ! sink."
        );
        let run = run(&ep, &line, Duration::from_secs(60), RunOptions::default());
        assert_all_stored(&ep, &name, &run, 1);
        assert_eq!(run.frames["video_0"], 150);
    }
}

/// Audio and video from two separate files, each read by its own thread at its own speed.
#[test]
fn av_from_two_files_store_every_frame_in_one_session() {
    let dir = tempfile::tempdir().unwrap();
    let (video, audio) = two_files(dir.path(), 12);
    for (mode, extra) in [
        (
            "offline",
            "streaming-type=offline file-start-time=1700000000",
        ),
        ("realtime", ""),
    ] {
        let ep = endpoint();
        let name = format!("two-files-{mode}");
        let line = format!(
            "filesrc location={} ! matroskademux ! h265parse ! kvssink name=sink stream-name={name} {extra} \
             filesrc location={} ! matroskademux ! audio/x-alaw ! sink.",
            video.display(),
            audio.display()
        );
        let run = run(&ep, &line, Duration::from_secs(90), RunOptions::default());
        assert_all_stored(&ep, &name, &run, 1);
        assert_eq!(run.frames["video_0"], 360, "{name}");
        assert_eq!(run.frames["audio_0"], 600, "{name}");
    }
}

/// A/V through x264enc with its default latency (look-ahead, no `tune=zerolatency`), live and
/// non-live.
#[test]
fn encoder_with_default_latency_stores_every_frame() {
    for live in [false, true] {
        let ep = endpoint();
        let name = format!(
            "x264-default-latency-{}",
            if live { "live" } else { "nonlive" }
        );
        let line = format!(
            "videotestsrc is-live={live} num-buffers=150 ! video/x-raw,width=320,height=240,framerate=30/1 \
             ! x264enc speed-preset=ultrafast key-int-max=30 ! h264parse ! queue \
             ! kvssink name=sink stream-name={name} \
             audiotestsrc is-live={live} num-buffers=200 ! avenc_aac ! aacparse ! queue ! sink."
        );
        let run = run(&ep, &line, Duration::from_secs(60), RunOptions::default());
        assert_all_stored(&ep, &name, &run, 1);
        assert_eq!(run.frames["video_0"], 150, "{name}");
    }
}

/// Live video for 8 s with live audio that ends after ~1.4 s: video is not held back by the
/// ended track (before, it waited 2 s of media for it until the end).
#[test]
fn live_audio_ending_early_does_not_delay_video() {
    let ep = endpoint();
    let name = "live-audio-eos";
    let line = format!(
        "videotestsrc is-live=true num-buffers=240 ! video/x-raw,width=320,height=240,framerate=30/1 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15 ! h264parse \
         ! kvssink name=sink stream-name={name} \
         audiotestsrc is-live=true num-buffers=60 samplesperbuffer=1024 ! avenc_aac ! aacparse ! sink."
    );
    let entries: Entries = Default::default();
    let run = run(
        &ep,
        &line,
        Duration::from_secs(60),
        RunOptions {
            on_created: Some(Box::new(|p| record_entries(p, &entries))),
            ..RunOptions::default()
        },
    );
    assert!(run.errors.is_empty(), "{:?}", run.errors);
    assert!(run.eos);
    assert!(run.dropped.is_empty(), "{:?}", run.dropped);
    let stored = stored_frames(&ep, name);
    assert_eq!(stored.get(&1), Some(&240), "every video frame: {stored:?}");
    assert_eq!(stored.get(&2).copied(), Some(run.frames["audio_0"]));
    let p50 = video_latency_p50_after(&ep, name, &entries, Duration::from_millis(2500));
    assert!(
        p50 < Duration::from_millis(300),
        "video frames after the audio ended reached the endpoint {p50:?} (p50) after entering kvssink"
    );
}

/// A live pipeline whose audio pad is released mid-stream: video goes on without a delay.
#[test]
fn live_audio_pad_released_mid_stream() {
    let ep = endpoint();
    let name = "live-audio-released";
    let line = format!(
        "videotestsrc is-live=true num-buffers=240 ! video/x-raw,width=320,height=240,framerate=30/1 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15 ! h264parse \
         ! kvssink name=sink stream-name={name} \
         audiotestsrc name=asrc is-live=true ! avenc_aac name=aenc ! aacparse name=aparse ! queue name=aq ! sink."
    );
    let on_playing = Box::new(|p: &gst::Pipeline| {
        let p = p.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(2));
            let sink = p.by_name("sink").unwrap();
            let pad = sink.static_pad("audio_0").unwrap();
            for n in ["asrc", "aenc", "aparse", "aq"] {
                let e = p.by_name(n).unwrap();
                e.set_state(gst::State::Null).unwrap();
                p.remove(&e).unwrap();
            }
            sink.release_request_pad(&pad);
        });
    });
    let entries: Entries = Default::default();
    let run = run(
        &ep,
        &line,
        Duration::from_secs(60),
        RunOptions {
            on_created: Some(Box::new(|p| record_entries(p, &entries))),
            on_playing: Some(on_playing),
            ..RunOptions::default()
        },
    );
    assert!(run.errors.is_empty(), "{:?}", run.errors);
    assert!(run.eos, "EOS of the video pad ends the stream");
    assert!(run.dropped.is_empty(), "{:?}", run.dropped);
    let stored = stored_frames(&ep, name);
    assert_eq!(stored.get(&1), Some(&240), "every video frame: {stored:?}");
    let p50 = video_latency_p50_after(&ep, name, &entries, Duration::from_millis(3000));
    assert!(
        p50 < Duration::from_millis(300),
        "video frames after the release reached the endpoint {p50:?} (p50) after entering kvssink"
    );
}

/// A non-live line whose audio comes from an appsrc the test feeds: video runs ahead and waits.
const WAITING_LINE: &str = "videotestsrc num-buffers=300 ! video/x-raw,width=320,height=240,framerate=30/1 \
     ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 ! h264parse \
     ! kvssink name=sink stream-name={name} \
     appsrc name=asrc format=time caps=audio/x-alaw,rate=8000,channels=1 ! sink.";

/// Buffers that entered the video pad, counted from now on.
fn count_video(p: &gst::Pipeline) -> Arc<AtomicU64> {
    let n = Arc::new(AtomicU64::new(0));
    let pad = p.by_name("sink").unwrap().static_pad("video_0").unwrap();
    let c = n.clone();
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
        c.fetch_add(1, Ordering::SeqCst);
        gst::PadProbeReturn::Ok
    });
    n
}

/// Waits until the video pad stopped taking buffers (it waits for audio).
fn wait_until_video_waits(count: &AtomicU64) {
    let mut last = u64::MAX;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(150));
        let now = count.load(Ordering::SeqCst);
        if now == last {
            return;
        }
        last = now;
    }
    panic!("the video pad never waited");
}

/// Runs `f` on another thread; fails the test if it does not return within `limit`.
fn within<T: Send + 'static>(
    what: &str,
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("{what} did not return within {limit:?} (deadlock)"))
}

fn push_alaw(p: &gst::Pipeline, seconds: u64) {
    let src = p.by_name("asrc").unwrap();
    for i in 0..seconds * 50 {
        let mut b = gst::Buffer::from_slice(vec![0xd5u8; 160]);
        let bm = b.get_mut().unwrap();
        bm.set_pts(gst::ClockTime::from_mseconds(i * 20));
        bm.set_duration(gst::ClockTime::from_mseconds(20));
        let r = src.emit_by_name::<gst::FlowReturn>("push-buffer", &[&b]);
        assert_eq!(r, gst::FlowReturn::Ok);
    }
    let _ = src.emit_by_name::<gst::FlowReturn>("end-of-stream", &[]);
}

/// PAUSED and back to PLAYING while the video pad waits for audio: nothing hangs, and once
/// audio arrives every frame of both tracks is stored.
#[test]
fn pause_and_resume_while_a_pad_waits() {
    let ep = endpoint();
    let name = "waiting-pause";
    let line = WAITING_LINE.replace("{name}", name);
    let on_playing = Box::new(|p: &gst::Pipeline| {
        let count = count_video(p);
        wait_until_video_waits(&count);
        let waited_at = count.load(Ordering::SeqCst);
        let q = p.clone();
        within(
            "PLAYING→PAUSED→PLAYING",
            Duration::from_secs(10),
            move || {
                q.set_state(gst::State::Paused).unwrap();
                q.state(gst::ClockTime::from_seconds(5)).0.unwrap();
                q.set_state(gst::State::Playing).unwrap();
            },
        );
        assert_eq!(count.load(Ordering::SeqCst), waited_at, "still waiting");
        push_alaw(p, 11);
    });
    let run = run(
        &ep,
        &line,
        Duration::from_secs(60),
        RunOptions {
            on_playing: Some(on_playing),
            ..RunOptions::default()
        },
    );
    assert_all_stored(&ep, name, &run, 1);
    assert_eq!(run.frames["video_0"], 300);
    assert_eq!(run.frames["audio_0"], 550);
}

/// A flushing seek, then READY, while the video pad waits: each returns promptly.
#[test]
fn flush_seek_and_stop_while_a_pad_waits() {
    let ep = endpoint();
    let name = "waiting-flush";
    let line = WAITING_LINE.replace("{name}", name);
    let on_playing = Box::new(|p: &gst::Pipeline| {
        let count = count_video(p);
        wait_until_video_waits(&count);
        let q = p.clone();
        within("a flushing seek", Duration::from_secs(10), move || {
            assert!(
                q.seek_simple(gst::SeekFlags::FLUSH, gst::ClockTime::ZERO)
                    .is_ok()
            );
        });
        let before = count.load(Ordering::SeqCst);
        wait_until_video_waits(&count);
        assert!(
            count.load(Ordering::SeqCst) > before,
            "video flowed again after the seek"
        );
        let q = p.clone();
        within("PLAYING→READY", Duration::from_secs(10), move || {
            q.set_state(gst::State::Ready).unwrap();
        });
    });
    let run = run(
        &ep,
        &line,
        Duration::from_secs(8),
        RunOptions {
            on_playing: Some(on_playing),
            ..RunOptions::default()
        },
    );
    assert!(run.errors.is_empty(), "{:?}", run.errors);
}

/// A demuxer without queues feeds both pads from one thread: the pad that is ahead must not
/// wait for the other (it would wait for itself).
#[test]
fn one_thread_feeding_both_pads_does_not_wait() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("av.mkv");
    // Poorly interleaved: video is muxed up to ~2 s ahead of audio.
    gst_launch(&format!(
        "videotestsrc num-buffers=240 ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 \
         ! x264enc speed-preset=ultrafast tune=zerolatency key-int-max=30 ! h264parse ! queue \
         ! matroskamux name=mux max-cluster-duration=2000000000 ! filesink location={} \
         audiotestsrc num-buffers=400 samplesperbuffer=160 ! audio/x-raw,rate=8000,channels=1 \
         ! alawenc ! queue ! mux.",
        file.display()
    ));
    let ep = endpoint();
    let name = "one-thread";
    let line = format!(
        "filesrc location={} ! matroskademux name=d d. ! h264parse ! kvssink name=sink stream-name={name} \
         streaming-type=offline d. ! audio/x-alaw ! sink.",
        file.display()
    );
    let run = run(&ep, &line, Duration::from_secs(30), RunOptions::default());
    assert_all_stored(&ep, name, &run, 1);
    assert_eq!(run.frames["video_0"], 240);
    assert!(
        run.elapsed < Duration::from_secs(15),
        "took {:?}: the pads waited for each other",
        run.elapsed
    );
}
