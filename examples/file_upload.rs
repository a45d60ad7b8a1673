//! Uploads a recorded MP4 or MKV file (H.264 or H.265 video, optional AAC audio) to Kinesis Video
//! Streams with its original timing, as fast as the connection allows.
//!
//! ```sh
//! cargo run --release --example file_upload -- recording.mp4 --stream my-stream --start-time 1700000000
//! ```
//!
//! kvssink runs with `streaming-type=offline`: a fragment's timecode is `file-start-time` (epoch
//! seconds) plus the file's own timestamp of its key frame, and the file is read only as fast as
//! fragments are accepted (backpressure instead of dropping). `parsebin` finds the container and
//! the codecs, so the same code takes MP4/MOV and Matroska/WebM files.
//!
//! Progress comes from kvssink's `stats` property: on a terminal one line redrawn in place
//! (media persisted of the file's duration, rate, ETA); otherwise a plain `progress:` line per
//! persisted fragment, for logs and scripts.
//!
//! The exit status is 0 only when every fragment (one per key frame) was PERSISTED by the
//! service; 1 otherwise (error, dropped or unconfirmed fragments), 2 for bad arguments.

#[path = "support/mod.rs"]
mod support;

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gst::prelude::*;

const HELP: &str = "\
file_upload: upload an MP4 or MKV file (H.264/H.265 + AAC) to Kinesis Video Streams with its timing

Usage: cargo run --example file_upload -- FILE [OPTIONS]

Options:
  --stream NAME          KVS stream name (default: the file name without extension, made valid)
  --start-time SECONDS   epoch seconds at which the file starts (file-start-time; default: now
                         minus the file's duration, as if the recording just ended)
  --region REGION        aws-region (AWS_DEFAULT_REGION overrides it)
  --timeout SECONDS      give up after this long (default 3600)
  --verbose              print every PERSISTED fragment
  -h, --help             this text

Progress: on a terminal one line, redrawn; otherwise one line per persisted fragment:
  progress: fragments=N persisted-ms=MS total-ms=MS percent=P% bytes-sent=B rate-bps=BPS eta=Ss

Exit status: 0 when every fragment was persisted, 1 otherwise, 2 for bad arguments.
";

fn main() {
    let mut args = support::Args::parse(HELP, &["verbose"]);
    let [file] = std::mem::take(&mut args.positional)
        .try_into()
        .unwrap_or_else(|_| args.fail("one FILE is needed"));
    let stream: Option<String> = args.opt("stream");
    let start_time: Option<u64> = args.opt("start-time");
    let region: Option<String> = args.opt("region");
    let timeout = Duration::from_secs(args.value("timeout", 3600u64));
    let verbose = args.flag("verbose");
    args.finish();
    let path = Path::new(&file);
    if !path.is_file() {
        args.fail(&format!("{file} is not a file"));
    }
    let stream = stream.unwrap_or_else(|| stream_name_from(path));

    support::init();
    let total = file_duration(path);
    let start_time = start_time.unwrap_or_else(|| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        now.saturating_sub(total.map_or(0, |d| d.as_secs() + 1))
    });
    println!("uploading {file} to '{stream}', file-start-time {start_time}");

    let pipeline = gst::Pipeline::new();
    let src = gst::ElementFactory::make("filesrc")
        .property("location", &file)
        .build()
        .expect("filesrc");
    let parse = gst::ElementFactory::make("parsebin")
        .build()
        .expect("parsebin (gstreamer1.0-plugins-base)");
    let sink = gst::ElementFactory::make("kvssink")
        .name("sink")
        .property("stream-name", &stream)
        .property_from_str("streaming-type", "offline")
        .property("file-start-time", start_time)
        .build()
        .expect("kvssink");
    if let Some(region) = region {
        sink.set_property("aws-region", region);
    }
    pipeline.add_many([&src, &parse, &sink]).unwrap();
    src.link(&parse).unwrap();

    // Key frames entering kvssink: one fragment each.
    let key_frames = Arc::new(AtomicU64::new(0));
    let frames = Arc::new(AtomicU64::new(0));
    let (pipeline_weak, sink_weak) = (pipeline.downgrade(), sink.downgrade());
    let (kf, fr) = (key_frames.clone(), frames.clone());
    parse.connect_pad_added(move |_, pad| {
        let (Some(pipeline), Some(sink)) = (pipeline_weak.upgrade(), sink_weak.upgrade()) else {
            return;
        };
        let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
        let media = caps
            .structure(0)
            .map(|s| s.name().to_string())
            .unwrap_or_default();
        let template = match media.as_str() {
            "video/x-h264" | "video/x-h265" => "video_%u",
            "audio/mpeg" => "audio_%u",
            other => {
                println!("ignoring a {other} stream");
                return;
            }
        };
        let Some(sink_pad) = sink.request_pad_simple(template) else {
            eprintln!("kvssink refused a second {template} stream; ignoring {media}");
            return;
        };
        let queue = gst::ElementFactory::make("queue").build().unwrap();
        pipeline.add(&queue).unwrap();
        queue.sync_state_with_parent().unwrap();
        pad.link(&queue.static_pad("sink").unwrap()).unwrap();
        queue.static_pad("src").unwrap().link(&sink_pad).unwrap();
        if template == "video_%u" {
            let (kf, fr) = (kf.clone(), fr.clone());
            sink_pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
                if let Some(b) = info.buffer() {
                    fr.fetch_add(1, Ordering::Relaxed);
                    if !b.flags().contains(gst::BufferFlags::DELTA_UNIT) {
                        kf.fetch_add(1, Ordering::Relaxed);
                    }
                }
                gst::PadProbeReturn::Ok
            });
        }
        println!("{media} → kvssink {}", sink_pad.name());
    });

    if pipeline.set_state(gst::State::Playing).is_err() {
        eprintln!("error: the pipeline did not start");
    }
    let started = Instant::now();
    let bus = pipeline.bus().unwrap();
    let mut fragments = support::Fragments::default();
    let mut progress = Progress::new(total, std::io::stdout().is_terminal());
    let mut problems = Vec::new();
    let mut eos = false;
    while started.elapsed() < timeout {
        let left = timeout
            .saturating_sub(started.elapsed())
            .min(Progress::REDRAW);
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_nseconds(left.as_nanos() as u64)) else {
            progress.tick(&sink.property::<gst::Structure>("stats"));
            continue;
        };
        let before = fragments.persisted.len();
        if let Some(line) = fragments.on_message(&msg) {
            progress.clear();
            eprintln!("{line}");
        }
        if fragments.persisted.len() > before {
            if verbose {
                progress.clear();
                println!("persisted fragment {}", fragments.persisted.last().unwrap());
            }
            let stats = sink.property::<gst::Structure>("stats");
            progress.fragment(fragments.persisted.len(), &stats);
        }
        match msg.view() {
            gst::MessageView::Eos(_) => {
                eos = true;
                break;
            }
            gst::MessageView::Error(e) => {
                problems.push(format!(
                    "error: {} ({})",
                    e.error(),
                    e.debug().unwrap_or_default()
                ));
                break;
            }
            gst::MessageView::Warning(w) => {
                let line = format!("warning: {}", w.error());
                progress.clear();
                eprintln!("{line}");
                // kvssink warns about fragments it could not confirm or had to drop.
                if msg
                    .src()
                    .is_some_and(|s| s == sink.upcast_ref::<gst::Object>())
                {
                    problems.push(line);
                }
            }
            _ => {}
        }
    }
    progress.tick(&sink.property::<gst::Structure>("stats"));
    progress.clear();
    let _ = pipeline.set_state(gst::State::Null);

    let expected = key_frames.load(Ordering::Relaxed) as usize;
    let persisted = fragments.persisted.len();
    if !eos && problems.is_empty() {
        problems.push(format!("no EOS within {timeout:?}"));
    }
    if persisted < expected || fragments.unconfirmed() > 0 || fragments.dropped > 0 {
        problems.push(format!(
            "{persisted} of {expected} fragments persisted ({} unconfirmed, {} dropped)",
            fragments.unconfirmed(),
            fragments.dropped
        ));
    }
    println!(
        "summary: video-frames={} fragments={expected} persisted={persisted} dropped={} seconds={:.1}",
        frames.load(Ordering::Relaxed),
        fragments.dropped,
        started.elapsed().as_secs_f64()
    );
    for p in &problems {
        eprintln!("{p}");
    }
    std::process::exit(if problems.is_empty() { 0 } else { 1 });
}

/// Upload progress from kvssink's `stats`: persisted media of the file's duration, rate, ETA.
struct Progress {
    total: Option<Duration>,
    started: Instant,
    terminal: bool,
    /// A terminal line is drawn and not ended yet.
    drawn: bool,
}

impl Progress {
    /// How often the terminal line is redrawn.
    const REDRAW: Duration = Duration::from_millis(250);

    fn new(total: Option<Duration>, terminal: bool) -> Self {
        Self {
            total: total.filter(|t| !t.is_zero()),
            started: Instant::now(),
            terminal,
            drawn: false,
        }
    }

    /// A fragment was persisted (`fragments` so far).
    fn fragment(&mut self, fragments: usize, stats: &gst::StructureRef) {
        if self.terminal {
            self.tick(stats);
            return;
        }
        let n = |f: &str| stats.get::<u64>(f).unwrap_or(0);
        let persisted_ms = n("persisted-duration-ms");
        let mut line = format!("progress: fragments={fragments} persisted-ms={persisted_ms}");
        if let Some(total) = self.total {
            let total_ms = total.as_millis() as u64;
            let percent = (persisted_ms as f64 * 100.0 / total_ms as f64).min(100.0);
            line.push_str(&format!(" total-ms={total_ms} percent={percent:.1}%"));
        }
        line.push_str(&format!(
            " bytes-sent={} rate-bps={}",
            n("bytes-sent"),
            n("uplink-bitrate-bps")
        ));
        if let Some(eta) = self.eta(persisted_ms) {
            line.push_str(&format!(" eta={}s", eta.as_secs()));
        }
        println!("{line}");
    }

    /// Redraws the terminal line.
    fn tick(&mut self, stats: &gst::StructureRef) {
        if !self.terminal {
            return;
        }
        let n = |f: &str| stats.get::<u64>(f).unwrap_or(0);
        let persisted = Duration::from_millis(n("persisted-duration-ms"));
        let rate = format!("{:.2} Mbit/s", n("uplink-bitrate-bps") as f64 / 1e6);
        let eta = self
            .eta(persisted.as_millis() as u64)
            .map_or("?".to_owned(), clock);
        let line = match self.total {
            Some(total) => {
                let part = (persisted.as_secs_f64() / total.as_secs_f64()).min(1.0);
                let filled = (part * 30.0).round() as usize;
                format!(
                    "[{}{}] {:5.1}% {} of {} persisted, {rate}, ETA {eta}",
                    "#".repeat(filled),
                    "-".repeat(30 - filled),
                    part * 100.0,
                    clock(persisted),
                    clock(total)
                )
            }
            None => format!(
                "{} persisted, {} fragments, {rate}",
                clock(persisted),
                n("fragments-persisted")
            ),
        };
        print!("\r{line}\x1b[K");
        let _ = std::io::stdout().flush();
        self.drawn = true;
    }

    /// Ends the terminal line, so that other output starts on its own line.
    fn clear(&mut self) {
        if self.drawn {
            println!();
            self.drawn = false;
        }
    }

    /// Time left at the media rate so far.
    fn eta(&self, persisted_ms: u64) -> Option<Duration> {
        let total_ms = self.total?.as_millis() as u64;
        if persisted_ms == 0 {
            return None;
        }
        let left = total_ms.saturating_sub(persisted_ms) as f64;
        let speed = persisted_ms as f64 / self.started.elapsed().as_millis().max(1) as f64;
        Some(Duration::from_millis((left / speed) as u64))
    }
}

/// `m:ss`.
fn clock(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}", s / 60, s % 60)
}

/// A valid stream name (`a-z A-Z 0-9 _ . -`, at most 256) from the file name.
fn stream_name_from(path: &Path) -> String {
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(256)
        .collect();
    if name.is_empty() {
        "file-upload".to_owned()
    } else {
        name
    }
}

/// The file's duration: prerolls `filesrc ! parsebin ! fakesink` and asks.
fn file_duration(path: &Path) -> Option<Duration> {
    let description = format!(
        "filesrc location=\"{}\" ! parsebin ! fakesink",
        path.display().to_string().replace('"', "\\\"")
    );
    let pipeline = gst::parse::launch(&description).ok()?;
    pipeline.set_state(gst::State::Paused).ok()?;
    let (res, _, _) = pipeline.state(gst::ClockTime::from_seconds(10));
    let duration = res
        .ok()
        .and_then(|_| pipeline.query_duration::<gst::ClockTime>())
        .map(|d| Duration::from_nanos(d.nseconds()));
    let _ = pipeline.set_state(gst::State::Null);
    duration
}
