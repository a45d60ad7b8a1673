//! Interleaving: frames of all tracks leave in decode-timestamp order, and no frame is lost
//! because one track is slower than another.
//!
//! Each track has a FIFO (a track's own frames are never reordered; the timeline guarantees that
//! their DTS never decreases). The frame with the smallest DTS is released once every other
//! track either has a frame queued (whose DTS is then not smaller), has already been seen at or
//! past that DTS (a frame or a GAP heartbeat), or has ended (EOS, pad released). Ties keep arrival
//! order, except that a frame pushed as `opening` (a video key frame, which opens a fragment)
//! leaves before the other tracks' frames of the same DTS: those then belong to the new fragment,
//! instead of ending the previous one at the new fragment's own timecode (which the service refuses
//! as FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS; frequent with files, whose timestamps are whole ms).
//!
//! ## How long a silent track is waited for ([`Wait`])
//! Time is never judged in media time: a slower branch (an encoder with look-ahead, a second
//! file, a parser) is behind in media time without being silent.
//! - **Non-live input** ([`Wait::UntilData`]): a track that has not caught up is waited for as
//!   long as it takes, as GstAggregator and collectpads do. The producer of the track that is
//!   ahead is held back by the caller instead ([`Interleaver::waits_for`] says when and for whom),
//!   so nothing is dropped for time and memory stays small. Only the memory bound
//!   (`max_queued_bytes`) can release frames before a silent track caught up; that is counted
//!   ([`InterleaveStats::forced_memory`]) and warned about.
//! - **Live input** ([`Wait::Clock`]): the next frame waits for a silent track at most `bound_ns`
//!   of clock time after it arrived (the pipeline latency plus a margin: a live frame of another
//!   track with an earlier timestamp arrives at most that much later). Then the silent track is
//!   considered stalled (a warning, [`InterleaveStats::stalls`]) and frames leave without it until
//!   it sends again. [`Interleaver::next_deadline`] tells the caller when to call
//!   [`Interleaver::pop`] again if nothing else arrives.
//!
//! ## Late frames
//! A frame whose DTS is older than the last released frame can no longer be placed in order. It
//! is handed back to the caller ([`Late`]), counted in [`InterleaveStats::late`], and the caller
//! drops it and reports it (the fragmenter's rules need a monotonic order, and re-stamping would
//! break A/V sync and per-track timestamp monotonicity). That happens only after a release
//! forced by the clock (live) or by the memory bound.

use std::collections::VecDeque;

/// A non-live track that is ahead by this much media (its queued frames span it) while another
/// track holds the next frame back should stop producing ([`Interleaver::waits_for`]). Large
/// enough that well-interleaved files fed by one thread (a demuxer without queues) never wait.
pub const WAIT_SPAN_NS: u64 = 500_000_000;

/// Default memory bound of the queues (all tracks).
pub const DEFAULT_MAX_QUEUED_BYTES: usize = 64 * 1024 * 1024;

/// How long a silent track is waited for. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Non-live input: until it sends, ends or the memory bound is reached.
    UntilData,
    /// Live input: at most `bound_ns` (clock) after the waiting frame arrived.
    Clock { bound_ns: u64 },
}

/// What the interleaver needs to know of a frame besides the frame itself.
#[derive(Debug, Clone, Copy)]
pub struct Slot {
    /// Order key (decode timestamp, ns).
    pub dts: u64,
    /// Opens a fragment: leaves first among frames of equal DTS.
    pub opening: bool,
    /// Memory the frame holds while queued.
    pub bytes: usize,
}

#[derive(Debug)]
struct Entry<T> {
    slot: Slot,
    seq: u64,
    /// Clock time of arrival (ns).
    arrived: u64,
    item: T,
}

#[derive(Debug)]
struct TrackQueue<T> {
    queue: VecDeque<Entry<T>>,
    last_pushed: Option<u64>,
    ended: bool,
    stalled: bool,
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InterleaveStats {
    /// Frames handed back as too late to be placed in order.
    pub late: u64,
    /// Times a live track was declared stalled (clock bound).
    pub stalls: u64,
    /// Frames released without waiting for a silent track (clock or memory bound).
    pub forced: u64,
    /// Releases forced by the memory bound.
    pub forced_memory: u64,
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
    wait: Wait,
    max_queued_bytes: usize,
    queued_bytes: usize,
    last_out: Option<u64>,
    seq: u64,
    stats: InterleaveStats,
}

impl<T> Interleaver<T> {
    pub fn new(wait: Wait, max_queued_bytes: usize) -> Self {
        Self {
            tracks: Vec::new(),
            wait,
            max_queued_bytes,
            queued_bytes: 0,
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
            ended: false,
            stalled: false,
        });
        self.tracks.len() - 1
    }

    pub fn stats(&self) -> InterleaveStats {
        self.stats
    }

    pub fn wait(&self) -> Wait {
        self.wait
    }

    /// Changes the waiting policy (the element learns whether the pipeline is live).
    pub fn set_wait(&mut self, wait: Wait) {
        self.wait = wait;
    }

    /// Frames queued in all tracks.
    pub fn queued(&self) -> usize {
        self.tracks.iter().map(|t| t.queue.len()).sum()
    }

    /// Queues a frame that arrived at clock time `now_ns`. The DTS must not decrease within a
    /// track.
    pub fn push(&mut self, track: usize, slot: Slot, now_ns: u64, item: T) -> Result<(), Late<T>> {
        let t = &mut self.tracks[track];
        t.ended = false;
        t.last_pushed = Some(t.last_pushed.map_or(slot.dts, |l| l.max(slot.dts)));
        if t.stalled {
            t.stalled = false;
            tracing::info!("track {track} resumed after a stall");
        }
        if let Some(released) = self.last_out
            && slot.dts < released
        {
            self.stats.late += 1;
            return Err(Late {
                item,
                dts: slot.dts,
                released,
            });
        }
        debug_assert!(t.queue.back().is_none_or(|b| b.slot.dts <= slot.dts));
        self.seq += 1;
        self.queued_bytes += slot.bytes;
        t.queue.push_back(Entry {
            slot,
            seq: self.seq,
            arrived: now_ns,
            item,
        });
        Ok(())
    }

    /// Tells that `track` has nothing before `dts` (a GAP event): others need not wait for it.
    pub fn heartbeat(&mut self, track: usize, dts: u64) {
        let t = &mut self.tracks[track];
        t.last_pushed = Some(t.last_pushed.map_or(dts, |l| l.max(dts)));
    }

    /// `track` ended (EOS, pad released): it is no longer waited for; its queued frames still
    /// leave. A later push revives it.
    pub fn set_ended(&mut self, track: usize) {
        self.tracks[track].ended = true;
    }

    pub fn all_ended(&self) -> bool {
        self.tracks.iter().all(|t| t.ended)
    }

    /// The queued frame that leaves next, as `(track, dts)`.
    fn candidate(&self) -> Option<(usize, u64)> {
        self.tracks
            .iter()
            .enumerate()
            .filter_map(|(i, t)| {
                t.queue
                    .front()
                    .map(|e| (i, e.slot.dts, !e.slot.opening, e.seq))
            })
            .min_by_key(|&(_, dts, not_opening, seq)| (dts, not_opening, seq))
            .map(|(i, dts, _, _)| (i, dts))
    }

    /// Whether track `i` (other than `cand`) might still send a frame older than `dts`.
    fn holds_back(&self, i: usize, cand: usize, dts: u64) -> bool {
        let t = &self.tracks[i];
        i != cand
            && !t.ended
            && !t.stalled
            && t.queue.is_empty()
            && t.last_pushed.is_none_or(|l| l < dts)
    }

    fn holder(&self, cand: usize, dts: u64) -> Option<usize> {
        (0..self.tracks.len()).find(|&i| self.holds_back(i, cand, dts))
    }

    /// The next frame in DTS order, if it may leave at clock time `now_ns`.
    pub fn pop(&mut self, now_ns: u64) -> Option<(usize, T)> {
        let (cand, dts) = self.candidate()?;
        if self.holder(cand, dts).is_some() {
            if self.queued_bytes > self.max_queued_bytes {
                self.stats.forced_memory += 1;
                if self.stats.forced_memory == 1 {
                    tracing::warn!(
                        "{} MiB of frames queued waiting for a silent track: releasing them without it (frames it sends later with older timestamps are dropped)",
                        self.max_queued_bytes >> 20
                    );
                }
            } else {
                let Wait::Clock { bound_ns } = self.wait else {
                    return None;
                };
                let arrived = self.tracks[cand].queue.front().map_or(0, |e| e.arrived);
                if now_ns < arrived.saturating_add(bound_ns) {
                    return None;
                }
                for i in 0..self.tracks.len() {
                    if self.holds_back(i, cand, dts) {
                        self.tracks[i].stalled = true;
                        self.stats.stalls += 1;
                        tracing::warn!(
                            "track {i} sent nothing for {} ms (pipeline latency + margin); not waiting for it until it sends again (frames it sends with older timestamps will be dropped)",
                            bound_ns / 1_000_000
                        );
                    }
                }
            }
            self.stats.forced += 1;
        }
        Some(self.take(cand))
    }

    /// When [`Self::pop`] may release a frame that now waits for a silent live track, if nothing
    /// arrives before.
    pub fn next_deadline(&self) -> Option<u64> {
        let Wait::Clock { bound_ns } = self.wait else {
            return None;
        };
        let (cand, dts) = self.candidate()?;
        self.holder(cand, dts)?;
        let arrived = self.tracks[cand].queue.front()?.arrived;
        Some(arrived.saturating_add(bound_ns))
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
        self.queued_bytes -= e.slot.bytes;
        self.last_out = Some(self.last_out.map_or(e.slot.dts, |l| l.max(e.slot.dts)));
        (track, e.item)
    }

    /// With non-live input: the track that `track`'s producer should wait for before pushing
    /// more, if any. That is when `track` is ahead ([`WAIT_SPAN_NS`] of media queued) and the next
    /// frame is held back by another track that has not caught up.
    pub fn waits_for(&self, track: usize) -> Option<usize> {
        if self.wait != Wait::UntilData {
            return None;
        }
        let t = &self.tracks[track];
        let (front, back) = (t.queue.front()?, t.queue.back()?);
        if back.slot.dts.saturating_sub(front.slot.dts) < WAIT_SPAN_NS
            && self.queued_bytes <= self.max_queued_bytes / 2
        {
            return None;
        }
        let (cand, dts) = self.candidate()?;
        self.holder(cand, dts).filter(|&h| h != track)
    }

    /// Drops every queued frame (flush); returns them. Tracks forget their history, so timestamps
    /// may restart.
    pub fn clear(&mut self) -> Vec<(usize, T)> {
        let mut out = Vec::new();
        for (i, t) in self.tracks.iter_mut().enumerate() {
            out.extend(t.queue.drain(..).map(|e| (i, e.item)));
            t.last_pushed = None;
            t.ended = false;
            t.stalled = false;
        }
        self.queued_bytes = 0;
        self.last_out = None;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: u64 = 1_000_000;
    const LIVE: Wait = Wait::Clock { bound_ns: 500 * MS };

    fn slot(dts: u64) -> Slot {
        Slot {
            dts,
            opening: false,
            bytes: 1,
        }
    }

    fn drain<T>(il: &mut Interleaver<T>, now: u64) -> Vec<(usize, T)> {
        std::iter::from_fn(|| il.pop(now)).collect()
    }

    #[test]
    fn waits_for_the_other_track_then_orders_by_dts() {
        let mut il = Interleaver::new(Wait::UntilData, DEFAULT_MAX_QUEUED_BYTES);
        let (v, a) = (il.add_track(), il.add_track());
        il.push(v, slot(0), 0, "v0").unwrap();
        il.push(v, slot(40 * MS), 0, "v1").unwrap();
        assert!(il.pop(u64::MAX).is_none(), "audio not seen yet");
        il.push(a, slot(10 * MS), 0, "a0").unwrap();
        assert_eq!(drain(&mut il, 0), vec![(v, "v0"), (a, "a0")]);
        il.push(a, slot(30 * MS), 0, "a1").unwrap();
        il.push(a, slot(50 * MS), 0, "a2").unwrap();
        // a2 waits: video may still send something older than it.
        assert_eq!(drain(&mut il, 0), vec![(a, "a1"), (v, "v1")]);
        il.set_ended(v);
        assert_eq!(drain(&mut il, 0), vec![(a, "a2")]);
        assert_eq!(il.stats(), InterleaveStats::default());
    }

    #[test]
    fn equal_timestamps_keep_arrival_order() {
        let mut il = Interleaver::new(Wait::UntilData, DEFAULT_MAX_QUEUED_BYTES);
        let (v, a) = (il.add_track(), il.add_track());
        il.push(a, slot(0), 0, "a0").unwrap();
        il.push(v, slot(0), 0, "v0").unwrap();
        il.set_ended(a);
        il.set_ended(v);
        assert_eq!(drain(&mut il, 0), vec![(a, "a0"), (v, "v0")]);
    }

    /// An audio frame with the DTS of the next video key frame goes after it (into the fragment
    /// the key frame opens), whatever the arrival order; other ties keep arrival order.
    #[test]
    fn a_fragment_opening_frame_leaves_first_among_equal_timestamps() {
        let mut il = Interleaver::new(Wait::UntilData, DEFAULT_MAX_QUEUED_BYTES);
        let (v, a) = (il.add_track(), il.add_track());
        il.push(v, slot(0), 0, "v0").unwrap();
        il.push(a, slot(40 * MS), 0, "a40").unwrap();
        il.push(a, slot(80 * MS), 0, "a80").unwrap();
        il.push(v, slot(40 * MS), 0, "v40").unwrap();
        let key = Slot {
            opening: true,
            ..slot(80 * MS)
        };
        il.push(v, key, 0, "key80").unwrap();
        il.set_ended(a);
        il.set_ended(v);
        assert_eq!(
            drain(&mut il, 0),
            vec![(v, "v0"), (a, "a40"), (v, "v40"), (v, "key80"), (a, "a80")]
        );
    }

    /// Non-live: however far one track runs ahead in media time, nothing is released early and
    /// nothing is late; the track that is ahead is told to wait.
    #[test]
    fn non_live_never_gives_up_on_a_slow_track() {
        let mut il = Interleaver::new(Wait::UntilData, DEFAULT_MAX_QUEUED_BYTES);
        let (v, a) = (il.add_track(), il.add_track());
        for i in 0..250u64 {
            il.push(v, slot(i * 40 * MS), i, i).unwrap();
        }
        assert!(il.pop(u64::MAX).is_none());
        assert_eq!(il.next_deadline(), None);
        assert_eq!(il.waits_for(v), Some(a));
        assert_eq!(il.waits_for(a), None, "audio has nothing queued");
        for i in 0..500u64 {
            il.push(a, slot(i * 20 * MS + MS), 0, 1000 + i).unwrap();
            drain(&mut il, u64::MAX);
        }
        // Audio past the last video frame waited for video's end.
        assert_eq!(il.queued(), 2);
        il.set_ended(v);
        assert_eq!(drain(&mut il, 0), vec![(a, 1498), (a, 1499)]);
        assert_eq!(il.stats(), InterleaveStats::default());
        assert_eq!(il.queued(), 0);
    }

    /// Live: a silent track holds the next frame at most the clock bound after that frame
    /// arrived; it is then stalled until it sends again, and its old frames come back late.
    #[test]
    fn live_waits_on_the_clock_then_abandons_the_silent_track() {
        let mut il = Interleaver::new(LIVE, DEFAULT_MAX_QUEUED_BYTES);
        let (v, a) = (il.add_track(), il.add_track());
        il.push(a, slot(0), 0, 100).unwrap();
        il.push(v, slot(0), 0, 0).unwrap();
        assert_eq!(drain(&mut il, 0).len(), 2);
        let mut out = Vec::new();
        for i in 1..20u64 {
            // Media and clock advance together; audio is silent.
            il.push(v, slot(i * 40 * MS), i * 40 * MS, i).unwrap();
            out.extend(drain(&mut il, i * 40 * MS));
        }
        // v1 arrived at 40 ms and could leave at 540 ms (clock): released at the push at 560 ms.
        let released: Vec<u64> = out.iter().map(|&(_, x)| x).collect();
        assert_eq!(released, (1..=19).collect::<Vec<_>>());
        assert_eq!(il.stats().stalls, 1);
        assert_eq!(
            il.next_deadline(),
            None,
            "nothing waits for a stalled track"
        );
        // Audio comes back with an old timestamp: late.
        let late = il.push(a, slot(100 * MS), 800 * MS, 101).unwrap_err();
        assert_eq!(
            (late.item, late.dts, late.released),
            (101, 100 * MS, 19 * 40 * MS)
        );
        // And with a current one: waited for again.
        il.push(a, slot(20 * 40 * MS), 800 * MS, 102).unwrap();
        il.push(v, slot(21 * 40 * MS), 840 * MS, 21).unwrap();
        assert_eq!(drain(&mut il, 840 * MS), vec![(a, 102)]);
        assert_eq!(il.next_deadline(), Some(1340 * MS));
        assert_eq!(il.stats().late, 1);
    }

    #[test]
    fn live_deadline_is_the_waiting_frames_arrival_plus_the_bound() {
        let mut il = Interleaver::new(LIVE, DEFAULT_MAX_QUEUED_BYTES);
        let (v, _a) = (il.add_track(), il.add_track());
        il.push(v, slot(0), 7 * MS, 0).unwrap();
        assert_eq!(il.next_deadline(), Some(507 * MS));
        assert!(il.pop(506 * MS).is_none());
        assert_eq!(il.pop(507 * MS), Some((v, 0)));
        assert_eq!(il.waits_for(v), None, "live producers are never held");
    }

    #[test]
    fn the_memory_bound_releases_without_the_silent_track() {
        let mut il = Interleaver::new(Wait::UntilData, 1000);
        let (v, _a) = (il.add_track(), il.add_track());
        for i in 0..10u64 {
            let s = Slot {
                bytes: 100,
                ..slot(i * 40 * MS)
            };
            il.push(v, s, 0, i).unwrap();
        }
        assert!(il.pop(0).is_none(), "at the bound, not past it");
        il.push(
            v,
            Slot {
                bytes: 100,
                ..slot(400 * MS)
            },
            0,
            10,
        )
        .unwrap();
        assert_eq!(il.pop(0), Some((v, 0)));
        assert!(il.pop(0).is_none(), "back within the bound");
        assert_eq!(il.stats().forced_memory, 1);
    }

    #[test]
    fn ended_tracks_and_heartbeats_release_without_waiting() {
        let mut il = Interleaver::new(Wait::UntilData, DEFAULT_MAX_QUEUED_BYTES);
        let (v, a) = (il.add_track(), il.add_track());
        il.push(v, slot(0), 0, 0).unwrap();
        il.push(v, slot(40 * MS), 0, 1).unwrap();
        il.heartbeat(a, 20 * MS);
        assert_eq!(drain(&mut il, 0), vec![(v, 0)]);
        il.set_ended(a);
        assert_eq!(drain(&mut il, 0), vec![(v, 1)]);
        assert_eq!(il.stats().forced, 0);
    }

    #[test]
    fn waits_for_names_the_track_that_holds_back() {
        let mut il = Interleaver::new(Wait::UntilData, DEFAULT_MAX_QUEUED_BYTES);
        let (v, a) = (il.add_track(), il.add_track());
        il.push(v, slot(0), 0, ()).unwrap();
        il.push(a, slot(0), 0, ()).unwrap();
        drain(&mut il, 0);
        for i in 1..=12u64 {
            il.push(a, slot(i * 40 * MS), 0, ()).unwrap();
        }
        assert_eq!(il.waits_for(a), None, "440 ms queued: below the span");
        il.push(a, slot(13 * 40 * MS), 0, ()).unwrap();
        il.push(a, slot(14 * 40 * MS), 0, ()).unwrap();
        assert_eq!(il.waits_for(a), Some(v));
        assert_eq!(il.waits_for(v), None);
        il.set_ended(v);
        assert_eq!(il.waits_for(a), None, "nobody to wait for");
        assert_eq!(il.clear().len(), 14);
        assert_eq!(il.queued(), 0);
    }

    const TRACKS: usize = 3;

    proptest! {
        /// Non-live: frames of three tracks arrive in any order a scheduler could produce, with a
        /// track's producer held while [`Interleaver::waits_for`] says so. Nothing is ever dropped
        /// or forced, the output is in DTS order and complete, and some producer can always go
        /// on (no deadlock).
        #[test]
        fn non_live_loses_nothing_and_never_deadlocks(
            steps in proptest::collection::vec(0u64..60, 3..60),
            lens in proptest::collection::vec(0usize..80, TRACKS),
            picks in proptest::collection::vec(0usize..TRACKS, 1..400),
        ) {
            let mut il = Interleaver::new(Wait::UntilData, DEFAULT_MAX_QUEUED_BYTES);
            for &len in &lens {
                let t = il.add_track();
                if len == 0 { il.set_ended(t); }
            }
            // Frame k of track t: DTS = sum of its steps (in 10 ms units).
            let dts = |t: usize, k: usize| -> u64 {
                (0..=k).map(|j| steps[(t * 7 + j) % steps.len()]).sum::<u64>() * 10 * MS
            };
            let mut next = [0usize; TRACKS];
            let mut out = Vec::new();
            let mut pick = picks.iter().cycle();
            loop {
                let runnable: Vec<usize> = (0..TRACKS)
                    .filter(|&t| next[t] < lens[t] && il.waits_for(t).is_none())
                    .collect();
                if runnable.is_empty() {
                    prop_assert!((0..TRACKS).all(|t| next[t] == lens[t]), "deadlock: {next:?} of {lens:?}");
                    break;
                }
                let t = runnable[*pick.next().unwrap() % runnable.len()];
                il.push(t, slot(dts(t, next[t])), 0, (dts(t, next[t]), t, next[t])).unwrap();
                next[t] += 1;
                if next[t] == lens[t] { il.set_ended(t); }
                out.extend(std::iter::from_fn(|| il.pop(0)));
            }
            out.extend(std::iter::from_fn(|| il.pop(0)));
            prop_assert_eq!(out.len(), lens.iter().sum::<usize>());
            prop_assert!(out.windows(2).all(|w| w[0].1.0 <= w[1].1.0));
            for (t, &len) in lens.iter().enumerate() {
                let ks: Vec<usize> = out.iter().filter(|o| o.0 == t).map(|o| o.1.2).collect();
                prop_assert_eq!(ks, (0..len).collect::<Vec<_>>());
            }
            prop_assert_eq!(il.stats(), InterleaveStats::default());
        }

        /// Live: each track's frames arrive on the clock at their DTS plus a per-track delay
        /// (plus jitter). With delays that differ by less than the bound nothing is late; with
        /// any delays the output is in DTS order and every frame is either released or late.
        #[test]
        fn live_drops_only_past_the_clock_bound(
            delays in proptest::collection::vec(0u64..3000, TRACKS),
            jitter in proptest::collection::vec(0u64..20, 1..50),
            frame_ms in proptest::collection::vec(10u64..50, TRACKS),
            bound_ms in 100u64..2000,
        ) {
            let mut il = Interleaver::new(Wait::Clock { bound_ns: bound_ms * MS }, DEFAULT_MAX_QUEUED_BYTES);
            for _ in 0..TRACKS { il.add_track(); }
            // (arrival, track, dts)
            // (arrival, track, dts, last of its track)
            let mut arrivals = Vec::new();
            for t in 0..TRACKS {
                let mut last = 0;
                let n = 3000 / frame_ms[t];
                for k in 0..n {
                    let dts = k * frame_ms[t] * MS;
                    let at = (dts + delays[t] * MS + jitter[(k as usize + t) % jitter.len()] * MS).max(last);
                    last = at;
                    arrivals.push((at, t, dts, k + 1 == n));
                }
            }
            arrivals.sort();
            let mut out = Vec::new();
            let mut late = 0;
            for &(at, t, dts, end) in &arrivals {
                // The element's ticker: deadlines that passed before this arrival fire first.
                while let Some(d) = il.next_deadline().filter(|&d| d <= at) {
                    out.extend(std::iter::from_fn(|| il.pop(d)));
                }
                if il.push(t, slot(dts), at, dts).is_err() { late += 1; }
                if end { il.set_ended(t); }
                out.extend(std::iter::from_fn(|| il.pop(at)));
            }
            for t in 0..TRACKS { il.set_ended(t); }
            out.extend(std::iter::from_fn(|| il.pop(u64::MAX)));
            prop_assert_eq!(out.len() + late, arrivals.len());
            prop_assert!(out.windows(2).all(|w| w[0].1 <= w[1].1));
            // A frame waits for the silent track's *next* frame: up to one frame period more.
            let spread = delays.iter().max().unwrap() - delays.iter().min().unwrap()
                + 20 + frame_ms.iter().max().unwrap();
            if spread < bound_ms {
                prop_assert_eq!(late, 0, "delays {:?} within the bound {} ms", delays, bound_ms);
                prop_assert_eq!(il.stats().stalls, 0);
            }
        }
    }
}
