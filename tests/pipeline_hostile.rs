//! Hostile media through whole pipelines: real encoder output (x264enc) altered the way broken
//! cameras and files alter it — corrupted and truncated access units, no parameter sets before
//! the first IDR, empty buffers, timestamps that go backwards or are missing, DTS after PTS, a
//! frame larger than the service accepts, caps changes every few frames — fed through an appsrc
//! into kvssink and the local endpoint. Each must end with EOS (no panic, no hang), a warning or
//! error that names the problem, and, where the stream can recover, every frame stored except
//! those a named rule dropped.

mod common;
use common::pipeline;

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gst::prelude::*;
use kvs_local_endpoint::{Config, LocalEndpoint};
use pipeline::{Run, RunOptions, run, stored_frames};

const KEY_INT: usize = 10;
const FRAMES: usize = 60;

#[derive(Clone)]
struct Au {
    data: Vec<u8>,
    pts: Option<gst::ClockTime>,
    dts: Option<gst::ClockTime>,
    key: bool,
}

/// `FRAMES` H.264 access units (Annex-B, SPS/PPS before each IDR, an IDR every `KEY_INT`) of
/// `width`x240, from x264enc.
fn encode(width: u32) -> Vec<Au> {
    common::init();
    let line = format!(
        "videotestsrc num-buffers={FRAMES} pattern=ball ! video/x-raw,width={width},height=240,framerate=30/1 \
         ! x264enc speed-preset=ultrafast tune=zerolatency key-int-max={KEY_INT} ! h264parse config-interval=-1 \
         ! video/x-h264,stream-format=byte-stream,alignment=au ! fakesink name=out"
    );
    let p = gst::parse::launch(&line)
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    let aus = Arc::new(Mutex::new(Vec::new()));
    let collected = aus.clone();
    p.by_name("out")
        .unwrap()
        .static_pad("sink")
        .unwrap()
        .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if let Some(b) = info.buffer() {
                collected.lock().unwrap().push(Au {
                    data: b.map_readable().unwrap().to_vec(),
                    pts: b.pts(),
                    dts: b.dts(),
                    key: !b.flags().contains(gst::BufferFlags::DELTA_UNIT),
                });
            }
            gst::PadProbeReturn::Ok
        });
    p.set_state(gst::State::Playing).unwrap();
    let bus = p.bus().unwrap();
    bus.timed_pop_filtered(
        gst::ClockTime::from_seconds(30),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    )
    .expect("the encoder finished");
    p.set_state(gst::State::Null).unwrap();
    let aus = aus.lock().unwrap().clone();
    assert_eq!(aus.len(), FRAMES);
    assert!(aus[0].key && aus[KEY_INT].key);
    aus
}

const BYTE_STREAM_CAPS: &str =
    "video/x-h264,stream-format=byte-stream,alignment=au,width=320,height=240,framerate=30/1";

fn buffer(au: &Au) -> gst::Buffer {
    let mut b = gst::Buffer::from_slice(au.data.clone());
    let m = b.get_mut().unwrap();
    m.set_pts(au.pts);
    m.set_dts(au.dts);
    if !au.key {
        m.set_flags(gst::BufferFlags::DELTA_UNIT);
    }
    b
}

/// Feeds `aus` (with caps changes where `caps` says: `(index, caps)`) into kvssink.
fn feed(name: &str, caps: Vec<(usize, String)>, aus: Vec<Au>) -> (LocalEndpoint, Run) {
    let ep = LocalEndpoint::start(Config::default()).expect("the local endpoint starts");
    let line = format!(
        "appsrc name=src format=time caps={} ! video/x-h264 ! kvssink name=sink stream-name={name}",
        caps[0].1
    );
    let on_playing = Box::new(move |p: &gst::Pipeline| {
        let src = p.by_name("src").unwrap();
        for (i, au) in aus.iter().enumerate() {
            if let Some((_, c)) = caps.iter().find(|(at, _)| *at == i && i > 0) {
                src.set_property("caps", gst::Caps::from_str(c).unwrap());
            }
            let _ = src.emit_by_name::<gst::FlowReturn>("push-buffer", &[&buffer(au)]);
        }
        let _ = src.emit_by_name::<gst::FlowReturn>("end-of-stream", &[]);
    });
    let run = run(
        &ep,
        &line,
        Duration::from_secs(60),
        RunOptions {
            on_playing: Some(on_playing),
            ..RunOptions::default()
        },
    );
    (ep, run)
}

fn byte_stream_caps() -> Vec<(usize, String)> {
    vec![(0, BYTE_STREAM_CAPS.to_owned())]
}

/// Ends cleanly: EOS, no error, nothing reported as a dropped fragment.
fn assert_clean_end(name: &str, run: &Run) {
    assert!(run.errors.is_empty(), "{name}: {:?}", run.errors);
    assert!(run.eos, "{name}: no EOS after {:?}", run.elapsed);
    assert!(run.dropped.is_empty(), "{name}: {:?}", run.dropped);
}

fn video_stored(ep: &LocalEndpoint, name: &str) -> u64 {
    stored_frames(ep, name).get(&1).copied().unwrap_or(0)
}

fn warned(run: &Run, what: &str) -> bool {
    run.warnings.iter().any(|w| w.contains(what))
}

/// Offsets of the NAL unit payloads (after each start code) of an Annex-B access unit.
fn nal_payloads(data: &[u8]) -> Vec<(usize, usize)> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut out = Vec::new();
    for (n, &s) in starts.iter().enumerate() {
        let end = starts.get(n + 1).map_or(data.len(), |&e| e - 3);
        let end = if end > s && data[end - 1] == 0 {
            end - 1
        } else {
            end
        };
        out.push((s, end));
    }
    out
}

/// Random bytes inside NAL units (never a start code): the frames are passed on as they are
/// (kvssink does not decode), all stored.
#[test]
fn random_bytes_inside_nal_units() {
    let mut aus = encode(320);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for au in aus.iter_mut().skip(1) {
        let nals = nal_payloads(&au.data);
        let &(s, e) = nals.last().unwrap();
        // Keep the NAL header byte; scribble over the slice data.
        for _ in 0..8 {
            if e > s + 2 {
                let at = s + 1 + (rnd() as usize % (e - s - 1));
                au.data[at] = 2 + (rnd() % 250) as u8;
            }
        }
    }
    let name = "hostile-random-bytes";
    let (ep, run) = feed(name, byte_stream_caps(), aus);
    assert_clean_end(name, &run);
    assert_eq!(video_stored(&ep, name), FRAMES as u64);
}

/// Access units cut short (every 7th delta frame to half its size): stored as they are.
#[test]
fn truncated_access_units() {
    let mut aus = encode(320);
    for (i, au) in aus.iter_mut().enumerate() {
        if i % 7 == 3 && !au.key {
            let half = au.data.len() / 2;
            au.data.truncate(half.max(6));
        }
    }
    let name = "hostile-truncated";
    let (ep, run) = feed(name, byte_stream_caps(), aus);
    assert_clean_end(name, &run);
    assert_eq!(video_stored(&ep, name), FRAMES as u64);
}

/// No SPS/PPS before the first IDR: the first GOP cannot be described and is dropped with a
/// warning that says why; the stream starts at the next IDR that carries them.
#[test]
fn no_parameter_sets_before_the_first_idr() {
    let mut aus = encode(320);
    let first = &mut aus[0];
    let nals = nal_payloads(&first.data);
    let &(idr, _) = nals
        .iter()
        .find(|(s, _)| first.data[*s] & 0x1f == 5)
        .expect("an IDR slice");
    first.data = [&[0u8, 0, 0, 1][..], &first.data[idr..]].concat();
    let name = "hostile-no-sps";
    let (ep, run) = feed(name, byte_stream_caps(), aus);
    assert_clean_end(name, &run);
    assert!(warned(&run, "SPS/PPS"), "{:?}", run.warnings);
    assert_eq!(video_stored(&ep, name), (FRAMES - KEY_INT) as u64);
}

/// Empty buffers between frames (byte-stream and length-prefixed input): refused with a
/// warning naming them; every real frame stored.
#[test]
fn zero_size_buffers() {
    let aus = encode(320);
    let empty = |au: &Au| Au {
        data: Vec::new(),
        key: false,
        ..au.clone()
    };
    let with_empties: Vec<Au> = aus.iter().flat_map(|au| [au.clone(), empty(au)]).collect();
    let name = "hostile-empty";
    let (ep, run) = feed(name, byte_stream_caps(), with_empties);
    assert_clean_end(name, &run);
    assert!(warned(&run, "empty buffer"), "{:?}", run.warnings);
    assert_eq!(video_stored(&ep, name), FRAMES as u64);
}

/// PTS going backwards now and then (no B-frames), DTS after PTS, and buffers without any
/// timestamp: repaired (clamped, raised, interpolated), every frame stored in order.
#[test]
fn broken_timestamps_are_repaired() {
    let aus = encode(320);
    type Alter = fn(usize, &mut Au);
    let cases: [(&str, Alter); 3] = [
        ("hostile-pts-backwards", |i, au| {
            if i % 10 == 5 {
                au.pts = au
                    .pts
                    .map(|t| t.saturating_sub(gst::ClockTime::from_mseconds(100)));
                au.dts = au.pts;
            }
        }),
        ("hostile-dts-after-pts", |i, au| {
            if i % 4 == 1 {
                au.dts = au.pts.map(|t| t + gst::ClockTime::from_mseconds(50));
            }
        }),
        ("hostile-no-timestamps", |i, au| {
            if i % 3 == 2 {
                au.pts = None;
                au.dts = None;
            }
        }),
    ];
    for (name, alter) in cases {
        let mut aus = aus.clone();
        for (i, au) in aus.iter_mut().enumerate() {
            alter(i, au);
        }
        let (ep, run) = feed(name, byte_stream_caps(), aus);
        assert_clean_end(name, &run);
        assert_eq!(video_stored(&ep, name), FRAMES as u64, "{name}");
    }
}

/// A frame larger than the service's maximum fragment size: refused with a warning that names
/// the limit; the rest of its GOP (which refers to it) is dropped and the stream goes on at the
/// next key frame.
#[test]
fn a_frame_larger_than_the_maximum_fragment_size() {
    let mut aus = encode(320);
    let huge = &mut aus[KEY_INT + 4];
    assert!(!huge.key);
    let mut data = huge.data.clone();
    data.resize(51 * 1024 * 1024, 0x5a);
    huge.data = data;
    let name = "hostile-huge-frame";
    let (ep, run) = feed(name, byte_stream_caps(), aus);
    assert_clean_end(name, &run);
    assert!(warned(&run, "maximum fragment size"), "{:?}", run.warnings);
    // Frames 14..19 are lost: the huge one and the deltas after it.
    assert_eq!(video_stored(&ep, name), (FRAMES - (KEY_INT - 4)) as u64);
}

/// Caps that change every GOP (the resolution alternates; each GOP starts with an IDR and its
/// SPS/PPS): a new session header each time, every frame stored.
#[test]
fn caps_change_every_few_frames() {
    let (a, b) = (encode(320), encode(352));
    let caps = |w: u32| {
        format!(
            "video/x-h264,stream-format=byte-stream,alignment=au,width={w},height=240,framerate=30/1"
        )
    };
    let mut aus = Vec::new();
    let mut changes = Vec::new();
    for gop in 0..FRAMES / KEY_INT {
        let (src, w) = if gop % 2 == 0 { (&a, 320) } else { (&b, 352) };
        changes.push((gop * KEY_INT, caps(w)));
        aus.extend_from_slice(&src[gop * KEY_INT..(gop + 1) * KEY_INT]);
    }
    let name = "hostile-caps-changes";
    let (ep, run) = feed(name, changes, aus);
    assert_clean_end(name, &run);
    assert_eq!(video_stored(&ep, name), FRAMES as u64);
    assert!(
        ep.sessions(Some(name)).len() >= FRAMES / KEY_INT,
        "a session per header: {}",
        ep.sessions(Some(name)).len()
    );
}
