//! No per-frame heap allocation in steady state: with a counting global allocator, a pushed frame
//! allocates only when it completes a fragment (the fragment's parts list) or when the arena
//! starts a new multi-megabyte chunk. Checked for length-prefixed and Annex-B H.264, and for an
//! A/V stream.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use gstkvssink::media::codec::{G711Law, TrackConfig, TrackType, VideoCodec};
use gstkvssink::media::muxer::{FrameIn, MuxerConfig, StreamMuxer, TrackInput};
use gstkvssink::media::timeline::{SystemClock, TimelineConfig};

struct Counting;

thread_local! {
    // Per thread, so the test harness' other threads do not disturb the count.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator, only counting calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

const AVCC: [u8; 23] = [
    1, 66, 0, 30, 0xFF, 0xE1, 0, 8, 0x67, 66, 0, 30, 0xF4, 0x0A, 0x0F, 0xC8, 1, 0, 4, 0x68, 0xCE,
    0x38, 0x80,
];
const FRAME_NS: u64 = 33_333_333;
const EPOCH_NS: u64 = 1_700_000_000_000_000_000;

struct Stream {
    m: StreamMuxer,
    video: usize,
    audio: Option<usize>,
}

fn stream(annexb: bool, with_audio: bool) -> Stream {
    let cfg = MuxerConfig {
        timeline: TimelineConfig {
            use_original_pts: true,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut m = StreamMuxer::new(cfg, Box::new(SystemClock));
    let video = m.add_track(TrackType::Video, "kinesis_video").unwrap();
    let input = if annexb {
        TrackInput::AnnexB {
            codec: VideoCodec::H264,
            width: None,
            height: None,
        }
    } else {
        TrackInput::Configured(TrackConfig::h264(&AVCC, None, None).unwrap())
    };
    m.set_input(video, input).unwrap();
    let audio = with_audio.then(|| {
        let a = m.add_track(TrackType::Audio, "audio").unwrap();
        m.set_input(
            a,
            TrackInput::Configured(TrackConfig::g711(G711Law::ALaw, 8000, 1).unwrap()),
        )
        .unwrap();
        a
    });
    Stream { m, video, audio }
}

/// Pushes `n` video frames (key every 30) and, with audio, 20 ms audio frames in between.
/// Returns, per push, (allocations, fragment completed, arena chunk added).
fn drive(
    s: &mut Stream,
    key: &[u8],
    delta: &[u8],
    from: usize,
    n: usize,
    audio_until: usize,
) -> Vec<(u64, bool, bool)> {
    let audio_frame = [0xD5u8; 160];
    let mut audio_next = from as u64 * FRAME_NS;
    let mut out = Vec::new();
    for i in from..from + n {
        let ts = i as u64 * FRAME_NS;
        let mut pushes: Vec<(usize, u64, bool, &[u8])> = vec![(
            s.video,
            ts,
            i % 30 == 0,
            if i % 30 == 0 { key } else { delta },
        )];
        if let Some(a) = s.audio.filter(|_| i == audio_until) {
            s.m.end_of_stream(a).unwrap();
        }
        if let Some(a) = s.audio.filter(|_| i < audio_until) {
            while audio_next < ts + FRAME_NS {
                pushes.push((a, audio_next, true, &audio_frame));
                audio_next += 20_000_000;
            }
        }
        for (track, ts, k, data) in pushes {
            let chunks = s.m.stats().arena_chunks;
            let fragments_before = s.m.stats().fragmenter.fragments;
            let before = allocations();
            s.m.push(
                track,
                FrameIn {
                    pts: Some(EPOCH_NS + ts),
                    dts: Some(EPOCH_NS + ts),
                    duration: None,
                    key: k,
                    data,
                },
            )
            .unwrap();
            let allocs = allocations() - before;
            let st = s.m.stats();
            out.push((
                allocs,
                st.fragmenter.fragments > fragments_before,
                st.arena_chunks > chunks,
            ));
            while let Some(f) = s.m.pop_fragment() {
                drop(f);
            }
        }
    }
    out
}

fn check(annexb: bool, with_audio: bool, audio_until: usize) {
    let (key, delta) = if annexb {
        let mut key = vec![
            0, 0, 0, 1, 0x67, 66, 0, 30, 0xF4, 0x0A, 0x0F, 0xC8, 0, 0, 0, 1, 0x68, 0xCE, 0x38,
            0x80, 0, 0, 0, 1, 0x65,
        ];
        key.extend(std::iter::repeat_n(0x5A, 150_000));
        let mut delta = vec![0, 0, 0, 1, 0x41];
        delta.extend(std::iter::repeat_n(0x5A, 35_000));
        (key, delta)
    } else {
        let mut key = vec![0x5A; 150_000];
        key[..4].copy_from_slice(&149_996u32.to_be_bytes());
        let mut delta = vec![0x5A; 35_000];
        delta[..4].copy_from_slice(&34_996u32.to_be_bytes());
        (key, delta)
    };
    let mut s = stream(annexb, with_audio);
    // Warm up: first header, first chunks, queue capacities.
    drive(&mut s, &key, &delta, 0, 300, audio_until);
    let per_push = drive(&mut s, &key, &delta, 300, 900, audio_until);
    let total: u64 = per_push.iter().map(|p| p.0).sum();
    let unexplained: Vec<&(u64, bool, bool)> = per_push
        .iter()
        .filter(|(allocs, fragment, chunk)| *allocs > 0 && !fragment && !chunk)
        .collect();
    assert!(
        unexplained.is_empty(),
        "{} pushes allocated without completing a fragment or starting an arena chunk",
        unexplained.len()
    );
    let fragments = per_push.iter().filter(|p| p.1).count() as u64;
    let chunks = per_push.iter().filter(|p| p.2).count() as u64;
    assert!((29..=30).contains(&fragments), "{fragments} fragments");
    // A fragment costs its parts list; a chunk its buffer and the shared header of `BytesMut`.
    // With an ended track, fragments without it get a header without it, built once (a few
    // allocations, not per frame).
    let header_builds = if with_audio && audio_until < 900 {
        12
    } else {
        0
    };
    assert!(
        total <= fragments + 2 * chunks + 2 + header_builds,
        "{total} allocations for {fragments} fragments and {chunks} chunks"
    );
    eprintln!(
        "annexb={annexb} audio={with_audio}: {total} allocations for {} pushes ({:.3}/push), {fragments} fragments, {chunks} arena chunks",
        per_push.len(),
        total as f64 / per_push.len() as f64
    );
}

#[test]
fn avc_video_allocates_per_fragment_not_per_frame() {
    check(false, false, usize::MAX);
}

#[test]
fn annexb_video_allocates_per_fragment_not_per_frame() {
    check(true, false, usize::MAX);
}

#[test]
fn av_stream_allocates_per_fragment_not_per_frame() {
    check(false, true, usize::MAX);
}

#[test]
fn av_stream_with_ended_audio_allocates_per_fragment_not_per_frame() {
    // Audio ends after 11.7 s; video frames then leave without it.
    check(false, true, 350);
}
