//! Packing benchmarks of the media core: 1080p-sized H.264 frames (a 150 KB key frame and
//! 29 × 35 KB delta frames per 1 s GOP) through the whole stream muxer (timeline, the one copy
//! into the fragment arena, interleaver, fragmenter).
//!
//! Two ways to treat the output: `*_store` keeps the last 128 MB of fragments (the default
//! `storage-size`) like the fragment store does, so the copy writes to memory that is not in
//! the cache — the realistic figure; `*_hot` drops each fragment at once, so the arena's
//! memory is recycled while still cached — the upper bound.
//!
//! Run: `cargo bench --bench packer`. Besides divan's timings (MB/s and frames/s), it prints heap
//! allocations per frame in steady state, counted by a global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use divan::Bencher;
use divan::counter::{BytesCount, ItemsCount};
use gstkvssink::media::codec::{TrackConfig, TrackType, VideoCodec};
use gstkvssink::media::muxer::{FrameIn, MuxerConfig, StreamMuxer, TrackInput};
use gstkvssink::media::timeline::{SystemClock, TimelineConfig};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator, only counting calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const GOP: usize = 30;
const KEY_SIZE: usize = 150_000;
const DELTA_SIZE: usize = 35_000;
const FRAME_NS: u64 = 33_333_333;
const AVCC: [u8; 23] = [
    1, 66, 0, 30, 0xFF, 0xE1, 0, 8, 0x67, 66, 0, 30, 0xF4, 0x0A, 0x0F, 0xC8, 1, 0, 4, 0x68, 0xCE,
    0x38, 0x80,
];

fn payload(size: usize, seed: u8) -> Vec<u8> {
    (0..size)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

/// Length-prefixed payloads (one NAL unit each).
fn avc_frames() -> (Vec<u8>, Vec<u8>) {
    let mut key = payload(KEY_SIZE, 1);
    key[..4].copy_from_slice(&(KEY_SIZE as u32 - 4).to_be_bytes());
    let mut delta = payload(DELTA_SIZE, 2);
    delta[..4].copy_from_slice(&(DELTA_SIZE as u32 - 4).to_be_bytes());
    (key, delta)
}

/// Annex-B payloads: start code + NAL unit, with no accidental start codes inside.
fn annexb_frames() -> (Vec<u8>, Vec<u8>) {
    let sps_pps: &[u8] = &[
        0, 0, 0, 1, 0x67, 66, 0, 30, 0xF4, 0x0A, 0x0F, 0xC8, 0, 0, 0, 1, 0x68, 0xCE, 0x38, 0x80,
    ];
    let body = |size: usize, nal: u8| {
        let mut v = vec![0, 0, 0, 1, nal];
        v.extend((0..size - 5).map(|i| (i % 251) as u8 | 0x10));
        v
    };
    let mut key = sps_pps.to_vec();
    key.extend(body(KEY_SIZE - sps_pps.len(), 0x65));
    (key, body(DELTA_SIZE, 0x41))
}

fn muxer(annexb: bool) -> (StreamMuxer, usize) {
    let cfg = MuxerConfig {
        timeline: TimelineConfig {
            use_original_pts: true,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut m = StreamMuxer::new(cfg, Box::new(SystemClock));
    let v = m.add_track(TrackType::Video, "kinesis_video").unwrap();
    let input = if annexb {
        TrackInput::AnnexB {
            codec: VideoCodec::H264,
            width: None,
            height: None,
        }
    } else {
        TrackInput::Configured(TrackConfig::h264(&AVCC, Some(1920), Some(1080)).unwrap())
    };
    m.set_input(v, input).unwrap();
    (m, v)
}

/// Completed fragments, kept up to `limit` bytes (0: dropped at once).
struct Store {
    fragments: std::collections::VecDeque<gstkvssink::media::fragmenter::Fragment>,
    bytes: usize,
    limit: usize,
}

impl Store {
    fn new(limit: usize) -> Self {
        Self {
            fragments: Default::default(),
            bytes: 0,
            limit,
        }
    }

    fn put(&mut self, f: gstkvssink::media::fragmenter::Fragment) {
        self.bytes += f.len;
        self.fragments.push_back(divan::black_box(f));
        while self.bytes > self.limit {
            let old = self.fragments.pop_front().unwrap();
            self.bytes -= old.len;
        }
    }
}

/// Pushes `n` frames starting at frame index `start`; completed fragments go to `store`.
fn run(
    m: &mut StreamMuxer,
    v: usize,
    frames: &(Vec<u8>, Vec<u8>),
    start: usize,
    n: usize,
    store: &mut Store,
) -> usize {
    let mut fragments = 0;
    for i in start..start + n {
        let key = i % GOP == 0;
        let ts = 1_700_000_000_000_000_000 + i as u64 * FRAME_NS;
        m.push(
            v,
            FrameIn {
                pts: Some(ts),
                dts: Some(ts),
                duration: Some(FRAME_NS),
                key,
                data: if key { &frames.0 } else { &frames.1 },
            },
        )
        .unwrap();
        while let Some(f) = m.pop_fragment() {
            fragments += 1;
            store.put(f);
        }
    }
    fragments
}

const FRAMES_PER_ITER: usize = GOP * 10;
const BYTES_PER_ITER: usize = (KEY_SIZE + (GOP - 1) * DELTA_SIZE) * 10;

const STORE_BYTES: usize = 128 * 1024 * 1024;

fn bench_pack(bencher: Bencher, annexb: bool, store_bytes: usize) {
    let frames = if annexb {
        annexb_frames()
    } else {
        avc_frames()
    };
    let (mut m, v) = muxer(annexb);
    let mut store = Store::new(store_bytes);
    let mut next = 0;
    // Fill the store, so eviction runs as in steady state.
    let warmup = (store_bytes / BYTES_PER_ITER + 1) * FRAMES_PER_ITER;
    run(&mut m, v, &frames, next, warmup, &mut store);
    next += warmup;
    bencher
        .counter(BytesCount::new(BYTES_PER_ITER))
        .counter(ItemsCount::new(FRAMES_PER_ITER))
        .bench_local(|| {
            run(&mut m, v, &frames, next, FRAMES_PER_ITER, &mut store);
            next += FRAMES_PER_ITER;
        });
}

/// Length-prefixed H.264 (caps with codec_data): timeline + one copy + interleave + fragment;
/// fragments kept in a 128 MB store.
#[divan::bench]
fn pack_avc_1080p_store(bencher: Bencher) {
    bench_pack(bencher, false, STORE_BYTES);
}

/// Annex-B H.264: as above, with start-code splitting and conversion during the copy.
#[divan::bench]
fn pack_annexb_1080p_store(bencher: Bencher) {
    bench_pack(bencher, true, STORE_BYTES);
}

/// Length-prefixed H.264, fragments dropped at once (cache-hot upper bound).
#[divan::bench]
fn pack_avc_1080p_hot(bencher: Bencher) {
    bench_pack(bencher, false, 0);
}

/// Annex-B H.264, fragments dropped at once (cache-hot upper bound).
#[divan::bench]
fn pack_annexb_1080p_hot(bencher: Bencher) {
    bench_pack(bencher, true, 0);
}

fn report_allocations() {
    for (name, annexb) in [("avc", false), ("annex-b", true)] {
        let frames = if annexb {
            annexb_frames()
        } else {
            avc_frames()
        };
        let (mut m, v) = muxer(annexb);
        let mut store = Store::new(STORE_BYTES);
        run(&mut m, v, &frames, 0, GOP * 10, &mut store);
        let n = GOP * 100;
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        let fragments = run(&mut m, v, &frames, GOP * 10, n, &mut store);
        let allocs = ALLOCATIONS.load(Ordering::Relaxed) - before;
        println!(
            "{name}: {allocs} heap allocations for {n} frames in {fragments} fragments: {:.3} per frame, {:.1} per fragment",
            allocs as f64 / n as f64,
            allocs as f64 / fragments as f64
        );
    }
}

fn main() {
    report_allocations();
    divan::main();
}
