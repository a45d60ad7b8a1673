//! Small helpers shared by the examples: a hand-written argument parser, Ctrl-C handling, plugin
//! registration, and the bookkeeping of kvssink's ACK and drop messages. Each example includes
//! it with `#[path = "support/mod.rs"] mod support;`.
#![allow(dead_code)]

use std::collections::BTreeSet;

use gst::prelude::*;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};

/// Registers this crate's `kvssink` in the process, so the examples run without installing the
/// plugin (`cargo run --example …`).
pub fn init() {
    gst::init().expect("GStreamer initializes");
    gstkvssink::plugin_register_static().expect("kvssink registers");
}

/// Command-line options: `--name value`, `--name=value`, boolean `--flag`s and positionals.
pub struct Args {
    help: &'static str,
    options: Vec<(String, Option<String>)>,
    pub positional: Vec<String>,
}

impl Args {
    /// Parses the process arguments; `flags` are the options that take no value. `--help` prints
    /// `help` and exits 0.
    pub fn parse(help: &'static str, flags: &[&str]) -> Args {
        let mut args = Args {
            help,
            options: Vec::new(),
            positional: Vec::new(),
        };
        let mut it = std::env::args().skip(1);
        while let Some(a) = it.next() {
            if a == "--help" || a == "-h" {
                print!("{help}");
                std::process::exit(0);
            }
            let Some(name) = a.strip_prefix("--") else {
                args.positional.push(a);
                continue;
            };
            if let Some((n, v)) = name.split_once('=') {
                args.options.push((n.to_owned(), Some(v.to_owned())));
            } else if flags.contains(&name) {
                args.options.push((name.to_owned(), None));
            } else {
                match it.next() {
                    Some(v) => args.options.push((name.to_owned(), Some(v))),
                    None => args.fail(&format!("--{name} needs a value")),
                }
            }
        }
        args
    }

    /// Prints `message` and the usage, and exits 2.
    pub fn fail(&self, message: &str) -> ! {
        eprintln!("error: {message}\n\n{}", self.help);
        std::process::exit(2);
    }

    /// Every value of a repeatable option, in order.
    pub fn all(&mut self, name: &str) -> Vec<String> {
        let mut out = Vec::new();
        self.options.retain(|(n, v)| {
            if n == name {
                out.extend(v.clone());
                false
            } else {
                true
            }
        });
        out
    }

    /// The last value of `--name`, parsed.
    pub fn opt<T: FromStr>(&mut self, name: &str) -> Option<T> {
        let v = self.all(name).pop()?;
        match v.parse() {
            Ok(v) => Some(v),
            Err(_) => self.fail(&format!("invalid value '{v}' for --{name}")),
        }
    }

    pub fn value<T: FromStr>(&mut self, name: &str, default: T) -> T {
        self.opt(name).unwrap_or(default)
    }

    pub fn flag(&mut self, name: &str) -> bool {
        let n = self.options.len();
        self.options.retain(|(o, _)| o != name);
        self.options.len() != n
    }

    /// Refuses options nobody asked for.
    pub fn finish(&self) {
        if let Some((n, _)) = self.options.first() {
            self.fail(&format!("unknown option --{n}"));
        }
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Makes SIGINT (Ctrl-C) and SIGTERM set a flag that [`interrupted`] reads, instead of killing
/// the process: the examples then end the stream with EOS, so the last fragment is uploaded.
pub fn catch_interrupt() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// What kvssink reported about fragments through its element messages.
#[derive(Debug, Default)]
pub struct Fragments {
    /// Timecodes of fragments with at least one ACK.
    pub acked: BTreeSet<u64>,
    pub persisted: BTreeSet<u64>,
    pub error_acks: u64,
    pub dropped: u64,
}

impl Fragments {
    /// Reads a `kvssink-fragment-ack` or `kvssink-fragment-dropped` element message; returns a
    /// line to print for the notable ones (errors and drops), `None` otherwise (or for other
    /// messages).
    pub fn on_message(&mut self, msg: &gst::MessageRef) -> Option<String> {
        let gst::MessageView::Element(e) = msg.view() else {
            return None;
        };
        let s = e.structure()?;
        let src = msg.src().map(|s| s.name().to_string()).unwrap_or_default();
        match s.name().as_str() {
            "kvssink-fragment-ack" => {
                let event = s.get::<String>("event").ok()?;
                let timecode = s.get::<u64>("timecode").ok()?;
                self.acked.insert(timecode);
                match event.as_str() {
                    "PERSISTED" => {
                        self.persisted.insert(timecode);
                        None
                    }
                    "ERROR" => {
                        self.error_acks += 1;
                        Some(format!(
                            "{src}: ERROR ACK for fragment {timecode}: {} ({})",
                            s.get::<String>("error-code").unwrap_or_default(),
                            s.get::<u64>("error-id").unwrap_or_default()
                        ))
                    }
                    _ => None,
                }
            }
            "kvssink-fragment-dropped" => {
                self.dropped += 1;
                Some(format!(
                    "{src}: fragment {} of stream {} dropped ({} frames): {}",
                    s.get::<u64>("timecode").unwrap_or_default(),
                    s.get::<String>("stream-name").unwrap_or_default(),
                    s.get::<u64>("frames").unwrap_or_default(),
                    s.get::<String>("reason").unwrap_or_default()
                ))
            }
            _ => None,
        }
    }

    /// Fragments that got ACKs but no PERSISTED one.
    pub fn unconfirmed(&self) -> usize {
        self.acked.difference(&self.persisted).count()
    }
}

/// Counts the buffers that enter each sink pad of `sink` (the pads must exist already).
pub fn count_buffers(
    sink: &gst::Element,
) -> Vec<(String, std::sync::Arc<std::sync::atomic::AtomicU64>)> {
    sink.sink_pads()
        .into_iter()
        .map(|pad| {
            let n = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
            let counter = n.clone();
            pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
                counter.fetch_add(1, Ordering::Relaxed);
                gst::PadProbeReturn::Ok
            });
            (pad.name().to_string(), n)
        })
        .collect()
}

/// `video_0=N audio_0=M` from [`count_buffers`]' counters.
pub fn format_counts(counts: &[(String, std::sync::Arc<std::sync::atomic::AtomicU64>)]) -> String {
    counts
        .iter()
        .map(|(p, n)| format!("{p}={}", n.load(Ordering::Relaxed)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether GStreamer has an element `name`.
pub fn has(name: &str) -> bool {
    gst::ElementFactory::find(name).is_some()
}

/// The AAC encoder to use: voaacenc (plugins-bad) or avenc_aac (libav).
pub fn aac_encoder() -> &'static str {
    if has("voaacenc") {
        "voaacenc"
    } else {
        "avenc_aac"
    }
}

/// kvssink's `stats` in one line for a person: state, frames per pad, fragments, what waits to
/// be confirmed, the uplink rate, latencies, reconnects and the last error.
pub fn status_line(name: &str, s: &gst::StructureRef) -> String {
    let n = |f: &str| s.get::<u64>(f).unwrap_or(0);
    let ms = |f: &str| s.get::<f64>(f).unwrap_or(0.0);
    let pads: Vec<String> = s
        .fields()
        .filter_map(|f| f.as_str().strip_suffix("-frames-in").map(str::to_owned))
        .map(|p| {
            format!(
                "{p}={} ({} dropped)",
                n(&format!("{p}-frames-in")),
                n(&format!("{p}-frames-dropped"))
            )
        })
        .collect();
    let error = s.get::<String>("last-error").unwrap_or_default();
    format!(
        "status {name}: {} | frames {} | fragments {} persisted, {} dropped | buffered {:.1} s, {} KiB ({:.1}% of storage) | uplink {:.2} Mbit/s | latency frame {:.1}/{:.1} ms, persist {:.1}/{:.1} ms (p50/p99) | reconnects {} | last error: {}",
        s.get::<String>("state").unwrap_or_default(),
        pads.join(" "),
        n("fragments-persisted"),
        n("fragments-dropped"),
        n("buffered-duration-ms") as f64 / 1000.0,
        n("buffered-bytes") / 1024,
        s.get::<f64>("storage-used-percent").unwrap_or(0.0),
        n("uplink-bitrate-bps") as f64 / 1e6,
        ms("frame-latency-ms-p50"),
        ms("frame-latency-ms-p99"),
        ms("persist-latency-ms-p50"),
        ms("persist-latency-ms-p99"),
        n("reconnects"),
        if error.is_empty() { "none" } else { &error }
    )
}
