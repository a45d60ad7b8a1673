//! Start/stop cycles in one process: `--cycles` NULL→PLAYING→NULL cycles of one live A/V pipeline
//! through kvssink with data flowing (PLAYING for a random 0.1–1.2 s, so most stops fall inside a
//! fragment: key frame every 0.5 s), then `--elements` kvssink create/destroy (request both pads,
//! NULL→READY→NULL, release, drop). Reports RSS, threads (`/proc/self/task`) and open file
//! descriptors (`/proc/self/fd`) before, after the first cycle, after 100 and at the end (also
//! after a 12 s settle, once tokio's idle blocking threads have exited), and exits non-zero when
//! they are not flat or a state change hangs.
//!
//! The endpoint is another process (so its threads and descriptors are not counted): run it with
//! `scripts/cycles.sh`, or by hand with the `export` lines of `kvs_local_endpoint`.

#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use gst::prelude::*;

const HELP: &str = "\
cycles — kvssink start/stop and create/destroy cycles in one process

usage: cycles [--cycles N] [--elements N] [--seed S]
  (CONTROL_PLANE_URI and credentials from the environment: see scripts/cycles.sh)

  --cycles N     NULL→PLAYING→NULL cycles of a live pipeline (default 1000)
  --elements N   kvssink create/destroy cycles (default 1000)
  --seed S       seed of the PLAYING durations (default 1)
  --max-rss-growth-mib N   allowed RSS growth from after cycle 100 to the end (default 10;
                 pipeline cycles: twice that, and a quarter of it for the heap in use)
  --baseline     fakesinks instead of kvssink (what the rest of the pipeline costs)
";

#[derive(Debug, Clone, Copy)]
struct Sample {
    rss_kib: u64,
    /// Bytes malloc has handed out and not got back (glibc `mallinfo2`, all arenas and mmapped
    /// blocks): grows with a leak, unlike RSS not with fragmentation or memory the allocator keeps.
    heap_in_use: u64,
    threads: usize,
    fds: usize,
}

fn sample() -> Sample {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let count = |d: &str| std::fs::read_dir(d).map(|r| r.count()).unwrap_or(0);
    // SAFETY: mallinfo2 only reads the allocator's counters.
    let m = unsafe { libc::mallinfo2() };
    let heap_in_use = (m.uordblks + m.hblkhd) as u64;
    Sample {
        rss_kib,
        heap_in_use,
        threads: count("/proc/self/task"),
        // Minus the descriptor read_dir itself holds open.
        fds: count("/proc/self/fd").saturating_sub(1),
    }
}

fn show(label: &str, s: Sample) -> String {
    let line = format!(
        "{label:<28} RSS {:7.1} MiB  heap in use {:6.1} MiB  threads {:3}  fds {:3}",
        s.rss_kib as f64 / 1024.0,
        s.heap_in_use as f64 / 1048576.0,
        s.threads,
        s.fds
    );
    println!("{line}");
    line
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Drains the bus; counts PERSISTED ACKs, warnings and errors.
fn drain(bus: &gst::Bus, persisted: &mut u64, warnings: &mut u64, errors: &mut Vec<String>) {
    while let Some(msg) = bus.pop() {
        match msg.view() {
            gst::MessageView::Error(e) => errors.push(format!("{} ({:?})", e.error(), e.debug())),
            gst::MessageView::Warning(_) => *warnings += 1,
            gst::MessageView::Element(e) => {
                if let Some(s) = e.structure()
                    && s.name() == "kvssink-fragment-ack"
                    && s.get::<String>("event").as_deref() == Ok("PERSISTED")
                {
                    *persisted += 1;
                }
            }
            _ => {}
        }
    }
}

fn main() {
    let mut args = support::Args::parse(HELP, &["baseline"]);
    let cycles: u64 = args.value("cycles", 1000);
    let elements: u64 = args.value("elements", 1000);
    let mut rng = Rng(args.value("seed", 1));
    let max_growth: f64 = args.value("max-rss-growth-mib", 10.0);
    let baseline = args.flag("baseline");
    args.finish();
    if std::env::var_os("CONTROL_PLANE_URI").is_none() {
        args.fail("CONTROL_PLANE_URI is not set: start the local endpoint (scripts/cycles.sh)");
    }
    support::init();
    let mut failures = Vec::new();
    let mut report = Vec::new();

    // --- NULL→PLAYING→NULL with data flowing.
    let (video_sink, audio_sink) = if baseline {
        ("fakesink sync=false", "fakesink sync=false")
    } else {
        ("kvssink name=sink stream-name=cycles", "sink.")
    };
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc is-live=true ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15 bframes=0 bitrate=500 \
         ! h264parse ! queue ! {video_sink} \
         audiotestsrc is-live=true samplesperbuffer=1024 ! audio/x-raw,rate=44100,channels=1 \
         ! avenc_aac ! aacparse ! queue ! {audio_sink}"
    ))
    .expect("the pipeline parses")
    .downcast::<gst::Pipeline>()
    .unwrap();
    let bus = pipeline.bus().unwrap();
    let (mut persisted, mut warnings, mut errors) = (0u64, 0u64, Vec::new());
    let mut slowest_stop = Duration::ZERO;
    let before = sample();
    report.push(show("pipeline: before", before));
    let mut after_first = before;
    let mut after_100 = before;
    let started = Instant::now();
    for i in 1..=cycles {
        if pipeline.set_state(gst::State::Playing).is_err() {
            failures.push(format!("cycle {i}: PLAYING failed"));
        }
        let playing = Duration::from_millis(100 + rng.next() % 1100);
        let until = Instant::now() + playing;
        while Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
            drain(&bus, &mut persisted, &mut warnings, &mut errors);
        }
        let t = Instant::now();
        if pipeline.set_state(gst::State::Null).is_err() {
            failures.push(format!("cycle {i}: NULL failed"));
        }
        let took = t.elapsed();
        slowest_stop = slowest_stop.max(took);
        if took > Duration::from_secs(5) {
            failures.push(format!("cycle {i}: PLAYING→NULL took {took:?}"));
        }
        drain(&bus, &mut persisted, &mut warnings, &mut errors);
        if i == 1 {
            after_first = sample();
            report.push(show("pipeline: after cycle 1", after_first));
        }
        if i == 100.min(cycles) {
            after_100 = sample();
            report.push(show(&format!("pipeline: after cycle {i}"), after_100));
        }
        if i % 50 == 0 {
            let now = sample();
            eprintln!(
                "  {i}/{cycles} cycles, {persisted} fragments persisted, {:.0} s, RSS {:.1} MiB, heap in use {:.1} MiB, threads {}, fds {}",
                started.elapsed().as_secs_f64(),
                now.rss_kib as f64 / 1024.0,
                now.heap_in_use as f64 / 1048576.0,
                now.threads,
                now.fds
            );
        }
    }
    let end = sample();
    report.push(show(&format!("pipeline: after cycle {cycles}"), end));
    drop(bus);
    drop(pipeline);
    std::thread::sleep(Duration::from_secs(12));
    let settled = sample();
    report.push(show("pipeline: dropped, +12 s", settled));
    println!(
        "pipeline: {cycles} cycles in {:.0} s, {persisted} fragments PERSISTED, {warnings} warnings, {} errors, slowest PLAYING→NULL {slowest_stop:?}",
        started.elapsed().as_secs_f64(),
        errors.len()
    );
    for e in errors.iter().take(5) {
        failures.push(format!("error message: {e}"));
    }
    if persisted == 0 && cycles > 0 && !baseline {
        failures.push("no fragment was persisted: no data flowed".into());
    }
    // RSS after cycle 100 still grows with the encoders and GStreamer alone (`--baseline`: +5.6
    // MiB over 900 cycles, steps of the allocator keeping freed memory), so RSS gets a wider
    // bound; the heap in use (what a leak grows) the tight one.
    let growth = (settled.rss_kib as f64 - after_100.rss_kib as f64) / 1024.0;
    if growth > 2.0 * max_growth {
        failures.push(format!(
            "pipeline cycles: RSS grew {growth:.1} MiB after cycle 100"
        ));
    }
    let heap_growth = (settled.heap_in_use as f64 - after_100.heap_in_use as f64) / 1048576.0;
    if heap_growth > max_growth / 4.0 {
        failures.push(format!(
            "pipeline cycles: heap in use grew {heap_growth:.1} MiB after cycle 100"
        ));
    }
    if settled.fds > after_first.fds {
        failures.push(format!(
            "pipeline cycles: fds {} → {}",
            after_first.fds, settled.fds
        ));
    }
    if settled.threads > after_first.threads {
        failures.push(format!(
            "pipeline cycles: threads {} → {}",
            after_first.threads, settled.threads
        ));
    }

    // --- Element create/destroy.
    let e_before = sample();
    report.push(show("elements: before", e_before));
    let mut e_100 = e_before;
    let started = Instant::now();
    for i in 1..=elements {
        let sink = gst::ElementFactory::make("kvssink")
            .property("stream-name", "cycles-element")
            .build()
            .expect("kvssink is made");
        let v = sink.request_pad_simple("video_%u").expect("a video pad");
        let a = sink.request_pad_simple("audio_%u").expect("an audio pad");
        if sink.set_state(gst::State::Ready).is_err() {
            failures.push(format!("element {i}: READY failed"));
        }
        let _ = sink.set_state(gst::State::Null);
        sink.release_request_pad(&v);
        sink.release_request_pad(&a);
        drop(sink);
        if i == 100.min(elements) {
            e_100 = sample();
            report.push(show(&format!("elements: after {i}"), e_100));
        }
    }
    let e_end = sample();
    report.push(show(&format!("elements: after {elements}"), e_end));
    println!(
        "elements: {elements} create/destroy in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let growth = (e_end.rss_kib as f64 - e_100.rss_kib as f64) / 1024.0;
    if growth > max_growth {
        failures.push(format!("elements: RSS grew {growth:.1} MiB after 100"));
    }
    if e_end.fds > e_before.fds {
        failures.push(format!("elements: fds {} → {}", e_before.fds, e_end.fds));
    }
    if e_end.threads > e_before.threads {
        failures.push(format!(
            "elements: threads {} → {}",
            e_before.threads, e_end.threads
        ));
    }

    for f in &failures {
        println!("FAIL: {f}");
    }
    println!(
        "cycles: {cycles} pipeline cycles RSS {:.1}/{:.1}/{:.1} MiB heap {:.1}/{:.1}/{:.1} MiB (start/100/end) threads {}→{} fds {}→{}; {elements} elements RSS {:.1}/{:.1}/{:.1} MiB threads {}→{} fds {}→{}",
        after_first.rss_kib as f64 / 1024.0,
        after_100.rss_kib as f64 / 1024.0,
        settled.rss_kib as f64 / 1024.0,
        after_first.heap_in_use as f64 / 1048576.0,
        after_100.heap_in_use as f64 / 1048576.0,
        settled.heap_in_use as f64 / 1048576.0,
        after_first.threads,
        settled.threads,
        after_first.fds,
        settled.fds,
        e_before.rss_kib as f64 / 1024.0,
        e_100.rss_kib as f64 / 1024.0,
        e_end.rss_kib as f64 / 1024.0,
        e_before.threads,
        e_end.threads,
        e_before.fds,
        e_end.fds,
    );
    std::process::exit(i32::from(!failures.is_empty()));
}
