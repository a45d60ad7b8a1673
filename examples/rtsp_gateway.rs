//! An RTSP gateway: N cameras → N Kinesis Video streams in one process, each camera reconnected
//! on its own when it goes away, without disturbing the others.
//!
//! ```sh
//! cargo run --release --example rtsp_gateway -- \
//!     --camera front=rtsp://10.0.0.11:554/stream1 --camera back=rtsp://user:pass@10.0.0.12/h264
//! ```
//!
//! Each camera gets its own pipeline `[rtspsrc ! rtph26Xdepay ! h26Xparse] ! kvssink`, where the
//! part in brackets is a bin that is thrown away and rebuilt when the camera is lost (an error of
//! the source, the server ending the stream, or no video for `--stall-timeout` seconds), with an
//! exponential backoff. The kvssink of that camera is never stopped: what it buffered is still
//! uploaded, its PutMedia connection stays up, and the stream continues after the reconnection
//! (with a gap in time). The other cameras do not notice. The video (H.264 or H.265) is uploaded;
//! other streams of the camera are left unlinked.
//!
//! Every few seconds it prints a one-line status per stream from its kvssink's `stats` property.
//!
//! Ctrl-C (or `--duration`) ends every stream with EOS and exits once each kvssink has posted EOS
//! (the last fragments persisted).

#[path = "support/mod.rs"]
mod support;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gst::glib;
use gst::prelude::*;

const HELP: &str = "\
rtsp_gateway: N RTSP cameras to N Kinesis Video streams, each reconnected on its own

Usage: cargo run --example rtsp_gateway -- --camera NAME=URL [--camera NAME=URL ...] [OPTIONS]

Options:
  --camera NAME=URL      a camera: NAME is the KVS stream name, URL its rtsp:// address (repeatable)
  --protocols P          RTSP transport: tcp, udp or udp+tcp (default tcp)
  --latency MS           rtspsrc jitter buffer latency (default 200)
  --stall-timeout S      reconnect a camera that sent no video for S seconds (default 10)
  --max-backoff S        longest wait between reconnection attempts (default 30; first 1)
  --duration SECONDS     stop after this long (default: run until Ctrl-C)
  --status-interval S    print a status line per stream every S seconds (default 5, 0 = never)
  -h, --help             this text

Exit status: 0 when every stream ended cleanly, 1 when a kvssink failed.
";

struct Options {
    protocols: String,
    latency: u32,
    stall_timeout: Duration,
    max_backoff: Duration,
}

/// One camera: its pipeline, its kvssink, and the current source bin.
struct Camera {
    name: String,
    url: String,
    pipeline: gst::Pipeline,
    sink_pad: gst::Pad,
    source: Option<gst::Bin>,
    generation: u32,
    /// Milliseconds since `epoch` of the last video buffer of the current source.
    last_data: Arc<AtomicU64>,
    got_data: Arc<AtomicBool>,
    /// Set while shutting down: EOS then goes through to kvssink.
    stopping: Arc<AtomicBool>,
    backoff: Duration,
    reconnect_pending: bool,
    restarts: u32,
    frames: Arc<AtomicU64>,
    fragments: support::Fragments,
    eos: bool,
    failed: bool,
    _watch: Option<gst::bus::BusWatchGuard>,
}

type Shared = Rc<RefCell<Vec<Camera>>>;

fn main() {
    let mut args = support::Args::parse(HELP, &[]);
    let mut cameras_arg = args.all("camera");
    cameras_arg.extend(std::mem::take(&mut args.positional));
    let opts = Options {
        protocols: args.value("protocols", "tcp".to_owned()),
        latency: args.value("latency", 200),
        stall_timeout: Duration::from_secs_f64(args.value("stall-timeout", 10.0f64)),
        max_backoff: Duration::from_secs_f64(args.value("max-backoff", 30.0f64)),
    };
    let duration: Option<f64> = args.opt("duration");
    let status_interval: f64 = args.value("status-interval", 5.0);
    args.finish();
    if !status_interval.is_finite() || status_interval < 0.0 {
        args.fail("--status-interval is a number of seconds, 0 or more");
    }
    let status_interval = (status_interval > 0.0).then(|| Duration::from_secs_f64(status_interval));
    if cameras_arg.is_empty() {
        args.fail("at least one --camera NAME=URL is needed");
    }
    if !["tcp", "udp", "udp+tcp"].contains(&opts.protocols.as_str()) {
        args.fail("--protocols is tcp, udp or udp+tcp");
    }

    support::init();
    support::catch_interrupt();
    let main_loop = glib::MainLoop::new(None, false);
    let epoch = Instant::now();
    let opts = Rc::new(opts);
    let cameras: Shared = Rc::new(RefCell::new(Vec::new()));

    for spec in cameras_arg {
        let Some((name, url)) = spec.split_once('=') else {
            args.fail(&format!("--camera needs NAME=URL, got '{spec}'"));
        };
        let pipeline = gst::Pipeline::with_name(name);
        let sink = gst::ElementFactory::make("kvssink")
            .name("sink")
            .property("stream-name", name)
            .build()
            .expect("kvssink");
        pipeline.add(&sink).unwrap();
        let sink_pad = sink.request_pad_simple("video_%u").unwrap();
        let frames = Arc::new(AtomicU64::new(0));
        let f = frames.clone();
        sink_pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            f.fetch_add(1, Ordering::Relaxed);
            gst::PadProbeReturn::Ok
        });
        cameras.borrow_mut().push(Camera {
            name: name.to_owned(),
            url: url.to_owned(),
            pipeline,
            sink_pad,
            source: None,
            generation: 0,
            last_data: Arc::new(AtomicU64::new(0)),
            got_data: Arc::new(AtomicBool::new(false)),
            stopping: Arc::new(AtomicBool::new(false)),
            backoff: Duration::from_secs(1),
            reconnect_pending: false,
            restarts: 0,
            frames,
            fragments: support::Fragments::default(),
            eos: false,
            failed: false,
            _watch: None,
        });
    }

    let count = cameras.borrow().len();
    for i in 0..count {
        let watch = {
            let (cameras, opts, main_loop) = (cameras.clone(), opts.clone(), main_loop.clone());
            let bus = cameras.borrow()[i].pipeline.bus().unwrap();
            bus.add_watch_local(move |_, msg| {
                on_message(&cameras, i, msg, &opts, epoch, &main_loop);
                glib::ControlFlow::Continue
            })
            .expect("one watch per bus")
        };
        let mut cams = cameras.borrow_mut();
        let cam = &mut cams[i];
        cam._watch = Some(watch);
        attach_source(cam, &opts, epoch);
        if cam.pipeline.set_state(gst::State::Playing).is_err() {
            eprintln!("{}: the pipeline did not start", cam.name);
            cam.failed = true;
        }
        println!("{}: streaming {}", cam.name, cam.url);
    }

    // Five times a second: stalled cameras, Ctrl-C, --duration, the status lines.
    let stop_requested = Rc::new(RefCell::new(None::<Instant>));
    {
        let (cameras, opts, main_loop) = (cameras.clone(), opts.clone(), main_loop.clone());
        let mut last_status = Instant::now();
        glib::timeout_add_local(Duration::from_millis(200), move || {
            if status_interval.is_some_and(|i| last_status.elapsed() >= i) {
                last_status = Instant::now();
                for cam in cameras.borrow().iter() {
                    if let Some(sink) = cam.sink_pad.parent_element() {
                        let stats = sink.property::<gst::Structure>("stats");
                        println!("{}", support::status_line(&cam.name, &stats));
                    }
                }
            }
            let stop = support::interrupted()
                || duration.is_some_and(|d| epoch.elapsed().as_secs_f64() >= d);
            let mut stopping_since = stop_requested.borrow_mut();
            if stop && stopping_since.is_none() {
                *stopping_since = Some(Instant::now());
                println!("stopping: ending every stream with EOS");
                for cam in cameras.borrow_mut().iter_mut() {
                    stop_camera(cam);
                }
            }
            if stopping_since.is_some_and(|t| t.elapsed() > Duration::from_secs(130)) {
                eprintln!("error: not every stream ended in time");
                main_loop.quit();
            }
            if stopping_since.is_some() {
                check_done(&cameras, &main_loop);
                return glib::ControlFlow::Continue;
            }
            let now_ms = epoch.elapsed().as_millis() as u64;
            let stalled: Vec<usize> = cameras
                .borrow()
                .iter()
                .enumerate()
                .filter(|(_, c)| {
                    c.source.is_some()
                        && now_ms.saturating_sub(c.last_data.load(Ordering::Relaxed))
                            > opts.stall_timeout.as_millis() as u64
                })
                .map(|(i, _)| i)
                .collect();
            for i in stalled {
                let secs = opts.stall_timeout.as_secs_f64();
                lose_camera(&cameras, i, &format!("no video for {secs} s"), &opts, epoch);
            }
            glib::ControlFlow::Continue
        });
    }

    main_loop.run();

    let mut ok = true;
    for cam in cameras.borrow_mut().iter_mut() {
        let _ = cam.pipeline.set_state(gst::State::Null);
        ok &= cam.eos && !cam.failed;
        println!(
            "summary {}: frames={} persisted={} restarts={} dropped={} eos={} failed={}",
            cam.name,
            cam.frames.load(Ordering::Relaxed),
            cam.fragments.persisted.len(),
            cam.restarts,
            cam.fragments.dropped,
            cam.eos,
            cam.failed
        );
    }
    std::process::exit(if ok { 0 } else { 1 });
}

/// Builds `rtspsrc ! depay ! parse` in a bin and links it to the camera's kvssink pad.
fn attach_source(cam: &mut Camera, opts: &Options, epoch: Instant) {
    cam.generation += 1;
    let bin = gst::Bin::with_name(&format!("source{}", cam.generation));
    let src = gst::ElementFactory::make("rtspsrc")
        .property("location", &cam.url)
        .property("latency", opts.latency)
        .property_from_str("protocols", &opts.protocols)
        .build()
        .expect("rtspsrc (gstreamer1.0-plugins-good)");
    bin.add(&src).unwrap();
    let ghost = gst::GhostPad::builder(gst::PadDirection::Src)
        .name("src")
        .build();
    bin.add_pad(&ghost).unwrap();

    // Data watchdog, and the source's EOS (the server ended the stream) becomes a reconnection
    // instead of the end of the KVS stream.
    cam.last_data
        .store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    cam.got_data.store(false, Ordering::Relaxed);
    let (last, got, stopping) = (
        cam.last_data.clone(),
        cam.got_data.clone(),
        cam.stopping.clone(),
    );
    let weak_bin = bin.downgrade();
    ghost.add_probe(
        gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM,
        move |_, info| {
            if info.buffer().is_some() {
                last.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
                got.store(true, Ordering::Relaxed);
            } else if let Some(e) = info.event()
                && e.type_() == gst::EventType::Eos
                && !stopping.load(Ordering::SeqCst)
            {
                if let Some(bin) = weak_bin.upgrade() {
                    let s = gst::Structure::new_empty("camera-eos");
                    let _ =
                        bin.post_message(gst::message::Application::builder(s).src(&bin).build());
                }
                return gst::PadProbeReturn::Drop;
            }
            gst::PadProbeReturn::Ok
        },
    );

    let weak_bin = bin.downgrade();
    src.connect_pad_added(move |_, pad| {
        let Some(bin) = weak_bin.upgrade() else {
            return;
        };
        let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
        let Some(s) = caps.structure(0) else { return };
        let media = s.get::<&str>("media").unwrap_or("");
        let encoding = s.get::<&str>("encoding-name").unwrap_or("");
        let (depay, parse) = match (media, encoding) {
            ("video", "H264") => ("rtph264depay", "h264parse"),
            ("video", "H265") => ("rtph265depay", "h265parse"),
            _ => return, // audio, metadata, other codecs: left unlinked
        };
        let ghost = bin
            .static_pad("src")
            .unwrap()
            .downcast::<gst::GhostPad>()
            .unwrap();
        if ghost.target().is_some() {
            return; // one video stream per camera
        }
        let depay = gst::ElementFactory::make(depay).build().unwrap();
        let parse = gst::ElementFactory::make(parse)
            .property("config-interval", -1i32)
            .build()
            .unwrap();
        bin.add_many([&depay, &parse]).unwrap();
        depay.link(&parse).unwrap();
        depay.sync_state_with_parent().unwrap();
        parse.sync_state_with_parent().unwrap();
        ghost
            .set_target(Some(&parse.static_pad("src").unwrap()))
            .unwrap();
        if let Err(e) = pad.link(&depay.static_pad("sink").unwrap()) {
            eprintln!("cannot link the camera's {encoding} stream: {e:?}");
        }
    });

    cam.pipeline.add(&bin).unwrap();
    ghost.link(&cam.sink_pad).unwrap();
    // A bin added to a running pipeline gets the pipeline's base time only from us.
    if let Some(base) = cam.pipeline.base_time() {
        bin.set_base_time(base);
    }
    let _ = bin.sync_state_with_parent();
    cam.source = Some(bin);
}

/// Removes the current source bin; the kvssink pad stays linked to nothing until the next one.
fn detach_source(cam: &mut Camera) {
    if let Some(bin) = cam.source.take() {
        let _ = bin.set_state(gst::State::Null);
        if let Some(ghost) = bin.static_pad("src") {
            let _ = ghost.unlink(&cam.sink_pad);
        }
        let _ = cam.pipeline.remove(&bin);
    }
}

/// The camera is gone: drop its source and try again after the backoff.
fn lose_camera(cameras: &Shared, i: usize, reason: &str, opts: &Rc<Options>, epoch: Instant) {
    let mut cams = cameras.borrow_mut();
    let cam = &mut cams[i];
    if cam.reconnect_pending || cam.stopping.load(Ordering::SeqCst) || cam.failed {
        return;
    }
    if cam.got_data.load(Ordering::Relaxed) {
        cam.backoff = Duration::from_secs(1); // it had worked: start the backoff afresh
    }
    println!(
        "{}: camera lost ({reason}); reconnecting in {:?}",
        cam.name, cam.backoff
    );
    detach_source(cam);
    cam.reconnect_pending = true;
    cam.restarts += 1;
    let delay = cam.backoff;
    cam.backoff = (cam.backoff * 2).min(opts.max_backoff);
    let (cameras, opts) = (cameras.clone(), opts.clone());
    glib::timeout_add_local_once(delay, move || {
        let mut cams = cameras.borrow_mut();
        let cam = &mut cams[i];
        cam.reconnect_pending = false;
        if cam.stopping.load(Ordering::SeqCst) || cam.failed {
            return;
        }
        println!("{}: reconnecting to {}", cam.name, cam.url);
        attach_source(cam, &opts, epoch);
    });
}

/// Ends the camera's stream: the source goes, EOS goes straight to kvssink.
fn stop_camera(cam: &mut Camera) {
    cam.stopping.store(true, Ordering::SeqCst);
    detach_source(cam);
    if !cam.failed {
        cam.sink_pad.send_event(gst::event::Eos::new());
    }
}

fn check_done(cameras: &Shared, main_loop: &glib::MainLoop) {
    if cameras.borrow().iter().all(|c| c.eos || c.failed) {
        main_loop.quit();
    }
}

fn on_message(
    cameras: &Shared,
    i: usize,
    msg: &gst::Message,
    opts: &Rc<Options>,
    epoch: Instant,
    main_loop: &glib::MainLoop,
) {
    let from_source = {
        let cams = cameras.borrow();
        let source = cams[i].source.clone();
        msg.src().is_some_and(|s| {
            source
                .as_ref()
                .is_some_and(|b| s == b.upcast_ref::<gst::Object>() || s.has_as_ancestor(b))
        })
    };
    // Messages of an earlier source bin (still draining after its removal) are ignored.
    let from_sink = {
        let cams = cameras.borrow();
        let sink = cams[i].sink_pad.parent();
        msg.src().is_some_and(|s| Some(s) == sink.as_ref())
    };
    {
        let mut cams = cameras.borrow_mut();
        let cam = &mut cams[i];
        if let Some(line) = cam.fragments.on_message(msg) {
            eprintln!("{}: {line}", cam.name);
        }
    }
    match msg.view() {
        gst::MessageView::Error(e) if from_source => {
            let reason = format!("{}", e.error());
            lose_camera(cameras, i, &reason, opts, epoch);
        }
        gst::MessageView::Error(e) if from_sink => {
            // kvssink itself: not recoverable (credentials, stream settings, ...).
            let mut cams = cameras.borrow_mut();
            let cam = &mut cams[i];
            eprintln!(
                "{}: error: {} ({})",
                cam.name,
                e.error(),
                e.debug().unwrap_or_default()
            );
            cam.failed = true;
            cam.stopping.store(true, Ordering::SeqCst);
            detach_source(cam);
            let _ = cam.pipeline.set_state(gst::State::Null);
            drop(cams);
            if cameras.borrow().iter().all(|c| c.failed) {
                main_loop.quit();
            }
            check_done(cameras, main_loop);
        }
        gst::MessageView::Application(a)
            if from_source && a.structure().is_some_and(|s| s.name() == "camera-eos") =>
        {
            lose_camera(cameras, i, "the server ended the stream", opts, epoch);
        }
        gst::MessageView::Warning(w) if from_sink => {
            eprintln!("{}: warning: {}", cameras.borrow()[i].name, w.error());
        }
        gst::MessageView::Eos(_) => {
            let mut cams = cameras.borrow_mut();
            cams[i].eos = true;
            println!("{}: end of stream, everything confirmed", cams[i].name);
            drop(cams);
            check_done(cameras, main_loop);
        }
        _ => {}
    }
}
