//! Observability against the local KVS endpoint: the `stats` property read from another thread
//! while a live pipeline uploads (counters grow and never go back, reading never holds the
//! stream up), what it shows of a stall and of an ERROR ACK, the `kvssink-metrics` messages of
//! `get-kvs-metrics=true`, and the `file_upload` example's progress lines.

mod common;
use common::examples;
use common::pipeline;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use examples::Example;
use gst::prelude::*;
use kvs_local_endpoint::{Config, Credentials, LocalEndpoint, Trigger};
use pipeline::{Run, RunOptions, assert_video_exactly_once, gst_launch, run};

/// Fields that count and must never go back.
const COUNTERS: &[&str] = &[
    "video_0-frames-in",
    "video_0-frames-dropped",
    "fragments-built",
    "fragments-sent",
    "fragments-persisted",
    "fragments-dropped",
    "persisted-duration-ms",
    "bytes-sent",
    "sessions",
    "reconnects",
    "error-acks",
];

const STATES: &[&str] = &[
    "setting-up",
    "streaming",
    "stalled",
    "reconnecting",
    "stopping",
    "stopped",
    "error",
];

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

fn u(s: &gst::StructureRef, field: &str) -> u64 {
    s.get::<u64>(field)
        .unwrap_or_else(|e| panic!("{field}: {e} in {s}"))
}

fn f(s: &gst::StructureRef, field: &str) -> f64 {
    s.get::<f64>(field)
        .unwrap_or_else(|e| panic!("{field}: {e} in {s}"))
}

fn state(s: &gst::StructureRef) -> String {
    s.get::<String>("state").unwrap()
}

/// Reads `stats` on its own thread until stopped, checking every read: a valid state, and no
/// counter going back. Keeps a sample at most every `keep_every`; pauses `pause` between reads
/// (none: only yields).
struct Reader {
    sink: gst::Element,
    stop: Arc<AtomicBool>,
    reads: Arc<AtomicU64>,
    thread: JoinHandle<Result<Vec<(Duration, gst::Structure)>, String>>,
}

impl Reader {
    fn start(sink: gst::Element, pause: Option<Duration>, keep_every: Duration) -> Reader {
        let stop = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicU64::new(0));
        let (s, stop2, reads2) = (sink.clone(), stop.clone(), reads.clone());
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut samples: Vec<(Duration, gst::Structure)> = Vec::new();
            let mut previous: Option<gst::Structure> = None;
            while !stop2.load(Ordering::SeqCst) {
                let st = s.property::<gst::Structure>("stats");
                reads2.fetch_add(1, Ordering::Relaxed);
                if st.name() != "kvssink-stats" || !STATES.contains(&state(&st).as_str()) {
                    return Err(format!("unexpected {st}"));
                }
                if let Some(prev) = &previous {
                    for &c in COUNTERS {
                        let (a, b) = (prev.get::<u64>(c), st.get::<u64>(c));
                        if let (Ok(a), Ok(b)) = (a, b)
                            && b < a
                        {
                            return Err(format!("{c} went back from {a} to {b}"));
                        }
                    }
                }
                let at = started.elapsed();
                if samples.last().is_none_or(|(t, _)| at - *t >= keep_every) {
                    samples.push((at, st.clone()));
                }
                previous = Some(st);
                match pause {
                    Some(p) => std::thread::sleep(p),
                    None => std::thread::yield_now(),
                }
            }
            Ok(samples)
        });
        Reader {
            sink,
            stop,
            reads,
            thread,
        }
    }

    fn finish(self) -> (Vec<(Duration, gst::Structure)>, u64, gst::Element) {
        self.stop.store(true, Ordering::SeqCst);
        let samples = self
            .thread
            .join()
            .expect("the reader did not panic")
            .unwrap_or_else(|e| panic!("{e}"));
        (samples, self.reads.load(Ordering::Relaxed), self.sink)
    }
}

/// What a run gives these tests: the run, the reader's samples and read count, the final
/// `stats` (pipeline in NULL), and the longest gap between two buffers entering the sink.
struct Observed {
    run: Run,
    samples: Vec<(Duration, gst::Structure)>,
    reads: u64,
    last: gst::Structure,
    max_gap: Duration,
}

fn observe(
    ep: &LocalEndpoint,
    description: &str,
    timeout: Duration,
    pause: Option<Duration>,
    keep_every: Duration,
) -> Observed {
    let mut reader = None;
    let gaps = Arc::new(Mutex::new((None::<Instant>, Duration::ZERO)));
    let g = gaps.clone();
    let r = run(
        ep,
        description,
        timeout,
        RunOptions {
            on_created: Some(Box::new(|p: &gst::Pipeline| {
                let sink = p.by_name("sink").unwrap();
                for pad in sink.sink_pads() {
                    let g = g.clone();
                    pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
                        let mut g = g.lock().unwrap();
                        let now = Instant::now();
                        if let Some(last) = g.0 {
                            g.1 = g.1.max(now - last);
                        }
                        g.0 = Some(now);
                        gst::PadProbeReturn::Ok
                    });
                }
                reader = Some(Reader::start(sink, pause, keep_every));
            })),
            ..Default::default()
        },
    );
    let (samples, reads, sink) = reader.expect("the pipeline was created").finish();
    let last = sink.property::<gst::Structure>("stats");
    let max_gap = gaps.lock().unwrap().1;
    Observed {
        run: r,
        samples,
        reads,
        last,
        max_gap,
    }
}

/// A live upload while another thread reads `stats` in a loop (thousands of reads a second):
/// every read is valid and no counter goes back; the counters grow during the run and end at
/// what arrived; the stream was never held up.
#[test]
fn stats_read_in_a_loop_during_a_live_upload_grow_and_never_hold_the_stream() {
    let ep = endpoint();
    let name = "stats-live";
    // Not a busy loop: the machine running the tests is shared.
    let o = observe(
        &ep,
        &video(8, "", name),
        Duration::from_secs(60),
        Some(Duration::from_micros(200)),
        Duration::from_millis(50),
    );
    assert_video_exactly_once(&ep, name, &o.run);
    assert_eq!(o.run.frames["video_0"], 8 * 30);
    assert!(o.reads >= 1000, "only {} reads", o.reads);
    assert!(
        o.max_gap < Duration::from_secs(1),
        "a buffer waited {:?} to enter kvssink",
        o.max_gap
    );
    let eos = o.run.eos_after.unwrap();
    assert!(eos < Duration::from_secs(20), "EOS after {eos:?}");

    let states: BTreeSet<String> = o.samples.iter().map(|(_, s)| state(s)).collect();
    assert!(states.contains("streaming"), "{states:?}");
    // Mid-run: something persisted, more to come; media is flowing out.
    let mid = o
        .samples
        .iter()
        .map(|(_, s)| s)
        .find(|s| state(s) == "streaming" && u(s, "fragments-persisted") >= 3)
        .expect("a sample while streaming");
    assert!(u(mid, "bytes-sent") > 0 && u(mid, "video_0-frames-in") > 0);
    assert!(u(mid, "uplink-bitrate-bps") > 0);
    let fp = |s: &gst::StructureRef| u(s, "fragments-persisted");
    assert!(fp(mid) < fp(&o.last));
    assert!(u(mid, "bytes-sent") < u(&o.last, "bytes-sent"));

    let last = &o.last;
    assert_eq!(state(last), "stopped");
    assert_eq!(last.get::<String>("stream-name").unwrap(), name);
    assert_eq!(u(last, "video_0-frames-in"), 8 * 30);
    assert_eq!(u(last, "video_0-frames-dropped"), 0);
    assert_eq!(fp(last), o.run.persisted() as u64);
    assert_eq!(fp(last), ep.fragments(name).len() as u64);
    assert_eq!(u(last, "fragments-built"), fp(last));
    assert!(u(last, "fragments-sent") >= fp(last));
    assert_eq!(u(last, "fragments-dropped"), 0);
    assert_eq!(u(last, "buffered-bytes"), 0);
    assert_eq!(u(last, "buffered-duration-ms"), 0);
    assert_eq!(f(last, "storage-used-percent"), 0.0);
    let persisted_ms = u(last, "persisted-duration-ms");
    assert!(
        (7_500..=8_100).contains(&persisted_ms),
        "{persisted_ms} ms of 8 s persisted"
    );
    assert_eq!(u(last, "sessions"), 1);
    assert_eq!(u(last, "reconnects"), 0);
    assert_eq!(u(last, "error-acks"), 0);
    assert_eq!(last.get::<String>("last-error").unwrap(), "");
    for l in ["frame-latency-ms", "persist-latency-ms"] {
        let (p50, p99) = (f(last, &format!("{l}-p50")), f(last, &format!("{l}-p99")));
        assert!(p50 > 0.0 && p99 >= p50 && p99 < 5_000.0, "{l}: {p50} {p99}");
    }
}

/// A 10 s stall of the connection inside `buffer-duration`: `buffered-duration-ms` rises and
/// the state says `stalled`; afterwards the backlog drains, the state is `streaming` again and
/// `buffered-duration-ms` falls back. Nothing is lost.
#[test]
fn stats_show_a_stall_and_the_recovery() {
    let ep = endpoint();
    let name = "stats-stall";
    ep.faults()
        .stall(Trigger::Fragment(3), Duration::from_secs(10));
    let o = observe(
        &ep,
        &video(20, "", name),
        Duration::from_secs(90),
        Some(Duration::from_millis(20)),
        Duration::from_millis(100),
    );
    assert_video_exactly_once(&ep, name, &o.run);
    let buffered = |s: &gst::StructureRef| u(s, "buffered-duration-ms");
    let (peak_at, peak) = o
        .samples
        .iter()
        .enumerate()
        .max_by_key(|(_, (_, s))| buffered(s))
        .map(|(i, (_, s))| (i, s))
        .unwrap();
    assert!(buffered(peak) >= 8_000, "peak {peak}");
    let stalled: Vec<_> = o
        .samples
        .iter()
        .filter(|(_, s)| state(s) == "stalled")
        .collect();
    assert!(
        !stalled.is_empty(),
        "states seen: {:?}",
        o.samples
            .iter()
            .map(|(_, s)| state(s))
            .collect::<BTreeSet<_>>()
    );
    assert!(
        stalled.iter().all(|(_, s)| buffered(s) >= 4_000),
        "stalled with little buffered"
    );
    // Recovery: streaming again with the backlog gone, more persisted than at the peak.
    let after = o.samples[peak_at..]
        .iter()
        .map(|(_, s)| s)
        .find(|s| state(s) == "streaming" && buffered(s) < 2_000)
        .unwrap_or_else(|| panic!("no recovery after {peak}"));
    assert!(u(after, "fragments-persisted") > u(peak, "fragments-persisted"));
    assert_eq!(u(&o.last, "buffered-duration-ms"), 0);
    assert_eq!(u(&o.last, "fragments-dropped"), 0);
}

/// After an ERROR ACK (5000, retried on a new connection): `error-acks` and `last-error` show
/// it, `reconnects` and `sessions` the new connection; nothing is lost and no credential shows.
#[test]
fn stats_show_an_error_ack_and_the_reconnect() {
    let ep = endpoint();
    let name = "stats-error-ack";
    ep.faults().error_ack(2, 5000);
    let o = observe(
        &ep,
        &video(4, "", name),
        Duration::from_secs(60),
        Some(Duration::from_millis(10)),
        Duration::from_millis(50),
    );
    assert_video_exactly_once(&ep, name, &o.run);
    let last = &o.last;
    assert_eq!(u(last, "error-acks"), 1, "{last}");
    let error = last.get::<String>("last-error").unwrap();
    assert!(error.contains("5000"), "{error}");
    assert!(u(last, "reconnects") >= 1, "{last}");
    assert!(u(last, "sessions") >= 2, "{last}");
    let first_error = o
        .samples
        .iter()
        .map(|(_, s)| s)
        .find(|s| u(s, "error-acks") == 1)
        .expect("seen during the run");
    assert!(
        first_error
            .get::<String>("last-error")
            .unwrap()
            .contains("5000")
    );
    let secret = Credentials::default().secret_access_key;
    for (_, s) in &o.samples {
        assert!(!s.to_string().contains(&secret));
    }
}

/// `get-kvs-metrics=true`: a `kvssink-metrics` message per video key frame, with the fields of
/// `stats`, `fragments-persisted` and `bytes-sent` growing; the `stream-client-metric` signal
/// is never emitted (its C++ payload is not reproduced). Without it: no message.
#[test]
fn get_kvs_metrics_posts_metrics_messages_only_when_set() {
    let ep = endpoint();
    let emitted = Arc::new(AtomicU64::new(0));
    let e = emitted.clone();
    let r = run(
        &ep,
        &video(5, "get-kvs-metrics=true", "metrics-on"),
        Duration::from_secs(60),
        RunOptions {
            on_created: Some(Box::new(move |p: &gst::Pipeline| {
                p.by_name("sink")
                    .unwrap()
                    .connect("stream-client-metric", false, move |_| {
                        e.fetch_add(1, Ordering::SeqCst);
                        None
                    });
            })),
            ..Default::default()
        },
    );
    assert!(r.errors.is_empty() && r.eos, "{:?}", r.errors);
    assert_eq!(emitted.load(Ordering::SeqCst), 0, "stream-client-metric");
    // A key frame every 15 frames: 10 in 5 s.
    assert!(
        (9..=11).contains(&r.metrics.len()),
        "{} messages",
        r.metrics.len()
    );
    let names = |s: &gst::StructureRef| s.fields().map(|f| f.to_string()).collect::<Vec<_>>();
    for m in &r.metrics {
        assert_eq!(m.name(), "kvssink-metrics");
        assert_eq!(m.get::<String>("stream-name").unwrap(), "metrics-on");
    }
    for field in ["fragments-persisted", "bytes-sent", "video_0-frames-in"] {
        let values: Vec<u64> = r.metrics.iter().map(|m| u(m, field)).collect();
        assert!(
            values.windows(2).all(|w| w[0] <= w[1]),
            "{field}: {values:?}"
        );
        assert!(values.last() > values.first(), "{field}: {values:?}");
    }
    let e = gst::ElementFactory::make("kvssink").build().unwrap();
    let mut stats_fields = names(&e.property::<gst::Structure>("stats"));
    stats_fields.retain(|f| !f.starts_with("video_") && !f.starts_with("audio_"));
    let mut message_fields = names(&r.metrics[0]);
    message_fields.retain(|f| !f.starts_with("video_") && !f.starts_with("audio_"));
    assert_eq!(message_fields, stats_fields, "the same fields as stats");

    let r = run(
        &ep,
        &video(3, "", "metrics-off"),
        Duration::from_secs(60),
        RunOptions::default(),
    );
    assert!(r.errors.is_empty() && r.eos, "{:?}", r.errors);
    assert!(r.metrics.is_empty(), "{:?}", r.metrics);
}

/// `file_upload` with its output on a pipe: one plain `progress:` line per persisted fragment,
/// the persisted media growing to the file's duration, with the bytes sent, the rate and an
/// ETA. (Several fragments may be persisted before a line is printed: the media counts of two
/// lines can be equal.)
#[test]
fn file_upload_example_prints_a_progress_line_per_fragment_when_not_on_a_terminal() {
    common::init();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("progress.mkv");
    gst_launch(&format!(
        "videotestsrc num-buffers=300 ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 \
         ! x264enc speed-preset=ultrafast bframes=0 key-int-max=30 ! h264parse ! matroskamux \
         ! filesink location={}",
        file.display()
    ));
    let ep = endpoint();
    let out = Example::run(
        "file_upload",
        &[
            file.to_str().unwrap(),
            "--stream",
            "progress",
            "--start-time",
            "1700000000",
        ],
        &ep,
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "{}", out.stderr);
    assert!(!out.stdout.contains('\r'), "no terminal redraws on a pipe");
    let persisted = out.number("summary:", "persisted");
    assert_eq!(persisted, 10, "a fragment per key frame");
    let lines: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("progress:"))
        .collect();
    assert_eq!(lines.len() as u64, persisted, "{}", out.stdout);
    let value = |line: &str, key: &str| -> f64 {
        line.split_whitespace()
            .find_map(|t| t.strip_prefix(&format!("{key}=")))
            .and_then(|v| v.trim_end_matches(['%', 's']).parse().ok())
            .unwrap_or_else(|| panic!("no {key}= in '{line}'"))
    };
    let mut previous = (0.0, 0.0, 0.0);
    for (i, line) in lines.iter().enumerate() {
        let fragments = value(line, "fragments");
        let ms = value(line, "persisted-ms");
        let bytes = value(line, "bytes-sent");
        assert_eq!(fragments, (i + 1) as f64, "{line}");
        assert!(
            ms > 0.0 && ms >= previous.1 && bytes >= previous.2,
            "{line}"
        );
        let total = value(line, "total-ms");
        assert!((9_900.0..=10_100.0).contains(&total), "{line}");
        assert!(value(line, "rate-bps") >= 0.0);
        assert!(value(line, "eta") >= 0.0);
        let percent = value(line, "percent");
        assert!(percent >= previous.0 && percent <= 100.0, "{line}");
        previous = (percent, ms, bytes);
    }
    assert!(previous.0 >= 99.0, "the last line says done: {}", lines[9]);
}

/// The camera example prints a status line from `stats` every `--status-interval` seconds.
#[test]
fn camera_example_prints_status_lines_from_stats() {
    let ep = endpoint();
    let out = Example::run(
        "camera",
        &[
            "--test-sources",
            "--no-audio",
            "--stream",
            "cam-status",
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
            "--status-interval",
            "1",
        ],
        &ep,
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", out.stderr);
    let lines: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("status cam-status: "))
        .collect();
    assert!(lines.len() >= 3, "{}", out.stdout);
    assert!(
        lines
            .iter()
            .any(|l| l.contains(": streaming | frames video_0=")),
        "{lines:?}"
    );
    for l in &lines {
        for part in [
            "fragments ",
            "buffered ",
            "uplink ",
            "latency frame ",
            "reconnects 0",
            "last error: none",
        ] {
            assert!(l.contains(part), "{part} in {l}");
        }
    }
}
