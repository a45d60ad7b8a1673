//! Upload-side statistics behind the element's `stats` property: what was put into the fragment
//! store, sent and confirmed, as monotonic counters; what is buffered (accepted, not persisted
//! yet), as gauges; rolling frame and persist latencies and the send rate.
//!
//! Written by the streaming thread ([`super::Uploader::put`], under the store lock) and by the
//! uploader task (request body, ACKs, session ends); read from any thread with
//! [`UploadStats::snapshot`]. Counters are atomics; the rest sits behind one mutex that writers
//! take for a few field updates and the reader for a copy, never across I/O or a wait.
//!
//! Definitions:
//! - frame latency: a frame's block entering the store (in the streaming thread's call that
//!   accepted its buffer, or when the interleaver releases it to wait no longer for another
//!   track) → its bytes handed to the PutMedia connection; first sends only, not replays.
//! - persist latency: a fragment closed (its end put into the store) → its PERSISTED ACK.
//! - buffered: fragments accepted and neither persisted nor dropped; their duration runs from
//!   the oldest one's start to the newest frame accepted (in media time).
//! - stalled: streaming, but no ACK for [`STALL_AFTER`] while a closed fragment has waited that
//!   long for its PERSISTED ACK.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::media::mkv::cluster::simple_block_timecode;
use crate::upload::store::StorePiece;

/// Streaming without an ACK for this long while a closed fragment waits as long: stalled.
pub const STALL_AFTER: Duration = Duration::from_secs(5);
/// Latency samples kept for the percentiles.
const WINDOW: usize = 256;
/// Blocks waiting to be sent whose entry time is kept (older ones are forgotten).
const MAX_UNSENT: usize = 4096;
/// Fragments tracked as buffered at most (a bound only; the store holds far fewer).
const MAX_LEDGER: usize = 65_536;
/// The send rate is measured over this long, in `RATE_BUCKET` steps.
const RATE_WINDOW: Duration = Duration::from_secs(5);
const RATE_BUCKET: Duration = Duration::from_millis(250);
const RATE_BUCKETS: usize = 24;

/// Where the uploader's connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Credentials, control plane, first connection.
    SettingUp,
    /// A PutMedia connection is up.
    Streaming,
    /// A connection failed after streaming; a new one is being set up.
    Reconnecting,
}

/// A copy of everything at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct UploadSnapshot {
    pub link: Link,
    pub stalled: bool,
    pub fragments_built: u64,
    /// Fragment ends handed to a connection (replays counted again).
    pub fragments_sent: u64,
    pub fragments_persisted: u64,
    /// Media duration of the persisted fragments.
    pub persisted_duration_ms: u64,
    /// Bytes handed to PutMedia connections (headers and replays included).
    pub bytes_sent: u64,
    pub buffered_bytes: u64,
    pub buffered_duration_ms: u64,
    /// Bytes the store may hold (`storage-size`).
    pub storage_bytes: u64,
    pub sessions: u64,
    pub reconnects: u64,
    pub error_acks: u64,
    pub last_error: String,
    /// (p50, p99), ms; 0 before the first sample.
    pub frame_latency_ms: (f64, f64),
    pub persist_latency_ms: (f64, f64),
    /// Bits per second handed to the connection over the last [`RATE_WINDOW`].
    pub send_rate_bps: u64,
}

#[derive(Debug, Default)]
pub struct UploadStats {
    fragments_built: AtomicU64,
    fragments_sent: AtomicU64,
    fragments_persisted: AtomicU64,
    persisted_duration_ms: AtomicU64,
    bytes_sent: AtomicU64,
    sessions: AtomicU64,
    reconnects: AtomicU64,
    error_acks: AtomicU64,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    link: Link,
    last_error: String,
    last_ack: Option<Instant>,
    scale_ms: u64,
    storage_bytes: u64,
    /// Buffered fragments, oldest first.
    ledger: VecDeque<Entry>,
    buffered_bytes: u64,
    /// End of the newest media accepted, timecode units.
    newest_end: u64,
    /// Blocks in the store not sent yet: their address and when they entered.
    unsent: VecDeque<(usize, Instant)>,
    frame_latency: Window,
    persist_latency: Window,
    rate: Rate,
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            link: Link::SettingUp,
            last_error: String::new(),
            last_ack: None,
            scale_ms: 1,
            storage_bytes: 0,
            ledger: VecDeque::new(),
            buffered_bytes: 0,
            newest_end: 0,
            unsent: VecDeque::new(),
            frame_latency: Window::default(),
            persist_latency: Window::default(),
            rate: Rate::default(),
        }
    }
}

#[derive(Debug)]
struct Entry {
    timecode: u64,
    /// Timecode units.
    end: u64,
    bytes: u64,
    /// When its end entered the store.
    closed_at: Option<Instant>,
}

/// What a piece adds, noted before the store takes the piece.
#[derive(Debug)]
pub(crate) enum PieceNote {
    Begin {
        timecode: u64,
        end: u64,
        bytes: u64,
        blocks: Vec<usize>,
    },
    Append {
        block: usize,
        rel: Option<i16>,
        bytes: u64,
    },
    Complete {
        duration: u64,
        bytes: u64,
    },
    Whole {
        timecode: u64,
        end: u64,
        bytes: u64,
    },
}

impl PieceNote {
    pub(crate) fn of(piece: &StorePiece) -> Self {
        match piece {
            StorePiece::Begin(f) => {
                // parts[0] is the fragment's head (Tags, Cluster start), the rest frames.
                let blocks = f.parts.get(1..).unwrap_or_default();
                let rel = blocks
                    .iter()
                    .filter_map(|b| simple_block_timecode(b))
                    .max()
                    .unwrap_or(0);
                PieceNote::Begin {
                    timecode: f.timecode,
                    end: f.timecode.saturating_add_signed(rel.into()),
                    bytes: f.len as u64,
                    blocks: blocks.iter().map(|b| b.as_ptr() as usize).collect(),
                }
            }
            StorePiece::Append(b) => PieceNote::Append {
                block: b.as_ptr() as usize,
                rel: simple_block_timecode(b),
                bytes: b.len() as u64,
            },
            StorePiece::Complete { duration, tail, .. } => PieceNote::Complete {
                duration: *duration,
                bytes: tail.as_ref().map_or(0, |t| t.len() as u64),
            },
            StorePiece::Whole(f) => PieceNote::Whole {
                timecode: f.timecode,
                end: f.timecode + f.duration,
                bytes: f.len as u64,
            },
        }
    }
}

impl UploadStats {
    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A stream starts: nothing is buffered, the connection is being set up. Counters, latency
    /// samples and the rate go on.
    pub fn start_stream(&self, scale_ms: u64, storage_bytes: u64) {
        let mut i = self.inner();
        i.link = Link::SettingUp;
        i.last_ack = None;
        i.scale_ms = scale_ms.max(1);
        i.storage_bytes = storage_bytes;
        i.ledger.clear();
        i.buffered_bytes = 0;
        i.newest_end = 0;
        i.unsent.clear();
    }

    /// A piece entered the store.
    pub(crate) fn put(&self, note: PieceNote) {
        let now = Instant::now();
        let mut i = self.inner();
        match note {
            PieceNote::Begin {
                timecode,
                end,
                bytes,
                blocks,
            } => {
                i.add(Entry {
                    timecode,
                    end,
                    bytes,
                    closed_at: None,
                });
                for b in blocks {
                    i.unsent_push(b, now);
                }
            }
            PieceNote::Append { block, rel, bytes } => {
                i.unsent_push(block, now);
                i.buffered_bytes += bytes;
                if let Some(e) = i.ledger.back_mut().filter(|e| e.closed_at.is_none()) {
                    e.bytes += bytes;
                    if let Some(rel) = rel {
                        e.end = e.end.max(e.timecode.saturating_add_signed(rel.into()));
                    }
                    let end = e.end;
                    i.newest_end = i.newest_end.max(end);
                }
            }
            PieceNote::Complete { duration, bytes } => {
                i.buffered_bytes += bytes;
                if let Some(e) = i.ledger.back_mut().filter(|e| e.closed_at.is_none()) {
                    e.bytes += bytes;
                    e.end = e.timecode + duration;
                    e.closed_at = Some(now);
                    let end = e.end;
                    i.newest_end = i.newest_end.max(end);
                }
                self.fragments_built.fetch_add(1, Ordering::Relaxed);
            }
            PieceNote::Whole {
                timecode,
                end,
                bytes,
            } => {
                i.add(Entry {
                    timecode,
                    end,
                    bytes,
                    closed_at: Some(now),
                });
                self.fragments_built.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// `part` was handed to the PutMedia connection.
    pub fn part_sent(&self, part: &Bytes) {
        let now = Instant::now();
        self.bytes_sent
            .fetch_add(part.len() as u64, Ordering::Relaxed);
        let mut i = self.inner();
        i.rate.add(now, part.len() as u64);
        let ptr = part.as_ptr() as usize;
        // Blocks go out in the order they came in: the one sent is at the front, unless
        // blocks before it were never sent (dropped), which are forgotten with it.
        if let Some(pos) = i.unsent.iter().position(|(p, _)| *p == ptr) {
            let entered = i.unsent[pos].1;
            i.unsent.drain(..=pos);
            i.frame_latency.add(now - entered);
        }
    }

    /// The last byte of fragment `timecode` was handed to the connection.
    pub fn fragment_sent(&self, _timecode: u64) {
        self.fragments_sent.fetch_add(1, Ordering::Relaxed);
    }

    /// Fragment `timecode` was persisted (first time).
    pub fn persisted(&self, timecode: u64) {
        let now = Instant::now();
        self.fragments_persisted.fetch_add(1, Ordering::Relaxed);
        let mut i = self.inner();
        let Some(e) = i.remove(timecode) else {
            return;
        };
        let ms = e.end.saturating_sub(e.timecode) * i.scale_ms;
        self.persisted_duration_ms.fetch_add(ms, Ordering::Relaxed);
        if let Some(closed) = e.closed_at {
            i.persist_latency.add(now - closed);
        }
    }

    /// Fragment `timecode` left the store without being persisted.
    pub fn dropped(&self, timecode: u64) {
        self.inner().remove(timecode);
    }

    /// An ACK other than IDLE arrived.
    pub fn ack(&self) {
        self.inner().last_ack = Some(Instant::now());
    }

    /// A PutMedia connection is up.
    pub fn connected(&self) {
        self.sessions.fetch_add(1, Ordering::Relaxed);
        let mut i = self.inner();
        i.link = Link::Streaming;
        i.last_ack = Some(Instant::now());
    }

    /// Something failed and is retried; a connection that was streaming is a reconnect.
    pub fn retrying(&self, error: &str) {
        let mut i = self.inner();
        if i.link == Link::Streaming {
            i.link = Link::Reconnecting;
            self.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        error.clone_into(&mut i.last_error);
    }

    /// An ERROR ACK, described by `text`.
    pub fn error_ack(&self, text: &str) {
        self.error_acks.fetch_add(1, Ordering::Relaxed);
        text.clone_into(&mut self.inner().last_error);
    }

    /// An error that ends the stream.
    pub fn error(&self, text: &str) {
        text.clone_into(&mut self.inner().last_error);
    }

    pub fn snapshot(&self) -> UploadSnapshot {
        let now = Instant::now();
        let (frame, persist, mut s) = {
            let i = self.inner();
            let long_ago = |t: Option<Instant>| t.is_none_or(|t| now - t >= STALL_AFTER);
            let stalled = i.link == Link::Streaming
                && long_ago(i.last_ack)
                && i.ledger
                    .iter()
                    .any(|e| e.closed_at.is_some_and(|c| now - c >= STALL_AFTER));
            let buffered_duration_ms = i.ledger.front().map_or(0, |e| {
                i.newest_end.max(e.end).saturating_sub(e.timecode) * i.scale_ms
            });
            (
                i.frame_latency.clone(),
                i.persist_latency.clone(),
                UploadSnapshot {
                    link: i.link,
                    stalled,
                    fragments_built: 0,
                    fragments_sent: 0,
                    fragments_persisted: 0,
                    persisted_duration_ms: 0,
                    bytes_sent: 0,
                    buffered_bytes: i.buffered_bytes,
                    buffered_duration_ms,
                    storage_bytes: i.storage_bytes,
                    sessions: 0,
                    reconnects: 0,
                    error_acks: 0,
                    last_error: i.last_error.clone(),
                    frame_latency_ms: (0.0, 0.0),
                    persist_latency_ms: (0.0, 0.0),
                    send_rate_bps: i.rate.bits_per_second(now),
                },
            )
        };
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        s.fragments_built = n(&self.fragments_built);
        s.fragments_sent = n(&self.fragments_sent);
        s.fragments_persisted = n(&self.fragments_persisted);
        s.persisted_duration_ms = n(&self.persisted_duration_ms);
        s.bytes_sent = n(&self.bytes_sent);
        s.sessions = n(&self.sessions);
        s.reconnects = n(&self.reconnects);
        s.error_acks = n(&self.error_acks);
        s.frame_latency_ms = frame.percentiles();
        s.persist_latency_ms = persist.percentiles();
        s
    }
}

impl Inner {
    fn add(&mut self, e: Entry) {
        if self.ledger.len() >= MAX_LEDGER
            && let Some(old) = self.ledger.pop_front()
        {
            self.buffered_bytes = self.buffered_bytes.saturating_sub(old.bytes);
        }
        self.buffered_bytes += e.bytes;
        self.newest_end = self.newest_end.max(e.end);
        self.ledger.push_back(e);
    }

    fn remove(&mut self, timecode: u64) -> Option<Entry> {
        let pos = self.ledger.iter().position(|e| e.timecode == timecode)?;
        let e = self.ledger.remove(pos)?;
        self.buffered_bytes = self.buffered_bytes.saturating_sub(e.bytes);
        Some(e)
    }

    fn unsent_push(&mut self, block: usize, at: Instant) {
        if self.unsent.len() >= MAX_UNSENT {
            self.unsent.pop_front();
        }
        self.unsent.push_back((block, at));
    }
}

/// The last [`WINDOW`] samples, in ms.
#[derive(Debug, Clone, Default)]
struct Window {
    samples: Vec<f64>,
    next: usize,
}

impl Window {
    fn add(&mut self, d: Duration) {
        let ms = d.as_secs_f64() * 1000.0;
        if self.samples.len() < WINDOW {
            self.samples.push(ms);
        } else {
            self.samples[self.next] = ms;
        }
        self.next = (self.next + 1) % WINDOW;
    }

    /// (p50, p99) by nearest rank; zeros without samples.
    fn percentiles(mut self) -> (f64, f64) {
        if self.samples.is_empty() {
            return (0.0, 0.0);
        }
        self.samples.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            let i = (p * self.samples.len() as f64).ceil() as usize;
            self.samples[i.clamp(1, self.samples.len()) - 1]
        };
        (rank(0.50), rank(0.99))
    }
}

/// Bytes per [`RATE_BUCKET`] over the last few seconds.
#[derive(Debug, Default)]
struct Rate {
    epoch: Option<Instant>,
    buckets: [(u64, u64); RATE_BUCKETS],
}

impl Rate {
    fn index(&self, epoch: Instant, at: Instant) -> u64 {
        ((at - epoch).as_nanos() / RATE_BUCKET.as_nanos()) as u64
    }

    fn add(&mut self, at: Instant, bytes: u64) {
        let epoch = *self.epoch.get_or_insert(at);
        let idx = self.index(epoch, at);
        let slot = &mut self.buckets[idx as usize % RATE_BUCKETS];
        if slot.0 != idx {
            *slot = (idx, 0);
        }
        slot.1 += bytes;
    }

    fn bits_per_second(&self, now: Instant) -> u64 {
        let Some(epoch) = self.epoch else {
            return 0;
        };
        let per_window = (RATE_WINDOW.as_nanos() / RATE_BUCKET.as_nanos()) as u64;
        let idx = self.index(epoch, now);
        let first = (idx + 1).saturating_sub(per_window);
        let bytes: u64 = self
            .buckets
            .iter()
            .filter(|(i, _)| (first..=idx).contains(i))
            .map(|(_, b)| b)
            .sum();
        let start = epoch + RATE_BUCKET * first as u32;
        let span = (now - start).max(RATE_BUCKET);
        (bytes as f64 * 8.0 / span.as_secs_f64()) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::mkv::cluster::simple_block_header;
    use crate::upload::store::StoredFragment;

    fn block(rel: i16) -> Bytes {
        let mut v = simple_block_header(1, rel, 0, 4).to_vec();
        v.extend_from_slice(&[0; 4]);
        Bytes::from(v)
    }

    fn begin(timecode: u64, first: &Bytes) -> StorePiece {
        StorePiece::Begin(StoredFragment::open(
            Bytes::new(),
            timecode,
            1,
            vec![Bytes::from_static(b"head"), first.clone()],
        ))
    }

    fn complete(duration: u64) -> StorePiece {
        StorePiece::Complete {
            duration,
            frames: 2,
            tail: None,
            end_of_stream: false,
        }
    }

    #[test]
    fn buffered_media_follows_puts_persists_and_drops() {
        let s = UploadStats::default();
        s.start_stream(1, 1000);
        let (b0, b1) = (block(0), block(40));
        for p in [begin(1000, &b0), StorePiece::Append(b1.clone())] {
            s.put(PieceNote::of(&p));
        }
        let snap = s.snapshot();
        assert_eq!(
            snap.buffered_duration_ms, 40,
            "open fragment, to its newest frame"
        );
        assert_eq!(snap.buffered_bytes, (4 + 17) + 17);
        s.put(PieceNote::of(&complete(80)));
        s.put(PieceNote::of(&begin(1080, &block(0))));
        assert_eq!(s.snapshot().buffered_duration_ms, 80);
        assert_eq!(s.snapshot().fragments_built, 1);

        s.part_sent(&b0);
        s.part_sent(&b1);
        s.part_sent(&Bytes::from_static(b"header"));
        s.fragment_sent(1000);
        s.persisted(1000);
        let snap = s.snapshot();
        assert_eq!(snap.fragments_persisted, 1);
        assert_eq!(snap.persisted_duration_ms, 80);
        assert_eq!(
            snap.buffered_duration_ms, 0,
            "the open one starts at its only frame"
        );
        assert_eq!(snap.bytes_sent, 17 * 2 + 6);
        assert!(snap.frame_latency_ms.1 >= snap.frame_latency_ms.0);
        assert!(snap.persist_latency_ms.0 >= 0.0);
        assert!(snap.send_rate_bps > 0);
        s.dropped(1080);
        assert_eq!(s.snapshot().buffered_bytes, 0);
    }

    #[test]
    fn reconnects_count_only_connections_that_were_streaming() {
        let s = UploadStats::default();
        s.start_stream(1, 1000);
        s.retrying("control plane down");
        assert_eq!(s.snapshot().link, Link::SettingUp);
        s.connected();
        s.retrying("reset");
        s.retrying("still down");
        let snap = s.snapshot();
        assert_eq!(
            (snap.link, snap.reconnects, snap.sessions),
            (Link::Reconnecting, 1, 1)
        );
        assert_eq!(snap.last_error, "still down");
        s.connected();
        s.error_ack("ERROR ACK 5000");
        let snap = s.snapshot();
        assert_eq!(
            (snap.link, snap.error_acks, snap.sessions),
            (Link::Streaming, 1, 2)
        );
        assert!(!snap.stalled);
    }

    #[test]
    fn percentiles_by_nearest_rank_over_the_last_samples() {
        let mut w = Window::default();
        assert_eq!(w.clone().percentiles(), (0.0, 0.0));
        for ms in 1..=100u64 {
            w.add(Duration::from_millis(ms));
        }
        assert_eq!(w.clone().percentiles(), (50.0, 99.0));
        for _ in 0..WINDOW {
            w.add(Duration::from_millis(7));
        }
        assert_eq!(w.percentiles(), (7.0, 7.0));
    }

    #[test]
    fn rate_covers_the_last_seconds() {
        let mut r = Rate::default();
        let t0 = Instant::now();
        assert_eq!(r.bits_per_second(t0), 0);
        for i in 0..40u32 {
            r.add(t0 + RATE_BUCKET * i, 1000);
        }
        let now = t0 + RATE_BUCKET * 40;
        // 20 buckets of the window, 1000 bytes each but the current (empty) one: 19 kB in 5 s.
        let bps = r.bits_per_second(now);
        assert!((29_000..=32_000).contains(&bps), "{bps}");
        assert_eq!(r.bits_per_second(now + Duration::from_secs(10)), 0);
    }
}
