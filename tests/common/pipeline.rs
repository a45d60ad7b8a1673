//! Running real GStreamer pipelines through `kvssink` against the local KVS endpoint, and
//! collecting what happened: bus messages, frames that entered the sink per pad, ACK messages.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use gst::prelude::*;
use kvs_local_endpoint::LocalEndpoint;

/// The environment is read at NULL→READY; tests that set it must not overlap there.
static ENV_LOCK: Mutex<()> = Mutex::new(());

#[derive(Debug, Default)]
pub struct Run {
    pub eos: bool,
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
    /// Buffers that entered kvssink, per sink pad name.
    pub frames: BTreeMap<String, u64>,
    /// `(event, timecode)` of every `kvssink-fragment-ack` message.
    pub acks: Vec<(String, u64)>,
    /// `kvssink-fragment-dropped` messages.
    pub dropped: Vec<gst::Structure>,
    /// `kvssink-metrics` messages (`get-kvs-metrics=true`).
    pub metrics: Vec<gst::Structure>,
    pub elapsed: Duration,
    /// From NULL→PLAYING call until EOS was seen.
    pub eos_after: Option<Duration>,
    /// From NULL→PLAYING call until the last PERSISTED message was seen.
    pub last_persisted_after: Option<Duration>,
    /// `latency-us` of the PERSISTED messages that carry it.
    pub persisted_latencies: Vec<Duration>,
}

impl Run {
    pub fn persisted(&self) -> usize {
        self.acks.iter().filter(|(e, _)| e == "PERSISTED").count()
    }
}

/// Called once the pipeline is PLAYING.
pub type OnPlaying<'a> = Box<dyn FnOnce(&gst::Pipeline) + 'a>;

/// Options of a run beyond the pipeline text.
#[derive(Default)]
pub struct RunOptions<'a> {
    pub dump_dir: Option<&'a Path>,
    pub extra_env: Vec<(&'static str, String)>,
    /// Variables (of the endpoint's `env()` among others) unset while the element starts.
    pub remove_env: Vec<&'static str>,
    /// Called once the pipeline is PLAYING, with the pipeline.
    pub on_playing: Option<OnPlaying<'a>>,
    /// Called with the pipeline before it starts (to add probes that see every buffer).
    pub on_created: Option<OnPlaying<'a>>,
}

/// Runs `description` (with a kvssink named `sink`) until EOS, an error or `timeout`.
pub fn run(
    endpoint: &LocalEndpoint,
    description: &str,
    timeout: Duration,
    opts: RunOptions<'_>,
) -> Run {
    crate::common::init();
    let pipeline = gst::parse::launch(description)
        .unwrap_or_else(|e| panic!("{description}: {e}"))
        .downcast::<gst::Pipeline>()
        .unwrap();
    let sink = pipeline.by_name("sink").expect("a kvssink named sink");
    if let Some(f) = opts.on_created {
        f(&pipeline);
    }
    let frames = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    for pad in sink.sink_pads() {
        let frames = frames.clone();
        let name = pad.name().to_string();
        frames.lock().unwrap().insert(name.clone(), 0);
        pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            *frames.lock().unwrap().get_mut(&name).unwrap() += 1;
            gst::PadProbeReturn::Ok
        });
    }
    let started = Instant::now();
    {
        let _env = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        // The values `extra_env` replaces, restored below (e.g. AWS_EC2_METADATA_DISABLED, which
        // the whole test process keeps: tests/common/no_instance_metadata.rs).
        let previous: Vec<_> = opts
            .extra_env
            .iter()
            .map(|(k, _)| (k, std::env::var_os(k)))
            .collect();
        // SAFETY: ENV_LOCK serializes every environment change and read of these tests.
        unsafe {
            for (k, v) in endpoint.env() {
                std::env::set_var(k, v);
            }
            match opts.dump_dir {
                Some(d) => std::env::set_var("KVS_DEBUG_DUMP_DATA_FILE_DIR", d),
                None => std::env::remove_var("KVS_DEBUG_DUMP_DATA_FILE_DIR"),
            }
            for (k, v) in &opts.extra_env {
                std::env::set_var(k, v);
            }
            for k in &opts.remove_env {
                std::env::remove_var(k);
            }
        }
        let _ = pipeline.set_state(gst::State::Ready);
        for (k, v) in previous {
            // SAFETY: as above.
            unsafe {
                match v {
                    Some(v) => std::env::set_var(k, v),
                    None => std::env::remove_var(k),
                }
            }
        }
    }
    let bus = pipeline.bus().unwrap();
    let mut result = Run::default();
    if pipeline.set_state(gst::State::Playing).is_ok()
        && let Some(f) = opts.on_playing
    {
        f(&pipeline);
    }
    let deadline = started + timeout;
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_nseconds(
            (deadline - now).as_nanos() as u64
        )) else {
            break;
        };
        match msg.view() {
            gst::MessageView::Eos(_) => {
                result.eos = true;
                result.eos_after = Some(started.elapsed());
                break;
            }
            gst::MessageView::Error(e) => {
                result
                    .errors
                    .push(format!("{} ({:?})", e.error(), e.debug()));
                break;
            }
            gst::MessageView::Warning(w) => result.warnings.push(w.error().to_string()),
            gst::MessageView::Element(e) => {
                let Some(s) = e.structure() else { continue };
                match s.name().as_str() {
                    "kvssink-fragment-ack" => {
                        let event = s.get::<String>("event").unwrap();
                        if event == "PERSISTED" {
                            result.last_persisted_after = Some(started.elapsed());
                            if let Ok(us) = s.get::<u64>("latency-us") {
                                result.persisted_latencies.push(Duration::from_micros(us));
                            }
                        }
                        result.acks.push((event, s.get::<u64>("timecode").unwrap()));
                    }
                    "kvssink-fragment-dropped" => result.dropped.push(s.to_owned()),
                    "kvssink-metrics" => result.metrics.push(s.to_owned()),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    let stop = Instant::now();
    pipeline.set_state(gst::State::Null).unwrap();
    assert!(
        stop.elapsed() < Duration::from_secs(10),
        "shutdown to NULL took {:?}",
        stop.elapsed()
    );
    result.elapsed = started.elapsed();
    result.frames = frames.lock().unwrap().clone();
    result
}

/// Frames per track number stored by the endpoint for `stream` (persisted fragments only).
pub fn stored_frames(endpoint: &LocalEndpoint, stream: &str) -> BTreeMap<u64, u64> {
    let mut out = BTreeMap::new();
    for f in endpoint.fragments(stream) {
        if f.state == kvs_local_endpoint::FragmentState::Persisted {
            for (track, n) in &f.frames_per_track {
                *out.entry(*track).or_default() += n;
            }
        }
    }
    out
}

/// Wall-clock entry time of each buffer into kvssink, per pad, with its running time (ms).
pub type Entries = Arc<Mutex<BTreeMap<String, Vec<(u64, SystemTime)>>>>;

pub fn record_entries(pipeline: &gst::Pipeline, entries: &Entries) {
    let sink = pipeline.by_name("sink").unwrap();
    for pad in sink.sink_pads() {
        let entries = entries.clone();
        let name = pad.name().to_string();
        pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
            let segment = pad
                .sticky_event::<gst::event::Segment>(0)
                .and_then(|e| e.segment().downcast_ref::<gst::ClockTime>().cloned());
            if let Some(b) = info.buffer()
                && let Some(segment) = segment
                && let Some(pts) = b.pts().and_then(|t| segment.to_running_time(t))
            {
                entries
                    .lock()
                    .unwrap()
                    .entry(name.clone())
                    .or_default()
                    .push((pts.mseconds(), SystemTime::now()));
            }
            gst::PadProbeReturn::Ok
        });
    }
}

/// Frame latencies (frame enters kvssink → its block read by the endpoint) of `track`,
/// matched by timecode; the first fragment (stream and connection setup) is left out.
pub fn frame_latencies(
    ep: &LocalEndpoint,
    name: &str,
    pad: &str,
    track: u64,
    entries: &Entries,
) -> Vec<Duration> {
    let entries = entries.lock().unwrap();
    let entered = &entries[pad];
    let mut frags: Vec<_> = ep
        .fragments(name)
        .into_iter()
        .filter(|f| f.state == kvs_local_endpoint::FragmentState::Persisted)
        .collect();
    frags.sort_by_key(|f| f.index);
    let arrivals: Vec<_> = frags
        .iter()
        .flat_map(|f| f.frame_arrivals.iter().filter(|a| a.track == track))
        .collect();
    // The timeline maps PTS onto the wall clock by one offset: the first video frame's.
    let first_video = frags[0]
        .frame_arrivals
        .iter()
        .find(|a| a.track == 1)
        .unwrap();
    let video_entries = &entries["video_0"];
    let offset = first_video.timecode - video_entries[0].0 as i64;
    let by_pts: BTreeMap<i64, SystemTime> = entered.iter().map(|(p, t)| (*p as i64, *t)).collect();
    let mut out = Vec::new();
    for a in arrivals {
        if a.timecode < frags[1].timecode as i64 {
            continue;
        }
        let pts = a.timecode - offset;
        let entry = (pts - 1..=pts + 1).find_map(|p| by_pts.get(&p));
        let Some(entry) = entry else { continue };
        let at = SystemTime::UNIX_EPOCH + Duration::from_micros(a.at_unix_us);
        out.push(at.duration_since(*entry).unwrap_or_default());
    }
    out
}

/// Runs a `gst-launch-1.0` line (test media), failing the test if it fails.
pub fn gst_launch(line: &str) {
    let out = std::process::Command::new("timeout")
        .args(["120", "gst-launch-1.0", "-q"])
        .args(line.split_whitespace())
        .env_remove("GST_DEBUG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{line}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// No error, EOS, nothing dropped, no fragment stored twice, and every video frame that entered
/// the sink stored (track 1).
pub fn assert_video_exactly_once(ep: &LocalEndpoint, name: &str, run: &Run) {
    assert!(run.errors.is_empty(), "{name}: {:?}", run.errors);
    assert!(run.eos, "{name}: no EOS");
    assert!(run.dropped.is_empty(), "{name}: {:?}", run.dropped);
    let persisted: Vec<_> = ep
        .fragments(name)
        .into_iter()
        .filter(|f| f.state == kvs_local_endpoint::FragmentState::Persisted)
        .collect();
    let timecodes: std::collections::BTreeSet<u64> = persisted.iter().map(|f| f.timecode).collect();
    assert_eq!(
        timecodes.len(),
        persisted.len(),
        "{name}: a fragment was stored twice"
    );
    assert_eq!(
        stored_frames(ep, name).get(&1).copied(),
        run.frames.get("video_0").copied(),
        "{name}: frames stored vs. frames sent"
    );
}
