//! Interleaving: frames of all tracks leave in decode-timestamp order, without letting a track
//! that went silent hold the others back for more than a bounded time.
//!
//! Each track has a FIFO (a track's own frames are never reordered; the timeline guarantees that
//! their DTS never decreases). The frame with the smallest DTS is released once every other
//! track either has a frame queued (whose DTS is then not smaller), has already been seen at or
//! past that DTS, or is at end of stream. Ties keep arrival order, except that a frame pushed
//! with [`Interleaver::push_opening`] (a video key frame, which opens a fragment) leaves before
//! the other tracks' frames of the same DTS: those then belong to the new fragment, instead of
//! ending the previous one at the new fragment's own timecode (which the service refuses as
//! FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS; frequent with files, whose timestamps are whole ms).
//!
//! ## The stall bound
//! A track that sends nothing is waited for until the frames queued behind the oldest waiting
//! frame span [`DEFAULT_MAX_WAIT_NS`] (2 s) of media; then the silent track is considered
//! stalled (a warning, counted in [`InterleaveStats::stalls`]) and frames are released without
//! it. Why 2 s of *media* time: it is deterministic (testable, independent of the machine's
//! load), in a live pipeline media time runs at wall-clock speed so it is also about 2 s of
//! latency, and it is larger than the usual skew between audio and video branches (encoder
//! look-ahead, jitter buffers: software H.264 encoders without `tune=zerolatency` delay video by
//! 1–2 s), so a healthy A/V pipeline never hits it. It is also the tolerance of the reference
//! (60 queued frames per track ≈ 2 s of video). Waiting longer only adds latency when a track
//! really stops; waiting less makes frames of a slow-but-alive track arrive *late*. The bound is
//! a constructor argument so the element can raise it from the pipeline's reported latency.
//!
//! ## Late frames
//! A frame whose DTS is older than the last released frame can no longer be placed in order. It
//! is handed back to the caller ([`Late`]), counted in [`InterleaveStats::late`], and the caller
//! drops it (the fragmenter's rules need a monotonic order, and re-stamping would break A/V sync
//! and per-track timestamp monotonicity). Dropping is reported, never silent.
//!
//! ## Non-live pipelines
//! There, one branch can run far ahead of the other (nothing is "stalled", it is just faster).
//! [`Interleaver::would_block`] tells the caller that a track has half the bound queued while
//! waiting for another; the element should then block that streaming thread (cancellably) until
//! another track pushes, like `GstCollectPads`/`GstAggregator` do, instead of letting the bound
//! release frames early.

use std::collections::VecDeque;

/// See the module docs.
pub const DEFAULT_MAX_WAIT_NS: u64 = 2_000_000_000;

#[derive(Debug)]
struct Entry<T> {
    dts: u64,
    /// Leaves first among equal DTS ([`Interleaver::push_opening`]).
    opening: bool,
    seq: u64,
    item: T,
}

#[derive(Debug)]
struct TrackQueue<T> {
    queue: VecDeque<Entry<T>>,
    last_pushed: Option<u64>,
    eos: bool,
    stalled: bool,
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InterleaveStats {
    /// Frames handed back as too late to be placed in order.
    pub late: u64,
    /// Times a track was declared stalled.
    pub stalls: u64,
    /// Frames released without waiting for a stalled track.
    pub forced: u64,
}

/// A frame that arrived after frames with a later DTS were released.
#[derive(Debug)]
pub struct Late<T> {
    pub item: T,
    pub dts: u64,
    /// DTS of the last released frame.
    pub released: u64,
}

/// Orders frames of several tracks by DTS.
#[derive(Debug)]
pub struct Interleaver<T> {
    tracks: Vec<TrackQueue<T>>,
    max_wait_ns: u64,
    last_out: Option<u64>,
    seq: u64,
    stats: InterleaveStats,
}

impl<T> Interleaver<T> {
    pub fn new(max_wait_ns: u64) -> Self {
        Self {
            tracks: Vec::new(),
            max_wait_ns,
            last_out: None,
            seq: 0,
            stats: InterleaveStats::default(),
        }
    }

    /// Adds a track; returns its index.
    pub fn add_track(&mut self) -> usize {
        self.tracks.push(TrackQueue {
            queue: VecDeque::with_capacity(64),
            last_pushed: None,
            eos: false,
            stalled: false,
        });
        self.tracks.len() - 1
    }

    pub fn stats(&self) -> InterleaveStats {
        self.stats
    }

    pub fn max_wait_ns(&self) -> u64 {
        self.max_wait_ns
    }

    /// Frames queued in all tracks.
    pub fn queued(&self) -> usize {
        self.tracks.iter().map(|t| t.queue.len()).sum()
    }

    /// Queues a frame. `dts` must not decrease within a track.
    pub fn push(&mut self, track: usize, dts: u64, item: T) -> Result<(), Late<T>> {
        self.push_entry(track, dts, false, item)
    }

    /// Queues a frame that opens a fragment (a video key frame): among frames of equal DTS it
    /// leaves first.
    pub fn push_opening(&mut self, track: usize, dts: u64, item: T) -> Result<(), Late<T>> {
        self.push_entry(track, dts, true, item)
    }

    fn push_entry(
        &mut self,
        track: usize,
        dts: u64,
        opening: bool,
        item: T,
    ) -> Result<(), Late<T>> {
        let t = &mut self.tracks[track];
        t.eos = false;
        t.last_pushed = Some(t.last_pushed.map_or(dts, |l| l.max(dts)));
        if t.stalled {
            t.stalled = false;
            tracing::info!("track {track} resumed after a stall");
        }
        if let Some(released) = self.last_out
            && dts < released
        {
            self.stats.late += 1;
            return Err(Late {
                item,
                dts,
                released,
            });
        }
        debug_assert!(t.queue.back().is_none_or(|b| b.dts <= dts));
        self.seq += 1;
        t.queue.push_back(Entry {
            dts,
            opening,
            seq: self.seq,
            item,
        });
        Ok(())
    }

    /// Tells that `track` has nothing before `dts` (a GAP event): others need not wait for it.
    pub fn heartbeat(&mut self, track: usize, dts: u64) {
        let t = &mut self.tracks[track];
        t.last_pushed = Some(t.last_pushed.map_or(dts, |l| l.max(dts)));
    }

    /// End of stream on `track`: it is no longer waited for; its queued frames still leave.
    pub fn set_eos(&mut self, track: usize) {
        self.tracks[track].eos = true;
    }

    pub fn all_eos(&self) -> bool {
        self.tracks.iter().all(|t| t.eos)
    }

    /// The queued frame that leaves next, as `(track, dts)`.
    fn candidate(&self) -> Option<(usize, u64)> {
        self.tracks
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.queue.front().map(|e| (i, e.dts, !e.opening, e.seq)))
            .min_by_key(|&(_, dts, not_opening, seq)| (dts, not_opening, seq))
            .map(|(i, dts, _, _)| (i, dts))
    }

    /// Whether track `i` (other than `cand`) might still send a frame older than `dts`.
    fn holds_back(&self, i: usize, cand: usize, dts: u64) -> bool {
        let t = &self.tracks[i];
        i != cand && !t.eos && t.queue.is_empty() && t.last_pushed.is_none_or(|l| l < dts)
    }

    fn any_holds_back(&self, cand: usize, dts: u64) -> bool {
        (0..self.tracks.len()).any(|i| self.holds_back(i, cand, dts))
    }

    fn newest(&self) -> u64 {
        self.tracks
            .iter()
            .filter_map(|t| t.last_pushed)
            .max()
            .unwrap_or(0)
    }

    /// The next frame in DTS order, if it may leave now.
    pub fn pop(&mut self) -> Option<(usize, T)> {
        let (cand, dts) = self.candidate()?;
        if self.any_holds_back(cand, dts) {
            let queued_behind = self.newest().saturating_sub(dts);
            if queued_behind < self.max_wait_ns {
                return None;
            }
            for i in 0..self.tracks.len() {
                if self.holds_back(i, cand, dts) && !self.tracks[i].stalled {
                    self.tracks[i].stalled = true;
                    self.stats.stalls += 1;
                    tracing::warn!(
                        "track {i} sent nothing for {} ms of media; not waiting for it any more (frames it sends later than that will be dropped)",
                        self.max_wait_ns / 1_000_000
                    );
                }
            }
            self.stats.forced += 1;
        }
        Some(self.take(cand))
    }

    /// The next frame in DTS order, without waiting for anything (end of stream, shutdown).
    pub fn pop_any(&mut self) -> Option<(usize, T)> {
        let (cand, _) = self.candidate()?;
        Some(self.take(cand))
    }

    fn take(&mut self, track: usize) -> (usize, T) {
        let e = self.tracks[track]
            .queue
            .pop_front()
            .expect("candidate has a queued frame");
        self.last_out = Some(self.last_out.map_or(e.dts, |l| l.max(e.dts)));
        (track, e.item)
    }

    /// True when `track` has at least half the stall bound queued and its oldest frame is held
    /// back by another track: a non-live producer should wait for the others.
    pub fn would_block(&self, track: usize) -> bool {
        let t = &self.tracks[track];
        let (Some(front), Some(last)) = (t.queue.front(), t.last_pushed) else {
            return false;
        };
        if last.saturating_sub(front.dts) < self.max_wait_ns / 2 {
            return false;
        }
        match self.candidate() {
            Some((cand, dts)) => self.any_holds_back(cand, dts),
            None => false,
        }
    }

    /// Drops every queued frame (flush); returns them. Tracks forget their history, so timestamps
    /// may restart.
    pub fn clear(&mut self) -> Vec<(usize, T)> {
        let mut out = Vec::new();
        for (i, t) in self.tracks.iter_mut().enumerate() {
            out.extend(t.queue.drain(..).map(|e| (i, e.item)));
            t.last_pushed = None;
            t.eos = false;
            t.stalled = false;
        }
        self.last_out = None;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: u64 = 1_000_000;

    fn drain<T>(il: &mut Interleaver<T>) -> Vec<(usize, T)> {
        std::iter::from_fn(|| il.pop()).collect()
    }

    #[test]
    fn waits_for_the_other_track_then_orders_by_dts() {
        let mut il = Interleaver::new(DEFAULT_MAX_WAIT_NS);
        let (v, a) = (il.add_track(), il.add_track());
        il.push(v, 0, "v0").unwrap();
        il.push(v, 40 * MS, "v1").unwrap();
        assert!(il.pop().is_none(), "audio not seen yet");
        il.push(a, 10 * MS, "a0").unwrap();
        assert_eq!(drain(&mut il), vec![(v, "v0"), (a, "a0")]);
        il.push(a, 30 * MS, "a1").unwrap();
        il.push(a, 50 * MS, "a2").unwrap();
        // a2 waits: video may still send something older than it.
        assert_eq!(drain(&mut il), vec![(a, "a1"), (v, "v1")]);
        il.set_eos(v);
        assert_eq!(drain(&mut il), vec![(a, "a2")]);
        assert_eq!(il.stats(), InterleaveStats::default());
    }

    #[test]
    fn equal_timestamps_keep_arrival_order() {
        let mut il = Interleaver::new(DEFAULT_MAX_WAIT_NS);
        let (v, a) = (il.add_track(), il.add_track());
        il.push(a, 0, "a0").unwrap();
        il.push(v, 0, "v0").unwrap();
        il.set_eos(a);
        il.set_eos(v);
        assert_eq!(drain(&mut il), vec![(a, "a0"), (v, "v0")]);
    }

    /// An audio frame with the DTS of the next video key frame goes after it (into the fragment
    /// the key frame opens), whatever the arrival order; other ties keep arrival order.
    #[test]
    fn a_fragment_opening_frame_leaves_first_among_equal_timestamps() {
        let mut il = Interleaver::new(DEFAULT_MAX_WAIT_NS);
        let (v, a) = (il.add_track(), il.add_track());
        il.push(v, 0, "v0").unwrap();
        il.push(a, 40 * MS, "a40").unwrap();
        il.push(a, 80 * MS, "a80").unwrap();
        il.push(v, 40 * MS, "v40").unwrap();
        il.push_opening(v, 80 * MS, "key80").unwrap();
        il.set_eos(a);
        il.set_eos(v);
        assert_eq!(
            drain(&mut il),
            vec![(v, "v0"), (a, "a40"), (v, "v40"), (v, "key80"), (a, "a80")]
        );
    }

    #[test]
    fn stalled_track_is_abandoned_after_the_bound_and_late_frames_come_back() {
        let mut il = Interleaver::new(500 * MS);
        let (v, a) = (il.add_track(), il.add_track());
        il.push(a, 0, 100).unwrap();
        let mut out = Vec::new();
        for i in 0..20u64 {
            il.push(v, i * 40 * MS, i).unwrap();
            out.extend(drain(&mut il));
        }
        // v0 left with a0's help... then everything older than newest − 500 ms.
        assert_eq!(out.first(), Some(&(a, 100)));
        let released: Vec<u64> = out.iter().skip(1).map(|&(_, x)| x).collect();
        assert_eq!(released, (0..=6).collect::<Vec<_>>());
        assert_eq!(il.stats().stalls, 1);
        // Audio comes back with an old timestamp: late.
        let late = il.push(a, 100 * MS, 101).unwrap_err();
        assert_eq!(
            (late.item, late.dts, late.released),
            (101, 100 * MS, 6 * 40 * MS)
        );
        // And with a current one: in order again, no more waiting.
        il.push(a, 19 * 40 * MS, 102).unwrap();
        let rest = drain(&mut il);
        assert_eq!(rest.len(), 14);
        assert_eq!(rest[rest.len() - 2..], [(v, 19), (a, 102)]);
        assert_eq!(il.stats().late, 1);
    }

    #[test]
    fn eos_and_heartbeat_release_without_waiting() {
        let mut il = Interleaver::new(DEFAULT_MAX_WAIT_NS);
        let (v, a) = (il.add_track(), il.add_track());
        il.push(v, 0, 0).unwrap();
        il.push(v, 40 * MS, 1).unwrap();
        il.heartbeat(a, 20 * MS);
        assert_eq!(drain(&mut il), vec![(v, 0)]);
        il.set_eos(a);
        assert_eq!(drain(&mut il), vec![(v, 1)]);
        assert_eq!(il.stats().forced, 0);
    }

    #[test]
    fn would_block_signals_a_producer_running_ahead() {
        let mut il = Interleaver::new(1_000 * MS);
        let (v, a) = (il.add_track(), il.add_track());
        il.push(v, 0, ()).unwrap();
        il.push(a, 0, ()).unwrap();
        drain(&mut il);
        for i in 1..=14u64 {
            il.push(a, i * 40 * MS, ()).unwrap();
        }
        assert!(!il.would_block(v));
        assert!(
            il.would_block(a),
            "520 ms of audio queued waiting for video"
        );
        assert_eq!(il.clear().len(), 14);
        assert_eq!(il.queued(), 0);
    }

    proptest! {
        /// Whatever the arrival interleaving, released frames are in non-decreasing DTS order,
        /// each track's frames keep their order, and every frame is either released or late.
        #[test]
        fn output_is_ordered_and_complete(
            arrivals in proptest::collection::vec((0usize..3, 0u64..50), 1..200),
            max_wait in 1u64..200,
        ) {
            let mut il = Interleaver::new(max_wait);
            for _ in 0..3 { il.add_track(); }
            let mut next_dts = [0u64; 3];
            let mut out = Vec::new();
            let mut late = 0;
            for (n, (track, step)) in arrivals.iter().enumerate() {
                next_dts[*track] += step;
                match il.push(*track, next_dts[*track], (next_dts[*track], n)) {
                    Ok(()) => {}
                    Err(_) => late += 1,
                }
                out.extend(std::iter::from_fn(|| il.pop()));
            }
            for t in 0..3 { il.set_eos(t); }
            out.extend(std::iter::from_fn(|| il.pop()));
            prop_assert_eq!(out.len() + late, arrivals.len());
            prop_assert!(out.windows(2).all(|w| w[0].1.0 <= w[1].1.0));
            for t in 0..3 {
                let seqs: Vec<usize> = out.iter().filter(|o| o.0 == t).map(|o| o.1.1).collect();
                prop_assert!(seqs.windows(2).all(|w| w[0] < w[1]));
            }
            prop_assert_eq!(il.stats().late, late as u64);
        }
    }
}
