//! End-to-end benchmark: N realtime 1080p30 streams through `kvssink` into the local KVS endpoint.
//!
//! For 1 and 8 streams (by default) it reports CPU time per stream-minute, peak RSS, **frame
//! latency** (a video frame enters kvssink → the endpoint has read its whole block, p50/p99/max)
//! and **fragment latency** (the last frame of a fragment enters kvssink → the endpoint sends its
//! PERSISTED ACK, p50/p99). Entry times come from a buffer probe on each kvssink sink pad; the
//! endpoint (started with `--record-frame-arrivals`) records when it read each block and when it
//! sent each ACK, served at `/_local/streams/NAME/fragments`; frames are matched by timecode (the
//! element maps running time onto the wall clock with one offset per stream, found from the
//! first video frame). Both clocks are this machine's wall clock. Run it through
//! `scripts/bench-streams.sh`, which builds it, starts the local endpoint as a separate process (so
//! the endpoint's CPU is not counted), runs this and stops the endpoint. By hand:
//!
//! ```text
//! cargo build --release --locked --lib --example bench_streams
//! eval "$(kvs_local_endpoint … | grep '^export ')"   # CONTROL_PLANE_URI, AWS_* for the element
//! target/release/examples/bench_streams --streams 1,8 --seconds 60
//! ```
//!
//! ## Method
//! - **Media.** A 1080p30 H.264 clip (x264 ultrafast, `--bitrate` kbit/s, a key frame every `--gop`
//!   frames) with AAC audio is encoded once and cached under the target directory
//!   (`<target>/bench-media/`). Encoding 8 × 1080p30 live would need far more than this benchmark's
//!   machine, and the encoder's CPU is not what we measure.
//! - **Streams.** Each configuration runs in a fresh child process (so peak RSS is per
//!   configuration) holding ONE pipeline with N streams, as a gateway runs them. The child loads the
//!   clip's access units into memory once; per stream and track an `appsrc` (live, format time)
//!   replays them in a loop with continuing timestamps, and `identity sync=true` paces them to the
//!   pipeline clock, so every stream is realtime. Stream `i` starts `i/N` of a GOP later than stream
//!   0, so the streams' key frames (and fragment ends) are spread out as independent cameras' are.
//!   Audio lags video by `--audio-offset-us` (default 0.5 ms), as with independent capture
//!   clocks: on the clip's common time grid an AAC frame (21.33 ms) starts on exactly the same
//!   nanosecond as a key frame every 8 s, and such ties are a case of their own (see
//!   `docs/benchmarks.md`); 0.5 ms keeps every audio frame ≥ 0.5 ms away from every key frame.
//! - **Baseline.** The same pipelines with `fakesink` in place of `kvssink`; the difference is the
//!   CPU and memory attributable to `kvssink`.
//! - **Window.** After `--warmup` seconds (stream creation, first connection), CPU time (utime +
//!   stime of the whole process from `/proc/self/stat`, dead threads included) is measured over
//!   `--seconds` (`--baseline-seconds` for the baseline). Latency counts the PERSISTED ACKs read
//!   in the window. Peak RSS is `VmHWM` of `/proc/self/status` at the window's end, so it includes
//!   the in-memory clip (the same in both sinks' runs).
//! - **Then** every stream gets EOS and the child waits (bounded) for the pipeline's EOS, which
//!   `kvssink` posts after the last fragment is PERSISTED.
//!
//! The benchmark fails (exit 1) on any bus error, `kvssink-fragment-dropped` message, ERROR ACK,
//! a pipeline that does not reach EOS in time, or a stream that fell more than 5 % behind realtime.
//! It refuses a `CONTROL_PLANE_URI` that is not on the loopback interface, so it never uploads to
//! AWS by accident. `kvssink` is loaded from the built `libgstkvssink.so` (`--plugin-dir`, default
//! the directory above this executable's, e.g. `target/release`), as users load it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use gst::prelude::*;
use serde::{Deserialize, Serialize};

const HELP: &str = "\
bench_streams: N realtime 1080p30 streams through kvssink into the local KVS endpoint

Needs the endpoint's environment (CONTROL_PLANE_URI on 127.0.0.1, AWS_* credentials);
scripts/bench-streams.sh provides it.

Options:
  --streams LIST          stream counts to run (default 1,8)
  --seconds S             measured window per kvssink run (default 60)
  --baseline-seconds S    measured window per fakesink baseline run (default 30)
  --no-baseline           skip the fakesink baseline runs
  --warmup S              seconds before the window starts (default 5)
  --clip-seconds S        length of the pre-encoded clip (default 20)
  --bitrate KBPS          H.264 bitrate of the clip (default 5000)
  --gop FRAMES            key frame interval of the clip (default 30: 1 s fragments)
  --no-audio              video only (default: H.264 + AAC)
  --audio-offset-us US    audio timestamps lag video by this much (default 500: as from
                          independent capture clocks; 0 puts audio frames on exactly the same
                          nanosecond as key frames every 8 s)
  --media-dir DIR         where the clip is cached (default <target>/bench-media)
  --plugin-dir DIR        where libgstkvssink.so is (default: the profile directory above this
                          executable, e.g. target/release)
  --endpoint-pid PID      also report the endpoint process's CPU during each run
  --uplink-bps N          the endpoint's uplink limit (set by scripts/bench-streams.sh), for
                          the report: the largest frame's transmission time at that rate
  --json FILE             also write the results as JSON
";

/// The clip's frame rate (the benchmark is about 1080p30 cameras).
const FPS: u64 = 30;
const AUDIO_RATE: u64 = 48_000;
const AAC_FRAME: u64 = 1024;
/// Linux reports utime/stime in USER_HZ ticks, which is 100 on every architecture's ABI.
const TICKS_PER_SECOND: f64 = 100.0;
/// How long a child may take to reach EOS after the window (kvssink waits for PERSISTED ACKs).
const EOS_TIMEOUT: Duration = Duration::from_secs(60);
/// A stream that delivered fewer frames than this share of realtime fails the run.
const MIN_REALTIME_RATIO: f64 = 0.95;

#[derive(Clone, Debug)]
struct Options {
    streams: Vec<usize>,
    seconds: u64,
    baseline_seconds: u64,
    baseline: bool,
    warmup: u64,
    clip_seconds: u64,
    bitrate_kbps: u32,
    gop: u32,
    audio: bool,
    audio_offset_us: u64,
    media_dir: Option<PathBuf>,
    plugin_dir: Option<PathBuf>,
    endpoint_pid: Option<u32>,
    json: Option<PathBuf>,
    uplink_bps: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            streams: vec![1, 8],
            seconds: 60,
            baseline_seconds: 30,
            baseline: true,
            warmup: 5,
            clip_seconds: 20,
            bitrate_kbps: 5000,
            gop: 30,
            audio: true,
            audio_offset_us: 500,
            media_dir: None,
            plugin_dir: None,
            endpoint_pid: None,
            json: None,
            uplink_bps: None,
        }
    }
}

/// What one child run is asked to do (`--child`).
#[derive(Clone, Debug)]
struct ChildSpec {
    sink: Sink,
    streams: usize,
    seconds: u64,
    warmup: u64,
    gop: u32,
    audio_offset_us: u64,
    clip: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Sink {
    Kvssink,
    Fakesink,
}

impl Sink {
    fn name(self) -> &'static str {
        match self {
            Sink::Kvssink => "kvssink",
            Sink::Fakesink => "fakesink",
        }
    }
}

/// One child's measurements, printed as a `BENCH-RESULT {json}` line.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct RunResult {
    sink: Option<Sink>,
    streams: usize,
    window_s: f64,
    cpu_s: f64,
    peak_rss_kib: u64,
    /// PERSISTED ACKs read in the window, and their latency percentiles.
    persisted: u64,
    latency_p50_ms: Option<f64>,
    latency_p99_ms: Option<f64>,
    latency_max_ms: Option<f64>,
    /// Video frames in the window: enters kvssink → block read by the endpoint.
    frames_measured: u64,
    frame_p50_ms: Option<f64>,
    frame_p99_ms: Option<f64>,
    frame_max_ms: Option<f64>,
    /// Fragments PERSISTED in the window: last frame enters kvssink → PERSISTED sent.
    fragment_p50_ms: Option<f64>,
    fragment_p99_ms: Option<f64>,
    /// The clip's largest video frame, bytes.
    largest_frame: u64,
    /// Video frames delivered per stream per second in the window (30 = realtime).
    video_fps: f64,
    dropped: u64,
    error_acks: u64,
    warnings: u64,
    errors: Vec<String>,
    /// Seconds from the first EOS sent to the pipeline's EOS.
    eos_s: Option<f64>,
    /// Filled in by the parent when `--endpoint-pid` is given: the endpoint's CPU share of one
    /// core over the child's whole life.
    endpoint_cpu_pct: Option<f64>,
}

impl RunResult {
    fn failed(&self) -> bool {
        !self.errors.is_empty() || self.dropped > 0 || self.error_acks > 0
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = if args.first().map(String::as_str) == Some("--child") {
        parse_child(&args[1..]).and_then(|spec| {
            let r = run_child(&spec)?;
            println!(
                "BENCH-RESULT {}",
                serde_json::to_string(&r).map_err(|e| e.to_string())?
            );
            Ok(!r.failed())
        })
    } else {
        match parse_options(&args) {
            Ok(None) => {
                print!("{HELP}");
                return ExitCode::SUCCESS;
            }
            Ok(Some(o)) => run_parent(&o),
            Err(e) => {
                eprintln!("error: {e}\n\n{HELP}");
                return ExitCode::from(2);
            }
        }
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse_options(args: &[String]) -> Result<Option<Options>, String> {
    let mut o = Options::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        let number = |v: &String| v.parse::<u64>().map_err(|e| format!("{arg}: {e}"));
        match arg.as_str() {
            "--help" | "-h" => return Ok(None),
            "--streams" => {
                o.streams = value()?
                    .split(',')
                    .map(|s| match s.trim().parse::<usize>() {
                        Ok(n) if n > 0 => Ok(n),
                        _ => Err(format!("--streams: bad count '{s}'")),
                    })
                    .collect::<Result<_, _>>()?
            }
            "--seconds" => o.seconds = number(value()?)?,
            "--baseline-seconds" => o.baseline_seconds = number(value()?)?,
            "--no-baseline" => o.baseline = false,
            "--warmup" => o.warmup = number(value()?)?,
            "--clip-seconds" => o.clip_seconds = number(value()?)?.max(2),
            "--bitrate" => o.bitrate_kbps = number(value()?)? as u32,
            "--gop" => o.gop = (number(value()?)? as u32).max(1),
            "--no-audio" => o.audio = false,
            "--uplink-bps" => o.uplink_bps = Some(number(value()?)?),
            "--audio-offset-us" => o.audio_offset_us = number(value()?)?,
            "--media-dir" => o.media_dir = Some(PathBuf::from(value()?)),
            "--plugin-dir" => o.plugin_dir = Some(PathBuf::from(value()?)),
            "--endpoint-pid" => o.endpoint_pid = Some(number(value()?)? as u32),
            "--json" => o.json = Some(PathBuf::from(value()?)),
            other => return Err(format!("unknown option {other}")),
        }
    }
    if o.seconds == 0 || (o.baseline && o.baseline_seconds == 0) {
        return Err("windows must be at least 1 s".into());
    }
    Ok(Some(o))
}

fn parse_child(args: &[String]) -> Result<ChildSpec, String> {
    let mut spec = ChildSpec {
        sink: Sink::Kvssink,
        streams: 1,
        seconds: 10,
        warmup: 5,
        gop: 30,
        audio_offset_us: 0,
        clip: PathBuf::new(),
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let v = it.next().ok_or(format!("{arg} needs a value"))?;
        let number = || v.parse::<u64>().map_err(|e| format!("{arg}: {e}"));
        match arg.as_str() {
            "--sink" => {
                spec.sink = match v.as_str() {
                    "kvssink" => Sink::Kvssink,
                    "fakesink" => Sink::Fakesink,
                    other => return Err(format!("unknown sink {other}")),
                }
            }
            "--streams" => spec.streams = number()? as usize,
            "--seconds" => spec.seconds = number()?,
            "--warmup" => spec.warmup = number()?,
            "--gop" => spec.gop = number()? as u32,
            "--audio-offset-us" => spec.audio_offset_us = number()?,
            "--clip" => spec.clip = PathBuf::from(v),
            other => return Err(format!("unknown child option {other}")),
        }
    }
    Ok(spec)
}

// ---------------------------------------------------------------------------------------------
// Parent: prepare the clip, run one child per configuration, print the table.

fn run_parent(o: &Options) -> Result<bool, String> {
    check_endpoint_env()?;
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    // target/<profile>/examples/bench_streams
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("cannot locate the profile directory")?
        .to_path_buf();
    let plugin_dir = o.plugin_dir.clone().unwrap_or_else(|| profile_dir.clone());
    if !plugin_dir.join("libgstkvssink.so").is_file() {
        return Err(format!(
            "no libgstkvssink.so in {} (build it with cargo build --release --lib, or pass --plugin-dir)",
            plugin_dir.display()
        ));
    }
    let media_dir = o.media_dir.clone().unwrap_or_else(|| {
        profile_dir
            .parent()
            .unwrap_or(&profile_dir)
            .join("bench-media")
    });
    gst::init().map_err(|e| format!("GStreamer init: {e}"))?;
    let clip = ensure_clip(o, &media_dir)?;

    let mut results = Vec::new();
    let mut ok = true;
    for &n in &o.streams {
        let mut runs = vec![(Sink::Kvssink, o.seconds)];
        if o.baseline {
            runs.push((Sink::Fakesink, o.baseline_seconds));
        }
        for (sink, seconds) in runs {
            let spec = ChildSpec {
                sink,
                streams: n,
                seconds,
                warmup: o.warmup,
                gop: o.gop,
                audio_offset_us: o.audio_offset_us,
                clip: clip.clone(),
            };
            eprintln!(
                "==> {n} stream(s) into {}: {}s warm-up + {seconds}s measured",
                sink.name(),
                o.warmup
            );
            let r = spawn_child(&exe, &plugin_dir, &spec, o.endpoint_pid)?;
            if r.failed() {
                ok = false;
                eprintln!(
                    "FAILED: {n} stream(s) into {}: {} error(s), {} dropped, {} ERROR ACK(s)",
                    sink.name(),
                    r.errors.len(),
                    r.dropped,
                    r.error_acks
                );
                for e in &r.errors {
                    eprintln!("  {e}");
                }
            }
            results.push(r);
        }
    }

    print!("{}", render_tables(o, &results));
    if let Some(path) = &o.json {
        let json = serde_json::to_string_pretty(&results).map_err(|e| e.to_string())?;
        std::fs::write(path, json).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(ok)
}

/// The element must talk to a local endpoint, never to AWS.
fn check_endpoint_env() -> Result<(), String> {
    let uri = std::env::var("CONTROL_PLANE_URI").map_err(|_| {
        "CONTROL_PLANE_URI is not set: start the local endpoint (scripts/bench-streams.sh does)"
            .to_owned()
    })?;
    let host = uri
        .split_once("://")
        .map_or(uri.as_str(), |(_, rest)| rest)
        .split(['/', '?'])
        .next()
        .unwrap_or("");
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    if !matches!(host, "127.0.0.1" | "localhost" | "[::1]") {
        return Err(format!(
            "CONTROL_PLANE_URI points at '{host}', not the loopback interface; this benchmark only runs against the local endpoint"
        ));
    }
    Ok(())
}

/// Encodes the clip once (cached by its parameters) and returns its path.
fn ensure_clip(o: &Options, media_dir: &Path) -> Result<PathBuf, String> {
    let name = format!(
        "clip-1080p30-{}s-{}k-gop{}{}.mkv",
        o.clip_seconds,
        o.bitrate_kbps,
        o.gop,
        if o.audio { "-aac" } else { "" }
    );
    let path = media_dir.join(&name);
    if path.is_file() {
        return Ok(path);
    }
    std::fs::create_dir_all(media_dir).map_err(|e| format!("{}: {e}", media_dir.display()))?;
    let tmp = media_dir.join(format!("{name}.part"));
    eprintln!(
        "==> encoding the {} s 1080p30 clip once (cached as {})",
        o.clip_seconds,
        path.display()
    );
    // A moving SMPTE pattern: x264 reaches the target bitrate on it (a still image would not).
    let mut desc = format!(
        "videotestsrc num-buffers={frames} pattern=smpte horizontal-speed=8 \
         ! video/x-raw,format=I420,width=1920,height=1080,framerate=30/1 \
         ! x264enc speed-preset=ultrafast bitrate={kbps} key-int-max={gop} bframes=0 \
         ! h264parse ! queue ! mux. \
         matroskamux name=mux ! filesink location=\"{tmp}\"",
        frames = o.clip_seconds * FPS,
        kbps = o.bitrate_kbps,
        gop = o.gop,
        tmp = tmp.display(),
    );
    if o.audio {
        let _ = write!(
            desc,
            " audiotestsrc num-buffers={} samplesperbuffer={AAC_FRAME} \
             ! audio/x-raw,rate={AUDIO_RATE},channels=2 ! avenc_aac ! aacparse ! queue ! mux.",
            (o.clip_seconds * AUDIO_RATE).div_ceil(AAC_FRAME)
        );
    }
    let pipeline = gst::parse::launch(&desc).map_err(|e| format!("encoder pipeline: {e}"))?;
    let result = run_to_eos(&pipeline, Duration::from_secs(600));
    let _ = pipeline.set_state(gst::State::Null);
    result.map_err(|e| format!("encoding the clip: {e}"))?;
    std::fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// Plays a finite pipeline to EOS within `timeout`.
fn run_to_eos(pipeline: &gst::Element, timeout: Duration) -> Result<(), String> {
    let bus = pipeline.bus().ok_or("pipeline without bus")?;
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| format!("cannot start: {e}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no EOS after {timeout:?}"));
        }
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_nseconds(left.as_nanos() as u64)) else {
            continue;
        };
        match msg.view() {
            gst::MessageView::Eos(_) => return Ok(()),
            gst::MessageView::Error(e) => return Err(format!("{} ({:?})", e.error(), e.debug())),
            _ => {}
        }
    }
}

fn spawn_child(
    exe: &Path,
    plugin_dir: &Path,
    spec: &ChildSpec,
    endpoint_pid: Option<u32>,
) -> Result<RunResult, String> {
    let mut plugin_path = plugin_dir.as_os_str().to_owned();
    if let Some(old) = std::env::var_os("GST_PLUGIN_PATH") {
        plugin_path.push(":");
        plugin_path.push(old);
    }
    let endpoint_before = endpoint_pid.and_then(|p| process_cpu(&format!("/proc/{p}/stat")));
    let started = Instant::now();
    let out = Command::new(exe)
        .arg("--child")
        .args(["--sink", spec.sink.name()])
        .args(["--streams", &spec.streams.to_string()])
        .args(["--seconds", &spec.seconds.to_string()])
        .args(["--warmup", &spec.warmup.to_string()])
        .args(["--gop", &spec.gop.to_string()])
        .args(["--audio-offset-us", &spec.audio_offset_us.to_string()])
        .arg("--clip")
        .arg(&spec.clip)
        .env("GST_PLUGIN_PATH", plugin_path)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
    let elapsed = started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("BENCH-RESULT "))
        .ok_or_else(|| {
            format!(
                "{} stream(s) into {}: the child exited ({}) without a result",
                spec.streams,
                spec.sink.name(),
                out.status
            )
        })?;
    let mut r: RunResult = serde_json::from_str(line).map_err(|e| format!("child result: {e}"))?;
    if let (Some(p), Some(before)) = (endpoint_pid, endpoint_before)
        && let Some(after) = process_cpu(&format!("/proc/{p}/stat"))
    {
        r.endpoint_cpu_pct = Some(100.0 * (after - before) / elapsed);
    }
    if !out.status.success() && !r.failed() {
        r.errors.push(format!("child exited with {}", out.status));
    }
    Ok(r)
}

fn render_tables(o: &Options, results: &[RunResult]) -> String {
    let mut s = String::new();
    let f1 = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{v:.1}"));
    let _ = writeln!(
        s,
        "\nClip: 1080p30 H.264 {} kbit/s, key frame every {} frames{}; warm-up {} s.\n",
        o.bitrate_kbps,
        o.gop,
        if o.audio {
            format!(
                ", AAC 48 kHz stereo (audio offset {} µs)",
                o.audio_offset_us
            )
        } else {
            String::new()
        },
        o.warmup
    );
    let _ = writeln!(
        s,
        "| streams | sink | window s | CPU s | CPU s / stream-min | % of a core / stream | peak RSS MiB | video fps / stream | PERSISTED | frame p50 ms | frame p99 ms | frame max ms | fragment p50 ms | fragment p99 ms | EOS s | dropped | errors | endpoint CPU % |"
    );
    let _ = writeln!(
        s,
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in results {
        let per = per_stream_minute(r);
        let is_kvs = r.sink == Some(Sink::Kvssink);
        let dash_unless_kvs = |v: String| if is_kvs { v } else { "–".to_owned() };
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.streams,
            r.sink.map_or("?", Sink::name),
            r.window_s,
            r.cpu_s,
            per,
            per / 60.0 * 100.0,
            r.peak_rss_kib as f64 / 1024.0,
            r.video_fps,
            dash_unless_kvs(r.persisted.to_string()),
            f1(r.frame_p50_ms),
            f1(r.frame_p99_ms),
            f1(r.frame_max_ms),
            f1(r.fragment_p50_ms),
            f1(r.fragment_p99_ms),
            f1(r.eos_s),
            dash_unless_kvs(r.dropped.to_string()),
            r.errors.len() as u64 + r.error_acks,
            f1(r.endpoint_cpu_pct),
        );
    }
    if let Some(bps) = o.uplink_bps {
        let largest = results.iter().map(|r| r.largest_frame).max().unwrap_or(0);
        let _ = writeln!(
            s,
            "\nUplink limited to {:.2} Mbit/s per connection: the largest video frame ({largest} bytes) takes {:.1} ms to send.",
            bps as f64 / 1e6,
            largest as f64 * 8.0 / bps as f64 * 1000.0
        );
    }
    // kvssink's share: the kvssink run minus the baseline run with the same stream count.
    let pairs: Vec<_> = o
        .streams
        .iter()
        .filter_map(|&n| {
            let find = |sink| {
                results
                    .iter()
                    .find(|r| r.streams == n && r.sink == Some(sink))
            };
            Some((n, find(Sink::Kvssink)?, find(Sink::Fakesink)?))
        })
        .collect();
    if !pairs.is_empty() {
        let _ = writeln!(
            s,
            "\nAttributable to kvssink (kvssink run − fakesink run):\n"
        );
        let _ = writeln!(
            s,
            "| streams | CPU s / stream-min | % of a core / stream | peak RSS MiB (total) | peak RSS MiB / stream |"
        );
        let _ = writeln!(s, "|---:|---:|---:|---:|---:|");
        for (n, kvs, base) in pairs {
            let cpu = per_stream_minute(kvs) - per_stream_minute(base);
            let rss = (kvs.peak_rss_kib as f64 - base.peak_rss_kib as f64) / 1024.0;
            let _ = writeln!(
                s,
                "| {n} | {cpu:.2} | {:.1} | {rss:.1} | {:.1} |",
                cpu / 60.0 * 100.0,
                rss / n as f64
            );
        }
    }
    s
}

fn per_stream_minute(r: &RunResult) -> f64 {
    if r.window_s <= 0.0 || r.streams == 0 {
        return 0.0;
    }
    r.cpu_s / (r.streams as f64 * r.window_s / 60.0)
}

// ---------------------------------------------------------------------------------------------
// Child: load the clip, run N streams, measure.

/// One track of the clip in memory: access units with timestamps relative to the track's start.
struct Track {
    caps: gst::Caps,
    buffers: Vec<gst::Buffer>,
    /// Length of one loop: the next loop's first buffer gets `pts + period`.
    period: gst::ClockTime,
    /// The largest buffer, bytes.
    largest: usize,
}

/// Replays a track in a loop with continuing timestamps, starting at `offset`.
struct Feeder {
    track: Arc<Track>,
    next: usize,
    base: gst::ClockTime,
    pushed: Arc<AtomicU64>,
}

impl Feeder {
    fn next_buffer(&mut self) -> gst::Buffer {
        let src = &self.track.buffers[self.next];
        let mut buf = src.copy();
        {
            let b = buf.get_mut().expect("a fresh copy is writable");
            b.set_pts(src.pts().map(|t| t + self.base));
            b.set_dts(src.dts().map(|t| t + self.base));
            b.unset_flags(gst::BufferFlags::DISCONT);
        }
        self.next += 1;
        if self.next == self.track.buffers.len() {
            self.next = 0;
            self.base += self.track.period;
        }
        self.pushed.fetch_add(1, Ordering::Relaxed);
        buf
    }
}

fn run_child(spec: &ChildSpec) -> Result<RunResult, String> {
    gst::init().map_err(|e| format!("GStreamer init: {e}"))?;
    if spec.sink == Sink::Kvssink {
        check_plugin()?;
    }
    let (video, audio) = load_clip(&spec.clip)?;
    let video = Arc::new(video);
    let audio = audio.map(Arc::new);

    let n = spec.streams;
    let run_id = std::process::id();
    let mut desc = String::new();
    for i in 0..n {
        match spec.sink {
            Sink::Kvssink => {
                let _ = write!(
                    desc,
                    " kvssink name=sink{i} stream-name=bench-{run_id}-{i} \
                     appsrc name=v{i} ! identity sync=true ! sink{i}.video_%u"
                );
                if audio.is_some() {
                    let _ = write!(
                        desc,
                        " appsrc name=a{i} ! identity sync=true ! sink{i}.audio_%u"
                    );
                }
            }
            Sink::Fakesink => {
                let _ = write!(desc, " appsrc name=v{i} ! identity sync=true ! fakesink");
                if audio.is_some() {
                    let _ = write!(desc, " appsrc name=a{i} ! identity sync=true ! fakesink");
                }
            }
        }
    }
    let pipeline = gst::parse::launch(&desc)
        .map_err(|e| format!("pipeline: {e}"))?
        .downcast::<gst::Bin>()
        .map_err(|_| "the pipeline is not a bin")?;

    let entries: Vec<Entries> = (0..n).map(|_| Entries::default()).collect();
    if spec.sink == Sink::Kvssink {
        for (i, e) in entries.iter().enumerate() {
            let sink = pipeline.by_name(&format!("sink{i}")).ok_or("no kvssink")?;
            record_entries(&sink, e);
        }
    }

    // Stagger the streams by a fraction of a GOP, as independent cameras are.
    let gop = gst::ClockTime::from_nseconds(spec.gop as u64 * 1_000_000_000 / FPS);
    let mut sources = Vec::new();
    let mut video_counters = Vec::new();
    for i in 0..n {
        let start = gst::ClockTime::from_nseconds(gop.nseconds() * i as u64 / n as u64);
        let pushed = Arc::new(AtomicU64::new(0));
        video_counters.push(pushed.clone());
        sources.push(setup_source(
            &pipeline,
            &format!("v{i}"),
            &video,
            start,
            pushed,
        )?);
        if let Some(audio) = &audio {
            let pushed = Arc::new(AtomicU64::new(0));
            let start = start + gst::ClockTime::from_useconds(spec.audio_offset_us);
            sources.push(setup_source(
                &pipeline,
                &format!("a{i}"),
                audio,
                start,
                pushed,
            )?);
        }
    }

    let bus = pipeline.bus().ok_or("pipeline without bus")?;
    let mut r = RunResult {
        sink: Some(spec.sink),
        streams: n,
        ..Default::default()
    };
    let mut latencies_us: Vec<u64> = Vec::new();
    let started = Instant::now();
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| format!("cannot start the pipeline: {e}"))?;

    let window_start = started + Duration::from_secs(spec.warmup);
    let wall_start = SystemTime::now() + Duration::from_secs(spec.warmup);
    let window_end = window_start + Duration::from_secs(spec.seconds);
    let mut at_start: Option<(f64, u64)> = None;
    let mut eos = false;
    loop {
        let now = Instant::now();
        if at_start.is_none() && now >= window_start {
            let frames = video_counters
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .sum();
            at_start = Some((process_cpu("/proc/self/stat").unwrap_or(0.0), frames));
        }
        if now >= window_end {
            break;
        }
        let next = if at_start.is_none() {
            window_start
        } else {
            window_end
        };
        let wait = next.saturating_duration_since(now);
        if let Some(msg) = bus.timed_pop(gst::ClockTime::from_nseconds(wait.as_nanos() as u64)) {
            let in_window = at_start.is_some();
            eos |= handle_message(&msg, &mut r, in_window.then_some(&mut latencies_us));
        }
        if eos {
            r.errors.push("EOS before the window ended".into());
            break;
        }
    }
    let window_end_at = Instant::now();
    let wall_end = SystemTime::now();
    let (cpu0, frames0) = at_start.unwrap_or((0.0, 0));
    r.cpu_s = process_cpu("/proc/self/stat").unwrap_or(0.0) - cpu0;
    r.window_s = window_end_at
        .saturating_duration_since(window_start)
        .as_secs_f64();
    r.peak_rss_kib = status_kib("VmHWM").unwrap_or(0);
    let frames1: u64 = video_counters
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum();
    if r.window_s > 0.0 {
        r.video_fps = (frames1 - frames0) as f64 / n as f64 / r.window_s;
    }
    if r.video_fps < FPS as f64 * MIN_REALTIME_RATIO && !eos {
        r.errors.push(format!(
            "streams fell behind realtime: {:.1} video fps per stream",
            r.video_fps
        ));
    }
    latencies_us.sort_unstable();
    r.persisted = latencies_us.len() as u64;
    r.latency_p50_ms = percentile(&latencies_us, 50.0).map(|v| v as f64 / 1000.0);
    r.latency_p99_ms = percentile(&latencies_us, 99.0).map(|v| v as f64 / 1000.0);
    r.latency_max_ms = latencies_us.last().map(|&v| v as f64 / 1000.0);

    // EOS: kvssink posts it once the last fragment is PERSISTED.
    if !eos {
        let eos_sent = Instant::now();
        for src in &sources {
            let _ = src.emit_by_name::<gst::FlowReturn>("end-of-stream", &[]);
        }
        let deadline = eos_sent + EOS_TIMEOUT;
        while !eos {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                r.errors
                    .push(format!("no EOS within {EOS_TIMEOUT:?} after the window"));
                break;
            }
            if let Some(msg) = bus.timed_pop(gst::ClockTime::from_nseconds(left.as_nanos() as u64))
            {
                eos = handle_message(&msg, &mut r, None);
                if eos {
                    r.eos_s = Some(eos_sent.elapsed().as_secs_f64());
                }
            }
        }
    }
    let _ = pipeline.set_state(gst::State::Null);
    r.largest_frame = video.largest as u64;
    if spec.sink == Sink::Kvssink {
        let (mut frames, mut fragments) = (Vec::new(), Vec::new());
        for (i, e) in entries.iter().enumerate() {
            match stream_latencies(&format!("bench-{run_id}-{i}"), e, wall_start..wall_end) {
                Ok((f, g)) => {
                    frames.extend(f);
                    fragments.extend(g);
                }
                Err(e) => r.errors.push(e),
            }
        }
        frames.sort_unstable();
        fragments.sort_unstable();
        r.frames_measured = frames.len() as u64;
        let ms = |v: Option<u64>| v.map(|v| v as f64 / 1000.0);
        r.frame_p50_ms = ms(percentile(&frames, 50.0));
        r.frame_p99_ms = ms(percentile(&frames, 99.0));
        r.frame_max_ms = ms(frames.last().copied());
        r.fragment_p50_ms = ms(percentile(&fragments, 50.0));
        r.fragment_p99_ms = ms(percentile(&fragments, 99.0));
        if frames.is_empty() {
            r.errors.push(
                "no frame latency measured: start the endpoint with --record-frame-arrivals".into(),
            );
        }
    }
    Ok(r)
}

/// When each buffer entered a kvssink: per track (1 video, 2 audio), running time in ms → wall
/// clock in µs since the epoch.
#[derive(Default, Clone)]
struct Entries(Arc<Mutex<[BTreeMap<i64, u64>; 2]>>);

fn unix_us(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn record_entries(sink: &gst::Element, entries: &Entries) {
    for pad in sink.sink_pads() {
        let slot = usize::from(pad.name().starts_with("audio"));
        let entries = entries.clone();
        pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
            let now = unix_us(SystemTime::now());
            let segment = pad
                .sticky_event::<gst::event::Segment>(0)
                .and_then(|e| e.segment().downcast_ref::<gst::ClockTime>().cloned());
            if let (Some(b), Some(seg)) = (info.buffer(), segment)
                && let Some(rt) = b.pts().and_then(|t| seg.to_running_time(t))
            {
                entries.0.lock().unwrap_or_else(|e| e.into_inner())[slot]
                    .insert(rt.mseconds() as i64, now);
            }
            gst::PadProbeReturn::Ok
        });
    }
}

/// `GET path` from the local endpoint (`CONTROL_PLANE_URI`, plain HTTP on loopback), as JSON.
fn endpoint_get(path: &str) -> Result<serde_json::Value, String> {
    use std::io::{Read, Write};
    let uri = std::env::var("CONTROL_PLANE_URI").map_err(|_| "CONTROL_PLANE_URI is not set")?;
    let host = uri
        .strip_prefix("http://")
        .ok_or("the benchmark reads the endpoint over plain HTTP")?
        .trim_end_matches('/');
    let mut conn = std::net::TcpStream::connect(host).map_err(|e| format!("{host}: {e}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(30))).ok();
    write!(conn, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let at = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no HTTP header end")?;
    serde_json::from_slice(&raw[at + 4..]).map_err(|e| format!("{path}: {e}"))
}

/// Frame latencies (video) and fragment latencies of one stream in the window, µs.
fn stream_latencies(
    name: &str,
    entries: &Entries,
    window: std::ops::Range<SystemTime>,
) -> Result<(Vec<u64>, Vec<u64>), String> {
    let fragments = endpoint_get(&format!("/_local/streams/{name}/fragments"))?;
    let fragments = fragments.as_array().ok_or("fragments: not a list")?;
    let entries = entries.0.lock().unwrap_or_else(|e| e.into_inner());
    let (from, to) = (unix_us(window.start), unix_us(window.end));
    let arrivals = |f: &serde_json::Value| -> Vec<(u64, i64, u64)> {
        f["frame_arrivals"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|x| {
                        (
                            x["track"].as_u64().unwrap_or(0),
                            x["timecode"].as_i64().unwrap_or(0),
                            x["at_unix_us"].as_u64().unwrap_or(0),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    // One offset maps running time onto timecodes: the first video frame's.
    let first_video = fragments
        .iter()
        .flat_map(&arrivals)
        .find(|a| a.0 == 1)
        .ok_or(format!("{name}: no video frame arrived"))?;
    let first_entry = entries[0]
        .keys()
        .next()
        .ok_or(format!("{name}: no video frame entered"))?;
    let offset = first_video.1 - first_entry;
    let entered = |track: u64, tc: i64| {
        let map = &entries[usize::from(track == 2)];
        (tc - offset - 1..=tc - offset + 1).find_map(|k| map.get(&k).copied())
    };
    let (mut frames, mut frags) = (Vec::new(), Vec::new());
    for f in fragments {
        if f["state"].as_str() != Some("Persisted") {
            continue;
        }
        let a = arrivals(f);
        for (track, tc, at) in &a {
            if *track == 1
                && (from..to).contains(at)
                && let Some(e) = entered(*track, *tc)
            {
                frames.push(at.saturating_sub(e));
            }
        }
        let persisted = f["acks"].as_array().and_then(|acks| {
            acks.iter()
                .find(|k| k["ack"]["EventType"].as_str() == Some("PERSISTED"))
                .and_then(|k| {
                    let secs = k["at"]["secs_since_epoch"].as_u64()?;
                    let nanos = k["at"]["nanos_since_epoch"].as_u64()?;
                    Some(secs * 1_000_000 + nanos / 1000)
                })
        });
        if let (Some(p), Some(last)) = (persisted, a.iter().max_by_key(|x| x.1))
            && (from..to).contains(&p)
            && let Some(e) = entered(last.0, last.1)
        {
            frags.push(p.saturating_sub(e));
        }
    }
    Ok((frames, frags))
}

/// Counts one bus message into `r`; PERSISTED latencies go to `latencies` when given (in the
/// window). Returns true at the pipeline's EOS.
fn handle_message(msg: &gst::Message, r: &mut RunResult, latencies: Option<&mut Vec<u64>>) -> bool {
    let src = || msg.src().map_or("?".into(), |s| s.name().to_string());
    match msg.view() {
        gst::MessageView::Eos(_) => return true,
        gst::MessageView::Error(e) => {
            let text = format!("{}: {} ({:?})", src(), e.error(), e.debug());
            eprintln!("bus error: {text}");
            r.errors.push(text);
        }
        gst::MessageView::Warning(w) => {
            r.warnings += 1;
            eprintln!("bus warning: {}: {}", src(), w.error());
        }
        gst::MessageView::Element(e) => {
            let Some(s) = e.structure() else {
                return false;
            };
            match s.name().as_str() {
                "kvssink-fragment-ack" => match s.get::<&str>("event").unwrap_or("") {
                    "PERSISTED" => {
                        if let (Some(l), Ok(us)) = (latencies, s.get::<u64>("latency-us")) {
                            l.push(us);
                        }
                    }
                    "ERROR" => {
                        r.error_acks += 1;
                        eprintln!("ERROR ACK from {}: {s}", src());
                    }
                    _ => {}
                },
                "kvssink-fragment-dropped" => {
                    r.dropped += 1;
                    eprintln!("dropped: {s}");
                }
                _ => {}
            }
        }
        _ => {}
    }
    false
}

/// Checks that `kvssink` is this crate's element and says which file it came from.
fn check_plugin() -> Result<(), String> {
    let factory = gst::ElementFactory::find("kvssink")
        .ok_or("no kvssink element: is libgstkvssink.so in GST_PLUGIN_PATH?")?
        .load()
        .map_err(|e| format!("loading kvssink: {e}"))?;
    let type_name = factory.element_type().name();
    if type_name != "GstRsKvsSink" {
        return Err(format!(
            "kvssink is {type_name}, not this crate's GstRsKvsSink (another plugin shadows it)"
        ));
    }
    let file = factory
        .plugin()
        .and_then(|p| p.filename())
        .map_or("?".into(), |f| f.display().to_string());
    eprintln!("    kvssink from {file}");
    Ok(())
}

fn setup_source(
    pipeline: &gst::Bin,
    name: &str,
    track: &Arc<Track>,
    start: gst::ClockTime,
    pushed: Arc<AtomicU64>,
) -> Result<gst::Element, String> {
    let src = pipeline.by_name(name).ok_or(format!("no element {name}"))?;
    src.set_property("caps", &track.caps);
    src.set_property("is-live", true);
    src.set_property_from_str("format", "time");
    src.set_property_from_str("stream-type", "stream");
    let feeder = Mutex::new(Feeder {
        track: track.clone(),
        next: 0,
        base: start,
        pushed,
    });
    // need-data comes from the appsrc's own streaming thread when its queue is empty: one buffer
    // per call, and `identity sync=true` downstream holds the thread until the buffer is due.
    src.connect("need-data", false, move |args| {
        let appsrc = args[0]
            .get::<gst::Element>()
            .expect("need-data's first argument");
        let buf = feeder
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .next_buffer();
        let _ = appsrc.emit_by_name::<gst::FlowReturn>("push-buffer", &[&buf]);
        None
    });
    Ok(src)
}

/// Reads the clip's access units (H.264 AVC/AU and, if present, raw AAC) into memory.
fn load_clip(path: &Path) -> Result<(Track, Option<Track>), String> {
    let has_audio = path
        .file_name()
        .is_some_and(|f| f.to_string_lossy().contains("-aac"));
    let mut desc = format!(
        "filesrc location=\"{}\" ! matroskademux name=d \
         d.video_0 ! queue ! h264parse ! video/x-h264,stream-format=avc,alignment=au \
         ! appsink name=v sync=false",
        path.display()
    );
    if has_audio {
        desc.push_str(" d.audio_0 ! queue ! aacparse ! appsink name=a sync=false");
    }
    let pipeline = gst::parse::launch(&desc)
        .map_err(|e| format!("clip reader: {e}"))?
        .downcast::<gst::Bin>()
        .map_err(|_| "the clip reader is not a bin")?;
    let bus = pipeline.bus().ok_or("pipeline without bus")?;
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut tracks = Vec::new();
    for name in if has_audio {
        &["v", "a"][..]
    } else {
        &["v"][..]
    } {
        let sink = pipeline.by_name(name).ok_or("no appsink")?;
        let mut caps = None;
        let mut buffers = Vec::new();
        loop {
            if Instant::now() > deadline {
                return Err(format!("reading {} took too long", path.display()));
            }
            if let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error])
                && let gst::MessageView::Error(e) = msg.view()
            {
                return Err(format!("reading {}: {}", path.display(), e.error()));
            }
            let sample = sink.emit_by_name::<Option<gst::Sample>>(
                "try-pull-sample",
                &[&gst::ClockTime::SECOND.nseconds()],
            );
            match sample {
                Some(s) => {
                    if caps.is_none() {
                        caps = s.caps_owned();
                    }
                    if let Some(b) = s.buffer_owned() {
                        buffers.push(b);
                    }
                }
                None if sink.property::<bool>("eos") => break,
                None => {}
            }
        }
        let caps = caps.ok_or(format!("{}: no {name} samples", path.display()))?;
        tracks.push(make_track(caps, buffers)?);
    }
    let _ = pipeline.set_state(gst::State::Null);
    let audio = if has_audio { tracks.pop() } else { None };
    let video = tracks.pop().ok_or("no video track")?;
    Ok((video, audio))
}

/// Rebases timestamps to start at 0 and works out the loop period.
fn make_track(caps: gst::Caps, mut buffers: Vec<gst::Buffer>) -> Result<Track, String> {
    let first = buffers
        .iter()
        .filter_map(|b| b.dts_or_pts())
        .min()
        .ok_or("a track without timestamps")?;
    let mut end = gst::ClockTime::ZERO;
    for b in &mut buffers {
        let b = b.make_mut();
        b.set_pts(b.pts().map(|t| t.saturating_sub(first)));
        b.set_dts(b.dts().map(|t| t.saturating_sub(first)));
        let stop = b.pts().unwrap_or_default() + b.duration().unwrap_or_default();
        end = end.max(stop);
    }
    if end.is_zero() {
        return Err("a track with no duration".into());
    }
    Ok(Track {
        caps,
        largest: buffers.iter().map(|b| b.size()).max().unwrap_or(0),
        buffers,
        period: end,
    })
}

/// utime + stime in seconds from a `/proc/<pid>/stat` file.
fn process_cpu(stat_path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(stat_path).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_SECOND)
}

/// A `kB` field of `/proc/self/status`.
fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|l| {
        let v = l.strip_prefix(field)?.strip_prefix(':')?;
        v.split_whitespace().next()?.parse().ok()
    })
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}
