//! The open fragment streams: frames reach the endpoint as they are packed, and what the
//! service persisted has every frame exactly once and in order when the connection fails in the
//! middle of an open, partially sent fragment, when the open fragment gets an ERROR ACK, when
//! the connection goes stale while a fragment is open, and on a slow uplink. Bounds here are
//! generous (no flaky timing); the tight figures are in `docs/benchmarks.md`.

mod common;
use common::pipeline;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use gst::prelude::*;
use kvs_local_endpoint::{
    AckEventType, Config, FragmentInfo, FragmentState, LocalEndpoint, Trigger,
};
use pipeline::{Entries, Run, RunOptions, frame_latencies, record_entries, run, stored_frames};

fn endpoint() -> LocalEndpoint {
    LocalEndpoint::start(Config {
        record_frame_arrivals: true,
        ..Config::default()
    })
    .expect("the local endpoint starts")
}

/// `seconds` of live 30 fps H.264 with a key frame every 2 s (long open fragments).
fn video(seconds: u32, name: &str, props: &str) -> String {
    format!(
        "videotestsrc is-live=true num-buffers={} ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=60 bframes=0 ! h264parse \
         ! kvssink name=sink stream-name={name} {props}",
        seconds * 30
    )
}

fn persisted(ep: &LocalEndpoint, name: &str) -> Vec<FragmentInfo> {
    let mut f: Vec<_> = ep
        .fragments(name)
        .into_iter()
        .filter(|f| f.state == FragmentState::Persisted)
        .collect();
    f.sort_by_key(|f| f.index);
    f
}

/// Every frame that entered the sink is in the persisted fragments exactly once, in order.
fn assert_exactly_once_in_order(ep: &LocalEndpoint, name: &str, run: &Run) {
    assert!(run.errors.is_empty(), "{name}: {:?}", run.errors);
    assert!(run.eos, "{name}: no EOS");
    assert!(run.dropped.is_empty(), "{name}: {:?}", run.dropped);
    let video: Vec<i64> = persisted(ep, name)
        .iter()
        .flat_map(|f| f.frame_arrivals.iter().filter(|a| a.track == 1))
        .map(|a| a.timecode)
        .collect();
    assert!(
        video.windows(2).all(|w| w[0] < w[1]),
        "{name}: video frames out of order or twice"
    );
    assert_eq!(
        video.len() as u64,
        run.frames["video_0"],
        "{name}: frames stored vs. frames sent"
    );
    assert_eq!(
        stored_frames(ep, name).get(&1).copied(),
        run.frames.get("video_0").copied()
    );
}

fn go(ep: &LocalEndpoint, name: &str, seconds: u32, props: &str) -> Run {
    run(
        ep,
        &video(seconds, name, props),
        Duration::from_secs(90),
        RunOptions::default(),
    )
}

#[test]
fn reset_in_the_middle_of_an_open_fragment() {
    let ep = endpoint();
    // 2 s fragments of ~1 KB frames: 40 KB is well inside the first fragment, still open.
    ep.faults().reset_after_bytes(40_000);
    let r = go(&ep, "open-reset", 5, "");
    assert_exactly_once_in_order(&ep, "open-reset", &r);
    let sessions = ep.sessions(Some("open-reset"));
    assert!(sessions.len() >= 2, "it reconnected");
    // The first session had begun fragment 0 without finishing it.
    let first = ep
        .fragments("open-reset")
        .into_iter()
        .filter(|f| f.session_id == sessions[0].id)
        .collect::<Vec<_>>();
    assert!(
        first.iter().any(|f| f.state != FragmentState::Persisted),
        "a partially sent fragment was cut: {first:?}"
    );
}

#[test]
fn close_in_the_middle_of_an_open_fragment() {
    let ep = endpoint();
    ep.faults().close_after_bytes(90_000);
    let r = go(&ep, "open-close", 5, "");
    assert_exactly_once_in_order(&ep, "open-close", &r);
    assert!(ep.sessions(Some("open-close")).len() >= 2);
}

#[test]
fn retriable_error_ack_on_the_open_fragment_replays_it_from_its_first_frame() {
    let ep = endpoint();
    // At fragment 1's Cluster start: only its first frames were sent.
    ep.faults().error_ack(1, 5000);
    let r = go(&ep, "open-5000", 5, "");
    assert_exactly_once_in_order(&ep, "open-5000", &r);
    assert!(r.acks.iter().any(|(e, _)| e == "ERROR"));
}

#[test]
fn skip_error_ack_on_the_open_fragment_drops_it_whole_and_reports_all_its_frames() {
    let ep = endpoint();
    ep.faults().error_ack(1, 4006);
    let r = go(&ep, "open-4006", 5, "");
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(r.eos);
    assert_eq!(r.dropped.len(), 1, "{:?}", r.dropped);
    let lost = u64::from(r.dropped[0].get::<u32>("frames").unwrap());
    assert_eq!(lost, 60, "the whole 2 s fragment, reported when it ended");
    let stored = stored_frames(&ep, "open-4006")
        .get(&1)
        .copied()
        .unwrap_or(0);
    assert_eq!(stored + lost, r.frames["video_0"]);
    let video: Vec<i64> = persisted(&ep, "open-4006")
        .iter()
        .flat_map(|f| f.frame_arrivals.iter().map(|a| a.timecode))
        .collect();
    assert!(video.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn staleness_while_a_fragment_is_open() {
    let ep = endpoint();
    // The endpoint stops reading (and ACKing) inside the first, open fragment for 8 s: after
    // 3 s without an ACK (connection-staleness) the open fragment is sent again from its first
    // frame on a new connection.
    ep.faults()
        .stall(Trigger::Bytes(40_000), Duration::from_secs(8));
    let r = go(&ep, "open-stale", 6, "connection-staleness=3");
    let sessions = ep.sessions(Some("open-stale"));
    assert!(sessions.len() >= 2, "it reconnected");
    assert_exactly_once_in_order(&ep, "open-stale", &r);
}

#[test]
fn live_av_frames_reach_the_endpoint_as_they_are_packed() {
    let ep = endpoint();
    let name = "live-av";
    let entries: Entries = Default::default();
    let desc = format!(
        "{} audiotestsrc is-live=true num-buffers=250 samplesperbuffer=960 ! audio/x-raw,rate=48000,channels=1 \
         ! avenc_aac ! aacparse ! queue ! sink.",
        video(5, name, "")
    );
    let r = run(
        &ep,
        &desc,
        Duration::from_secs(60),
        RunOptions {
            on_created: Some(Box::new(|p| record_entries(p, &entries))),
            ..Default::default()
        },
    );
    assert!(r.errors.is_empty() && r.eos, "{:?}", r.errors);
    assert!(r.dropped.is_empty());
    for (pad, track) in [("video_0", 1), ("audio_0", 2)] {
        let lat = frame_latencies(&ep, name, pad, track, &entries);
        assert!(lat.len() >= 60, "{pad}: {} frames matched", lat.len());
        let max = lat.iter().max().unwrap();
        let mut sorted = lat.clone();
        sorted.sort();
        eprintln!(
            "{pad}: {} frames, latency p50 {:?}, max {max:?}",
            lat.len(),
            sorted[sorted.len() / 2]
        );
        assert!(
            *max < Duration::from_millis(200),
            "{pad}: a frame reached the endpoint {max:?} after it entered kvssink"
        );
    }
}

/// `seconds` of live 640x360 30 fps noise, H.264 at `kbps` (noise keeps the encoder at its
/// bitrate), a key frame every second.
fn noisy_video(seconds: u32, kbps: u32, name: &str, props: &str) -> String {
    format!(
        "videotestsrc is-live=true pattern=snow num-buffers={} ! video/x-raw,format=I420,width=640,height=360,framerate=30/1 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 bframes=0 bitrate={kbps} vbv-buf-capacity=500 \
         ! h264parse ! kvssink name=sink stream-name={name} {props}",
        seconds * 30
    )
}

#[test]
fn an_uplink_of_one_and_a_half_times_the_bitrate_keeps_up_without_loss() {
    let ep = endpoint();
    let name = "uplink-1.5x";
    ep.faults().limit_uplink(Some(3_000_000));
    let entries: Entries = Default::default();
    let r = run(
        &ep,
        &noisy_video(8, 2000, name, ""),
        Duration::from_secs(60),
        RunOptions {
            on_created: Some(Box::new(|p| record_entries(p, &entries))),
            ..Default::default()
        },
    );
    assert_exactly_once_in_order(&ep, name, &r);
    let lat = frame_latencies(&ep, name, "video_0", 1, &entries);
    assert!(lat.len() >= 150, "{} frames matched", lat.len());
    let mut sorted = lat.clone();
    sorted.sort();
    let max = *sorted.last().unwrap();
    eprintln!(
        "1.5x uplink: latency p50 {:?}, max {max:?}",
        sorted[sorted.len() / 2]
    );
    assert!(
        max < Duration::from_secs(1),
        "a frame took {max:?} to reach the endpoint: the upload fell behind"
    );
}

#[test]
fn an_uplink_of_half_the_bitrate_drops_whole_oldest_fragments_and_catches_up_when_it_recovers() {
    let ep = endpoint();
    let name = "uplink-0.5x";
    let seconds = 30;
    ep.faults().limit_uplink(Some(3_000_000));
    let faults = ep.faults();
    let r = run(
        &ep,
        &noisy_video(seconds, 6000, name, "storage-size=1"),
        Duration::from_secs(90),
        RunOptions {
            on_playing: Some(Box::new(move |_| {
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_secs(24));
                    faults.limit_uplink(None);
                });
            })),
            ..Default::default()
        },
    );
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(r.eos, "no EOS");
    // The live source was never held up.
    assert_eq!(r.frames["video_0"], u64::from(seconds) * 30);
    let eos_after = r.eos_after.unwrap();
    assert!(
        eos_after < Duration::from_secs(u64::from(seconds) + 15),
        "EOS after {eos_after:?}"
    );
    // Whole oldest fragments were dropped and reported, for lack of storage.
    assert!(!r.dropped.is_empty(), "the store never filled");
    assert!(r.dropped.iter().all(|d| {
        d.get::<&str>("reason").unwrap() == "storage-size exceeded"
            && d.get::<u32>("frames").unwrap() > 0
    }));
    let lost: u64 = r
        .dropped
        .iter()
        .map(|d| u64::from(d.get::<u32>("frames").unwrap()))
        .sum();
    // Everything else is stored, once and in order.
    let video: Vec<i64> = persisted(&ep, name)
        .iter()
        .flat_map(|f| f.frame_arrivals.iter().filter(|a| a.track == 1))
        .map(|a| a.timecode)
        .collect();
    assert!(video.windows(2).all(|w| w[0] < w[1]));
    eprintln!(
        "0.5x uplink: {} fragments dropped ({lost} frames), {} frames stored",
        r.dropped.len(),
        video.len()
    );
    assert_eq!(video.len() as u64 + lost, r.frames["video_0"]);
    // Once the uplink recovered, the upload caught up: the last second was stored.
    let last_dropped = r
        .dropped
        .iter()
        .map(|d| d.get::<u64>("timecode").unwrap())
        .max()
        .unwrap();
    assert!(video.last().is_some_and(|&t| t as u64 > last_dropped));
}

#[test]
fn a_pause_closes_the_open_fragment_and_it_is_persisted_at_once() {
    let ep = endpoint();
    let name = "valve";
    let closed_at = Arc::new(Mutex::new(None::<SystemTime>));
    let closed = closed_at.clone();
    let desc = format!(
        "videotestsrc is-live=true num-buffers=300 ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 \
         ! valve name=valve ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 bframes=0 \
         ! h264parse ! kvssink name=sink stream-name={name}"
    );
    let r = run(
        &ep,
        &desc,
        Duration::from_secs(60),
        RunOptions {
            on_playing: Some(Box::new(move |p| {
                let valve = p.by_name("valve").unwrap();
                std::thread::spawn(move || {
                    // Close in the middle of a 1 s fragment, for 4 s.
                    std::thread::sleep(Duration::from_millis(2500));
                    valve.set_property("drop", true);
                    *closed.lock().unwrap() = Some(SystemTime::now());
                    std::thread::sleep(Duration::from_secs(4));
                    valve.set_property("drop", false);
                });
            })),
            ..Default::default()
        },
    );
    assert!(r.errors.is_empty() && r.eos, "{:?}", r.errors);
    let closed_at = closed_at.lock().unwrap().expect("the valve closed");
    // The fragment open when the valve closed was persisted within 1 s (+ a generous margin
    // for a loaded machine), not when the source resumed 4 s later.
    let frags = persisted(&ep, name);
    let open_then = frags
        .iter()
        .rfind(|f| f.server_timestamp < closed_at)
        .expect("a fragment began before the pause");
    let persisted_at = open_then
        .acks
        .iter()
        .find(|a| a.ack.event_type == AckEventType::Persisted)
        .map(|a| a.at)
        .expect("its PERSISTED ACK");
    let after = persisted_at.duration_since(closed_at).unwrap_or_default();
    eprintln!("pause: the open fragment was persisted {after:?} after the valve closed");
    assert!(
        after < Duration::from_millis(2500),
        "the fragment open at the pause was persisted {after:?} after it"
    );
    assert!(open_then.end_of_fragment);
    // After the pause the stream went on with a new fragment that starts at a key frame.
    let next = frags
        .iter()
        .find(|f| f.index > open_then.index)
        .expect("a fragment after the pause");
    assert!(next.key_frames >= 1);
    assert!(next.server_timestamp > closed_at + Duration::from_secs(3));
}
