//! Runs a `gst-launch-1.0`-style pipeline with this crate's `kvssink` registered statically, so a
//! pipeline can be tried without installing the plugin:
//!
//! ```sh
//! cargo run --example launch -- "videotestsrc num-buffers=60 ! x264enc ! h264parse ! kvssink stream-name=test"
//! ```
//!
//! Exits 0 at EOS, 1 on an error; warnings and errors are printed to stderr.

use gst::prelude::*;

fn main() {
    let description = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    if description.is_empty() || description == "--help" {
        eprintln!("usage: launch '<pipeline description>'");
        std::process::exit(2);
    }
    gst::init().expect("GStreamer initializes");
    gstkvssink::plugin_register_static().expect("kvssink registers");
    let pipeline = match gst::parse::launch(&description) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("invalid pipeline: {e}");
            std::process::exit(2);
        }
    };
    let bus = pipeline.bus().expect("a pipeline has a bus");
    let code = if pipeline.set_state(gst::State::Playing).is_err() {
        1
    } else {
        loop {
            let Some(msg) = bus.timed_pop(gst::ClockTime::NONE) else {
                break 1;
            };
            match msg.view() {
                gst::MessageView::Eos(_) => break 0,
                gst::MessageView::Error(e) => {
                    eprintln!(
                        "error from {:?}: {} ({:?})",
                        msg.src().map(|s| s.path_string()),
                        e.error(),
                        e.debug()
                    );
                    break 1;
                }
                gst::MessageView::Warning(w) => {
                    eprintln!(
                        "warning from {:?}: {}",
                        msg.src().map(|s| s.path_string()),
                        w.error()
                    );
                }
                _ => (),
            }
        }
    };
    let _ = pipeline.set_state(gst::State::Null);
    std::process::exit(code);
}
