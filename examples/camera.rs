//! Live video and audio from a camera and a microphone to Kinesis Video Streams.
//!
//! ```sh
//! cargo run --release --example camera -- --stream my-camera --width 1280 --height 720
//! ```
//!
//! Uses `v4l2src` when the video device exists and `alsasrc` when the machine has a sound card,
//! `videotestsrc`/`audiotestsrc` otherwise (or with `--test-sources`). Video is encoded with
//! x264enc (a key frame, so a fragment, every 2 s), audio with an AAC encoder. It shows the three
//! ways kvssink reports what happens to the stream:
//! - the `fragment-ack` signal with its C `FragmentAck` payload (as C programs use it),
//! - the `stream-error` signal (a non-recoverable error, with the SDK's STATUS code),
//! - bus messages: `kvssink-fragment-ack`, `kvssink-fragment-dropped`, warnings, errors and EOS.
//!
//! Every few seconds it prints a one-line status of the stream from kvssink's `stats` property.
//!
//! Ctrl-C (or `--duration`) ends the stream with EOS: kvssink uploads the last fragment and posts
//! EOS once it is persisted. Credentials and endpoint come from the environment as for any kvssink
//! pipeline (`AWS_ACCESS_KEY_ID`, …; the local endpoint prints the `export` lines to use).

#[path = "support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gst::glib;
use gst::prelude::*;
use gstkvssink::kvssink::{AckType, FragmentAck};

const HELP: &str = "\
camera: live video + audio from a camera (or test sources) to Kinesis Video Streams

Usage: cargo run --example camera -- [OPTIONS]

Options:
  --stream NAME          KVS stream name (default camera)
  --width N              video width (default 1280)
  --height N             video height (default 720)
  --framerate N          frames per second (default 30)
  --bitrate KBPS         H.264 bitrate in kbit/s (default 2000)
  --video-device PATH    V4L2 device (default /dev/video0, used when it exists)
  --audio-device NAME    ALSA device (default: `default`, used when the machine has a sound card)
  --test-sources         use videotestsrc/audiotestsrc even when a camera exists
  --no-audio             video only
  --region REGION        aws-region (AWS_DEFAULT_REGION overrides it)
  --duration SECONDS     stop after this long (default: run until Ctrl-C)
  --status-interval S    print a status line from kvssink's stats every S seconds (default 5, 0 = never)
  --verbose              print every ACK
  -h, --help             this text

Credentials, CONTROL_PLANE_URI and KVSSINK_CA_CERT_PATH come from the environment, as for any
kvssink pipeline. Exit status: 0 after a clean end of stream, 1 after an error.
";

fn sound_card_present() -> bool {
    std::fs::read_to_string("/proc/asound/cards")
        .map(|c| !c.trim().is_empty() && !c.contains("no soundcards"))
        .unwrap_or(false)
}

fn main() {
    let mut args = support::Args::parse(HELP, &["test-sources", "no-audio", "verbose"]);
    let stream: String = args.value("stream", "camera".to_owned());
    let width: u32 = args.value("width", 1280);
    let height: u32 = args.value("height", 720);
    let fps: u32 = args.value("framerate", 30);
    let bitrate: u32 = args.value("bitrate", 2000);
    let video_device: String = args.value("video-device", "/dev/video0".to_owned());
    let audio_device: String = args.value("audio-device", "default".to_owned());
    let test_sources = args.flag("test-sources");
    let no_audio = args.flag("no-audio");
    let region: Option<String> = args.opt("region");
    let duration: Option<f64> = args.opt("duration");
    let status_interval: f64 = args.value("status-interval", 5.0);
    let verbose = args.flag("verbose");
    args.finish();
    if width < 16 || height < 16 || fps == 0 || bitrate == 0 {
        args.fail("width and height must be at least 16, framerate and bitrate above 0");
    }
    if !status_interval.is_finite() || status_interval < 0.0 {
        args.fail("--status-interval is a number of seconds, 0 or more");
    }
    let status_interval = (status_interval > 0.0).then(|| Duration::from_secs_f64(status_interval));

    support::init();
    support::catch_interrupt();

    let camera =
        !test_sources && support::has("v4l2src") && std::path::Path::new(&video_device).exists();
    let video_src = if camera {
        format!("v4l2src device={video_device}")
    } else {
        "videotestsrc is-live=true pattern=ball".to_owned()
    };
    let mut description = format!(
        "{video_src} ! videoconvert ! videoscale ! videorate \
         ! video/x-raw,format=I420,width={width},height={height},framerate={fps}/1 \
         ! x264enc bitrate={bitrate} tune=zerolatency speed-preset=veryfast key-int-max={key_int} bframes=0 \
         ! h264parse ! video/x-h264,stream-format=avc,alignment=au ! queue \
         ! kvssink name=sink stream-name={stream}",
        key_int = 2 * fps
    );
    if !no_audio {
        let mic = !test_sources && support::has("alsasrc") && sound_card_present();
        let audio_src = if mic {
            format!("alsasrc device={audio_device}")
        } else {
            "audiotestsrc is-live=true wave=ticks".to_owned()
        };
        description.push_str(&format!(
            " {audio_src} ! audioconvert ! audioresample ! audio/x-raw,rate=44100,channels=1 \
             ! {} ! aacparse ! audio/mpeg,stream-format=raw ! queue ! sink.",
            support::aac_encoder()
        ));
    }
    println!("pipeline: {description}");

    let pipeline = match gst::parse::launch(&description) {
        Ok(p) => p.downcast::<gst::Pipeline>().expect("a pipeline"),
        Err(e) => {
            eprintln!("error: cannot build the pipeline: {e}");
            std::process::exit(1);
        }
    };
    let sink = pipeline
        .by_name("sink")
        .expect("kvssink is in the pipeline");
    if let Some(region) = region {
        sink.set_property("aws-region", region);
    }
    let counts = support::count_buffers(&sink);

    // The C-compatible signals. Both run on kvssink's network thread: keep handlers short.
    let persisted = Arc::new(AtomicU64::new(0));
    let p = persisted.clone();
    sink.connect("fragment-ack", false, move |values| {
        let ptr = values[1].get::<glib::Pointer>().ok()?;
        // SAFETY: kvssink passes a `FragmentAck` that is valid for the emission.
        let ack = unsafe { &*(ptr as *const FragmentAck) };
        if ack.ack_type == AckType::Persisted {
            p.fetch_add(1, Ordering::Relaxed);
        }
        if verbose {
            let n = ack
                .sequence_number
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(0);
            println!(
                "ack {:?} fragment {} (number {}, result {})",
                ack.ack_type,
                ack.timestamp,
                String::from_utf8_lossy(&ack.sequence_number[..n]),
                ack.result
            );
        }
        None
    });
    sink.connect("stream-error", false, |values| {
        let status = values[1].get::<u64>().unwrap_or_default();
        eprintln!("stream-error: status 0x{status:08x}");
        None
    });

    if pipeline.set_state(gst::State::Playing).is_err() {
        eprintln!("error: the pipeline did not start");
        report_errors(&pipeline);
        let _ = pipeline.set_state(gst::State::Null);
        std::process::exit(1);
    }
    println!(
        "streaming to '{stream}' from {}; Ctrl-C stops",
        if camera { "the camera" } else { "test sources" }
    );

    let started = Instant::now();
    let bus = pipeline.bus().expect("a pipeline has a bus");
    let mut fragments = support::Fragments::default();
    // After EOS is sent: kvssink waits at most stop-stream-timeout for the last ACK.
    let eos_wait = Duration::from_secs(u64::from(sink.property::<u32>("stop-stream-timeout")) + 10);
    let mut eos_sent: Option<Instant> = None;
    let mut last_status = Instant::now();
    let ok = loop {
        if status_interval.is_some_and(|i| last_status.elapsed() >= i) {
            last_status = Instant::now();
            let stats = sink.property::<gst::Structure>("stats");
            println!("{}", support::status_line(&stream, &stats));
        }
        let stop_now = interrupted_or_done(started, duration);
        if stop_now && eos_sent.is_none() {
            println!("stopping: sending EOS");
            pipeline.send_event(gst::event::Eos::new());
            eos_sent = Some(Instant::now());
        }
        if eos_sent.is_some_and(|t| t.elapsed() > eos_wait) {
            eprintln!("error: no EOS within {eos_wait:?}");
            break false;
        }
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(100)) else {
            continue;
        };
        if let Some(line) = fragments.on_message(&msg) {
            eprintln!("{line}");
        }
        match msg.view() {
            gst::MessageView::Eos(_) => break true,
            gst::MessageView::Error(e) => {
                eprintln!(
                    "error from {}: {} ({})",
                    msg.src().map(|s| s.path_string()).unwrap_or_default(),
                    e.error(),
                    e.debug().unwrap_or_default()
                );
                break false;
            }
            gst::MessageView::Warning(w) => eprintln!(
                "warning from {}: {}",
                msg.src().map(|s| s.path_string()).unwrap_or_default(),
                w.error()
            ),
            _ => {}
        }
    };
    let _ = pipeline.set_state(gst::State::Null);
    println!(
        "summary: {} persisted={} acked={} signal-persisted={} error-acks={} dropped={}",
        support::format_counts(&counts),
        fragments.persisted.len(),
        fragments.acked.len(),
        persisted.load(Ordering::Relaxed),
        fragments.error_acks,
        fragments.dropped
    );
    std::process::exit(if ok { 0 } else { 1 });
}

fn interrupted_or_done(started: Instant, duration: Option<f64>) -> bool {
    support::interrupted() || duration.is_some_and(|d| started.elapsed().as_secs_f64() >= d)
}

fn report_errors(pipeline: &gst::Pipeline) {
    let bus = pipeline.bus().expect("a pipeline has a bus");
    while let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error]) {
        if let gst::MessageView::Error(e) = msg.view() {
            eprintln!("error: {} ({})", e.error(), e.debug().unwrap_or_default());
        }
    }
}
