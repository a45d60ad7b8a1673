//! Fragment metadata: `kvs-add-metadata` custom downstream events become Matroska tags of the
//! fragments kvssink uploads (the reference element's event, unchanged).
//!
//! ```sh
//! cargo run --example metadata -- --stream my-stream --persistent camera=front-door --event motion --every 5
//! ```
//!
//! The event is a `GstEvent` of type `CUSTOM_DOWNSTREAM` whose structure is
//! `kvs-add-metadata, name=(string)…, value=(string)…, persist=(boolean)…`, sent to a kvssink sink
//! pad (or pushed downstream through the pipeline). A persistent item is written into every
//! following fragment until it is replaced (same name) or removed (same name, empty value); a
//! one-off item goes into the next fragment only. Names must not start with `AWS`; at most 128
//! characters per name, 256 per value, 25 items queued. kvssink posts a warning for an item it
//! refuses.
//!
//! The video is a live test source (a key frame, so a fragment, every second).

#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use gst::prelude::*;

const HELP: &str = "\
metadata: tag Kinesis Video Streams fragments with kvs-add-metadata events

Usage: cargo run --example metadata -- [OPTIONS]

Options:
  --stream NAME            KVS stream name (default metadata)
  --persistent NAME=VALUE  metadata on every fragment (repeatable; default camera=kvssink-rs-example)
  --event NAME             name of a one-off item sent every --every seconds, with the values
                           1, 2, 3, … (default motion)
  --every SECONDS          interval of the one-off item (default 3)
  --duration SECONDS       stop after this long (default: run until Ctrl-C)
  -h, --help               this text

Exit status: 0 after a clean end of stream, 1 after an error.
";

/// The `kvs-add-metadata` event.
fn metadata_event(name: &str, value: &str, persist: bool) -> gst::Event {
    let s = gst::Structure::builder("kvs-add-metadata")
        .field("name", name)
        .field("value", value)
        .field("persist", persist)
        .build();
    gst::event::CustomDownstream::new(s)
}

fn main() {
    let mut args = support::Args::parse(HELP, &[]);
    let stream: String = args.value("stream", "metadata".to_owned());
    let mut persistent: Vec<(String, String)> = Vec::new();
    for item in args.all("persistent") {
        match item.split_once('=') {
            Some((n, v)) => persistent.push((n.to_owned(), v.to_owned())),
            None => args.fail(&format!("--persistent needs NAME=VALUE, got '{item}'")),
        }
    }
    if persistent.is_empty() {
        persistent.push(("camera".to_owned(), "kvssink-rs-example".to_owned()));
    }
    let event_name: String = args.value("event", "motion".to_owned());
    let every = Duration::from_secs_f64(args.value("every", 3.0f64).max(0.1));
    let duration: Option<f64> = args.opt("duration");
    args.finish();

    support::init();
    support::catch_interrupt();
    let description = format!(
        "videotestsrc is-live=true pattern=ball ! video/x-raw,format=I420,width=320,height=240,framerate=15/1 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15 bframes=0 ! h264parse \
         ! kvssink name=sink stream-name={stream}"
    );
    let pipeline = gst::parse::launch(&description)
        .expect("the pipeline builds")
        .downcast::<gst::Pipeline>()
        .unwrap();
    let sink = pipeline.by_name("sink").unwrap();
    let pad = sink.static_pad("video_0").expect("the video pad is linked");
    if pipeline.set_state(gst::State::Playing).is_err() {
        eprintln!("error: the pipeline did not start");
        std::process::exit(1);
    }

    // Persistent items: sent once, written into every fragment from the next one on.
    for (name, value) in &persistent {
        pad.send_event(metadata_event(name, value, true));
        println!("persistent {name}={value}");
    }

    let started = Instant::now();
    let bus = pipeline.bus().unwrap();
    let mut fragments = support::Fragments::default();
    let mut next_event = started + every;
    let mut sent = 0u64;
    let mut eos_sent: Option<Instant> = None;
    let ok = loop {
        let now = Instant::now();
        let done = support::interrupted()
            || duration.is_some_and(|d| started.elapsed().as_secs_f64() >= d);
        if done && eos_sent.is_none() {
            pipeline.send_event(gst::event::Eos::new());
            eos_sent = Some(now);
        }
        if eos_sent.is_some_and(|t| t.elapsed() > Duration::from_secs(130)) {
            eprintln!("error: no EOS after stopping");
            break false;
        }
        if eos_sent.is_none() && now >= next_event {
            // One-off: only the next fragment carries it.
            sent += 1;
            pad.send_event(metadata_event(&event_name, &sent.to_string(), false));
            println!("one-off {event_name}={sent}");
            next_event += every;
        }
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(50)) else {
            continue;
        };
        if let Some(line) = fragments.on_message(&msg) {
            eprintln!("{line}");
        }
        match msg.view() {
            gst::MessageView::Eos(_) => break true,
            gst::MessageView::Error(e) => {
                eprintln!("error: {} ({})", e.error(), e.debug().unwrap_or_default());
                break false;
            }
            gst::MessageView::Warning(w) => eprintln!("warning: {}", w.error()),
            _ => {}
        }
    };
    let _ = pipeline.set_state(gst::State::Null);
    println!(
        "summary: events={sent} persisted={} dropped={}",
        fragments.persisted.len(),
        fragments.dropped
    );
    std::process::exit(if ok { 0 } else { 1 });
}
