//! Recovery: a live pipeline through kvssink while the local endpoint misbehaves (connections
//! reset or closed mid-fragment, stalls, ERROR ACKs of each class, control-plane 5xx and
//! throttling, refused credentials, withheld ACKs). Outages within `buffer-duration` lose
//! nothing and duplicate nothing; longer ones drop only whole oldest fragments, each reported;
//! what cannot be recovered ends in one error plus `stream-error`.

mod common;
use common::pipeline;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use gst::prelude::*;
use kvs_local_endpoint::{AckDrop, AckEventType, Config, HttpFault, LocalEndpoint, Trigger};
use pipeline::{Run, RunOptions, assert_video_exactly_once, run, stored_frames};

/// `seconds` of live 30 fps H.264 with a key frame every 0.5 s.
fn video(seconds: u32, sink_props: &str, name: &str) -> String {
    format!(
        "videotestsrc is-live=true num-buffers={} ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15 bframes=0 ! h264parse \
         ! kvssink name=sink stream-name={name} {sink_props}",
        seconds * 30
    )
}

fn endpoint() -> LocalEndpoint {
    LocalEndpoint::start(Config::default()).expect("the local endpoint starts")
}

fn go(ep: &LocalEndpoint, name: &str, seconds: u32, props: &str) -> Run {
    run(
        ep,
        &video(seconds, props, name),
        Duration::from_secs(90),
        RunOptions::default(),
    )
}

#[test]
fn connection_reset_mid_stream_loses_and_duplicates_nothing() {
    let ep = endpoint();
    ep.faults().reset_at_fragment(3);
    let r = go(&ep, "reset", 4, "");
    assert_video_exactly_once(&ep, "reset", &r);
    assert!(ep.sessions(Some("reset")).len() >= 2, "it reconnected");
}

#[test]
fn connection_closed_mid_fragment_loses_and_duplicates_nothing() {
    let ep = endpoint();
    ep.faults().close_after_bytes(150_000);
    let r = go(&ep, "close", 4, "");
    assert_video_exactly_once(&ep, "close", &r);
    assert!(ep.sessions(Some("close")).len() >= 2);
}

#[test]
fn retriable_error_ack_is_replayed() {
    let ep = endpoint();
    ep.faults().error_ack(2, 5000);
    let r = go(&ep, "err5000", 4, "");
    assert_video_exactly_once(&ep, "err5000", &r);
    assert!(
        r.acks.iter().any(|(e, _)| e == "ERROR"),
        "the ERROR ACK was signalled"
    );
}

#[test]
fn non_retriable_error_ack_skips_the_fragment_and_reports_it() {
    let ep = endpoint();
    ep.faults().error_ack(2, 4006);
    let r = go(&ep, "err4006", 4, "");
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(r.eos);
    assert_eq!(r.dropped.len(), 1, "{:?}", r.dropped);
    let d = &r.dropped[0];
    assert_eq!(d.get::<&str>("reason").unwrap(), "rejected by the service");
    let lost = u64::from(d.get::<u32>("frames").unwrap());
    assert_eq!(
        stored_frames(&ep, "err4006").get(&1).copied().unwrap_or(0) + lost,
        r.frames["video_0"],
        "everything else arrived"
    );
    assert!(
        r.warnings.iter().any(|w| w.contains("dropped")),
        "{:?}",
        r.warnings
    );
}

#[test]
fn control_plane_5xx_and_throttling_are_retried() {
    let ep = endpoint();
    ep.faults()
        .fail_requests(2, HttpFault::service_unavailable());
    ep.faults().fail_requests(2, HttpFault::throttling());
    let r = go(&ep, "cp-retry", 3, "");
    assert_video_exactly_once(&ep, "cp-retry", &r);
    let failed = ep
        .requests()
        .iter()
        .filter(|q| q.status >= 500 || q.status == 400)
        .count();
    assert!(failed >= 3, "the faults were hit: {:?}", ep.requests());
}

#[test]
fn stall_detected_by_connection_staleness_then_replayed() {
    let ep = endpoint();
    ep.faults()
        .stall(Trigger::Fragment(2), Duration::from_secs(6));
    let r = go(&ep, "stall", 5, "connection-staleness=2");
    assert_video_exactly_once(&ep, "stall", &r);
    assert!(
        ep.sessions(Some("stall")).len() >= 2,
        "staleness forced a reconnect"
    );
}

#[test]
fn outage_longer_than_buffer_duration_drops_oldest_whole_fragments_and_reports_them() {
    let ep = endpoint();
    // The connection dies in fragment 1 and PutMedia is refused for the next six attempts: with
    // the backoff (100 ms doubling, plus jitter) the upload is down for at least 6.3 s.
    ep.faults().reset_at_fragment(1);
    ep.faults().fail_requests(
        6,
        HttpFault::service_unavailable().for_operation("PutMedia"),
    );
    let r = go(&ep, "outage", 6, "buffer-duration=2 replay-duration=2");
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(r.eos, "realtime mode never stalls the pipeline");
    assert!(!r.dropped.is_empty(), "drops are reported");
    let lost: u64 = r
        .dropped
        .iter()
        .map(|d| u64::from(d.get::<u32>("frames").unwrap()))
        .sum();
    let stored = stored_frames(&ep, "outage").get(&1).copied().unwrap_or(0);
    assert_eq!(
        stored + lost,
        r.frames["video_0"],
        "every frame is stored or reported dropped, once: {stored} + {lost} vs {}",
        r.frames["video_0"]
    );
}

#[test]
fn refused_credentials_end_in_one_error_and_stream_error() {
    let ep = endpoint();
    ep.faults().fail_requests(1, HttpFault::not_authorized());
    let status = Arc::new(Mutex::new(None::<u64>));
    let s = status.clone();
    let r = run(
        &ep,
        &video(3, "", "denied"),
        Duration::from_secs(30),
        RunOptions {
            on_playing: Some(Box::new(move |p: &gst::Pipeline| {
                p.by_name("sink")
                    .unwrap()
                    .connect("stream-error", false, move |args| {
                        *s.lock().unwrap() = Some(args[1].get::<u64>().unwrap());
                        None
                    });
            })),
            ..Default::default()
        },
    );
    assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
    assert!(r.errors[0].contains("NotAuthorized"), "{:?}", r.errors);
    assert_eq!(*status.lock().unwrap(), Some(0x5200_0010));
}

#[test]
fn eos_waits_for_persisted_at_most_stop_stream_timeout() {
    let ep = endpoint();
    ep.faults().drop_acks(AckDrop {
        event_types: vec![AckEventType::Persisted],
        ..Default::default()
    });
    let r = go(&ep, "no-persisted", 2, "stop-stream-timeout=2");
    assert!(r.eos, "EOS is posted at stop-stream-timeout");
    assert!(
        r.warnings.iter().any(|w| w.contains("not confirmed")),
        "with a warning: {:?}",
        r.warnings
    );
    let after = r.eos_after.unwrap();
    assert!(
        after >= Duration::from_secs(3) && after < Duration::from_secs(8),
        "2 s of media + 2 s timeout: {after:?}"
    );
}

/// A 30 s blackhole (the endpoint stops reading and acknowledging mid-session) inside the
/// default `buffer-duration`: the live pipeline never stalls, and once the network is back
/// every frame arrives exactly once.
#[test]
fn thirty_second_blackhole_loses_and_duplicates_nothing() {
    let ep = endpoint();
    ep.faults()
        .stall(Trigger::Fragment(3), Duration::from_secs(30));
    let r = go(&ep, "blackhole", 40, "");
    assert_video_exactly_once(&ep, "blackhole", &r);
    assert_eq!(r.frames["video_0"], 40 * 30, "the source was never held up");
    let eos = r.eos_after.unwrap();
    assert!(
        eos < Duration::from_secs(55),
        "EOS {eos:?} after 40 s of media: the backlog drained at once"
    );
    assert_eq!(
        ep.sessions(Some("blackhole")).len(),
        1,
        "the session outlived the blackhole"
    );
    // Fragments sent during the blackhole were persisted only after it.
    let lat = r
        .persisted_latencies
        .iter()
        .max()
        .copied()
        .unwrap_or_default();
    assert!(lat >= Duration::from_secs(20), "max latency {lat:?}");
}

/// An offline upload through a slow uplink: the whole recording is written into the socket
/// buffers at once and the request ends long before the service has read it. The session keeps
/// waiting while ACKs come (it gave up 15 s after ending the request, and the element never
/// posted EOS with fragments unconfirmed); every frame is persisted and EOS follows.
#[test]
fn offline_upload_through_a_slow_uplink_persists_everything_and_ends() {
    let ep = LocalEndpoint::start(Config {
        uplink_bps: Some(1_000_000),
        ..Default::default()
    })
    .expect("the local endpoint starts");
    let name = "slow-uplink";
    // 8 s of 2 Mbit/s video: ~2 MB, ~16 s through a 1 Mbit/s uplink.
    let description = format!(
        "videotestsrc num-buffers=240 pattern=snow ! video/x-raw,format=I420,width=640,height=480,framerate=30/1 \
         ! x264enc speed-preset=ultrafast bitrate=2000 key-int-max=30 bframes=0 ! h264parse \
         ! kvssink name=sink stream-name={name} streaming-type=offline"
    );
    let r = run(
        &ep,
        &description,
        Duration::from_secs(60),
        RunOptions::default(),
    );
    assert_video_exactly_once(&ep, name, &r);
    let eos_after = r.eos_after.unwrap();
    assert!(
        eos_after > Duration::from_secs(15),
        "the uplink kept the upload going past 15 s (else this does not test the case): {eos_after:?}"
    );
}
