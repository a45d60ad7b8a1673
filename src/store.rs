//! The fragment store: completed fragments waiting to be sent or confirmed, with their ACK state,
//! the `storage-size` and `buffer-duration` budgets, and the replay cursor.
//!
//! It is plain single-threaded logic; the uploader wraps it in a mutex and wakes the sender when
//! something changes. Fragments are whole Matroska clusters (with their metadata tags) as one
//! `Bytes`, so whatever is dropped, the byte stream sent stays valid: nothing is ever cut inside a
//! fragment.
//!
//! Policies:
//! - **Realtime / near-realtime**: a fragment that does not fit evicts the oldest fragments first
//!   (whatever their state); each evicted fragment that the service had not persisted is
//!   returned as [`Dropped`] so the element can report it. A fragment larger than the whole
//!   budget is itself dropped.
//! - **Offline**: [`FragmentStore::push`] refuses with [`PushError::Full`] instead, and the
//!   producer waits (cancellably) for PERSISTED ACKs to free space.
//! - PERSISTED frees the fragment; fragments only leave the store in order, so held memory is
//!   the sum of the fragments between the oldest unpersisted one and the newest.

use std::collections::VecDeque;

use bytes::Bytes;

/// Where a fragment is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FragmentState {
    /// Not handed to a connection yet (or to be re-sent after a reconnect).
    Pending,
    /// Handed to the current connection.
    Sent,
    Buffering,
    Received,
    Persisted,
    /// Refused by the service with a non-retriable error; never sent again.
    Skipped,
}

/// A completed fragment as the store holds it.
#[derive(Debug, Clone)]
pub struct StoredFragment {
    /// Sequence number given by the store, unique per stream.
    pub seq: u64,
    /// The cluster timecode as it is written in the stream (timecode-scale units), which is what
    /// ACKs carry.
    pub timecode: u64,
    /// Duration of the fragment, in timecode-scale units.
    pub duration: u64,
    /// Number of frames in the fragment.
    pub frames: u32,
    /// The session header (EBML, Segment, Info, Tracks) this fragment must follow. Fragments
    /// with a different header need a new PutMedia session.
    pub header: Bytes,
    /// Tags + Cluster bytes, in pieces (sent as they are, without joining them).
    pub parts: Vec<Bytes>,
    /// Total bytes of `parts`.
    pub len: usize,
    /// Ends with the end-of-fragment tag that closes the stream.
    pub closes_stream: bool,
    pub state: FragmentState,
}

impl StoredFragment {
    pub fn new(header: Bytes, timecode: u64, duration: u64, frames: u32, bytes: Bytes) -> Self {
        Self::from_parts(header, timecode, duration, frames, vec![bytes], false)
    }

    pub fn from_parts(
        header: Bytes,
        timecode: u64,
        duration: u64,
        frames: u32,
        parts: Vec<Bytes>,
        closes_stream: bool,
    ) -> Self {
        Self {
            seq: 0,
            timecode,
            duration,
            frames,
            header,
            len: parts.iter().map(Bytes::len).sum(),
            parts,
            closes_stream,
            state: FragmentState::Pending,
        }
    }

    /// Persisted, or given up after a non-retriable error.
    pub fn is_done(&self) -> bool {
        matches!(
            self.state,
            FragmentState::Persisted | FragmentState::Skipped
        )
    }
}

/// Why a fragment was dropped before the service persisted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Evicted to make room within `storage-size`.
    StorageFull,
    /// Evicted because buffered media exceeded `buffer-duration`.
    BufferDurationExceeded,
    /// Larger than the whole `storage-size` budget.
    LargerThanStorage,
    /// Older than `replay-duration` when replaying after a reconnect.
    OutsideReplayWindow,
    /// Refused by the service with a non-retriable error ACK.
    RejectedByService,
}

impl DropReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::StorageFull => "storage-size exceeded",
            DropReason::BufferDurationExceeded => "buffer-duration exceeded",
            DropReason::LargerThanStorage => "fragment larger than storage-size",
            DropReason::OutsideReplayWindow => "older than replay-duration at reconnect",
            DropReason::RejectedByService => "rejected by the service",
        }
    }
}

/// A fragment that left the store without being persisted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub timecode: u64,
    pub duration: u64,
    pub frames: u32,
    pub reason: DropReason,
}

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// Offline mode: not enough room now; retry once space is freed. The fragment is returned.
    #[error("fragment store is full")]
    Full(Box<StoredFragment>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Evict the oldest fragments when full.
    DropOldest,
    /// Refuse new fragments when full.
    Block,
}

/// The budgets of the store.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: usize,
    /// `buffer-duration`, in timecode-scale units.
    pub max_duration: u64,
}

#[derive(Debug)]
pub struct FragmentStore {
    limits: Limits,
    mode: Mode,
    fragments: VecDeque<StoredFragment>,
    bytes: usize,
    next_seq: u64,
    /// Sequence number of the next fragment to send.
    cursor: u64,
    persisted: u64,
    dropped: u64,
}

impl FragmentStore {
    pub fn new(limits: Limits, mode: Mode) -> Self {
        Self {
            limits,
            mode,
            fragments: VecDeque::new(),
            bytes: 0,
            next_seq: 0,
            cursor: 0,
            persisted: 0,
            dropped: 0,
        }
    }

    /// Bytes of fragment data held.
    pub fn bytes_held(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.fragments.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fragments.is_empty()
    }

    /// Fragments persisted so far.
    pub fn persisted_count(&self) -> u64 {
        self.persisted
    }

    /// Fragments dropped so far (all reasons).
    pub fn dropped_count(&self) -> u64 {
        self.dropped
    }

    pub fn fragments(&self) -> impl Iterator<Item = &StoredFragment> {
        self.fragments.iter()
    }

    /// Adds a completed fragment. In [`Mode::DropOldest`] it always succeeds and returns what
    /// had to be evicted.
    pub fn push(
        &mut self,
        timecode: u64,
        duration: u64,
        frames: u32,
        bytes: Bytes,
    ) -> Result<Vec<Dropped>, PushError> {
        self.push_fragment(StoredFragment::new(
            Bytes::new(),
            timecode,
            duration,
            frames,
            bytes,
        ))
    }

    /// Like [`FragmentStore::push`], for a fragment handed back by [`PushError::Full`].
    pub fn push_fragment(
        &mut self,
        mut fragment: StoredFragment,
    ) -> Result<Vec<Dropped>, PushError> {
        let size = fragment.len;
        let mut dropped = Vec::new();
        if size > self.limits.max_bytes {
            self.dropped += 1;
            return Ok(vec![Dropped {
                timecode: fragment.timecode,
                duration: fragment.duration,
                frames: fragment.frames,
                reason: DropReason::LargerThanStorage,
            }]);
        }
        loop {
            let over_bytes = self.bytes + size > self.limits.max_bytes;
            let over_duration = self.fragments.front().is_some_and(|oldest| {
                (fragment.timecode + fragment.duration).saturating_sub(oldest.timecode)
                    > self.limits.max_duration
            });
            if !over_bytes && !over_duration {
                break;
            }
            if self.mode == Mode::Block {
                return Err(PushError::Full(Box::new(fragment)));
            }
            let reason = if over_bytes {
                DropReason::StorageFull
            } else {
                DropReason::BufferDurationExceeded
            };
            let Some(d) = self.evict_oldest(reason) else {
                break;
            };
            dropped.extend(d);
        }
        fragment.seq = self.next_seq;
        fragment.state = FragmentState::Pending;
        self.next_seq += 1;
        self.bytes += size;
        self.fragments.push_back(fragment);
        Ok(dropped)
    }

    fn evict_oldest(&mut self, reason: DropReason) -> Option<Option<Dropped>> {
        let f = self.fragments.pop_front()?;
        self.bytes -= f.len;
        if self.cursor <= f.seq {
            self.cursor = f.seq + 1;
        }
        Some(match f.state {
            FragmentState::Persisted | FragmentState::Skipped => None,
            _ => {
                self.dropped += 1;
                Some(Dropped {
                    timecode: f.timecode,
                    duration: f.duration,
                    frames: f.frames,
                    reason,
                })
            }
        })
    }

    /// The next fragment to send, without taking it.
    pub fn peek_next(&self) -> Option<&StoredFragment> {
        self.fragments
            .iter()
            .find(|f| f.seq >= self.cursor && f.state == FragmentState::Pending)
    }

    /// Fragments handed to the connection that have no ACK yet.
    pub fn awaiting_first_ack(&self) -> usize {
        self.fragments
            .iter()
            .filter(|f| f.state == FragmentState::Sent)
            .count()
    }

    /// The oldest fragment sent on the current connection and not yet persisted.
    pub fn oldest_in_flight(&self) -> Option<u64> {
        self.fragments
            .iter()
            .find(|f| {
                matches!(
                    f.state,
                    FragmentState::Sent | FragmentState::Buffering | FragmentState::Received
                )
            })
            .map(|f| f.timecode)
    }

    /// The next fragment to send, marked [`FragmentState::Sent`].
    pub fn next_to_send(&mut self) -> Option<StoredFragment> {
        let cursor = self.cursor;
        let f = self
            .fragments
            .iter_mut()
            .find(|f| f.seq >= cursor && f.state == FragmentState::Pending)?;
        f.state = FragmentState::Sent;
        self.cursor = f.seq + 1;
        Some(f.clone())
    }

    /// Whether something is waiting to be sent.
    pub fn has_pending(&self) -> bool {
        self.fragments
            .iter()
            .any(|f| f.seq >= self.cursor && f.state == FragmentState::Pending)
    }

    /// Whether every fragment has been persisted or skipped.
    pub fn is_drained(&self) -> bool {
        self.fragments
            .iter()
            .all(|f| matches!(f.state, FragmentState::Persisted | FragmentState::Skipped))
    }

    fn find_mut(&mut self, timecode: u64) -> Option<&mut StoredFragment> {
        self.fragments.iter_mut().find(|f| f.timecode == timecode)
    }

    /// Records a BUFFERING or RECEIVED ACK. Returns false if no fragment has that timecode.
    pub fn on_progress(&mut self, timecode: u64, state: FragmentState) -> bool {
        match self.find_mut(timecode) {
            Some(f) => {
                if matches!(f.state, FragmentState::Sent | FragmentState::Buffering) {
                    f.state = state;
                }
                true
            }
            None => false,
        }
    }

    /// Records a PERSISTED ACK and frees every persisted fragment at the old end.
    pub fn on_persisted(&mut self, timecode: u64) -> bool {
        let Some(f) = self.find_mut(timecode) else {
            return false;
        };
        if f.state != FragmentState::Persisted {
            f.state = FragmentState::Persisted;
            self.persisted += 1;
        }
        self.trim_done();
        true
    }

    /// A non-retriable error ACK: the fragment is never sent again.
    pub fn on_rejected(&mut self, timecode: u64) -> Option<Dropped> {
        let f = self.find_mut(timecode)?;
        if matches!(f.state, FragmentState::Persisted | FragmentState::Skipped) {
            return None;
        }
        f.state = FragmentState::Skipped;
        let d = Dropped {
            timecode: f.timecode,
            duration: f.duration,
            frames: f.frames,
            reason: DropReason::RejectedByService,
        };
        self.dropped += 1;
        self.trim_done();
        Some(d)
    }

    fn trim_done(&mut self) {
        while self
            .fragments
            .front()
            .is_some_and(|f| matches!(f.state, FragmentState::Persisted | FragmentState::Skipped))
        {
            let f = self.fragments.pop_front().expect("front exists");
            self.bytes -= f.len;
        }
    }

    /// After a connection ended: everything not persisted is to be sent again on the next
    /// connection, starting with the oldest fragment within `replay_window` (timecode-scale
    /// units) of the newest one. Older unpersisted fragments are dropped and returned. If
    /// `after_received` is set (the service kept what it acknowledged as RECEIVED), replay
    /// starts after the last RECEIVED fragment instead when that is later.
    pub fn rewind(&mut self, replay_window: u64, after_received: bool) -> Vec<Dropped> {
        let newest_end = self
            .fragments
            .back()
            .map(|f| f.timecode + f.duration)
            .unwrap_or(0);
        let mut dropped = Vec::new();
        while let Some(front) = self.fragments.front() {
            let outside = newest_end.saturating_sub(front.timecode) > replay_window;
            let done = matches!(
                front.state,
                FragmentState::Persisted | FragmentState::Skipped
            );
            if !(outside || done) {
                break;
            }
            if let Some(d) = self.evict_oldest(DropReason::OutsideReplayWindow).flatten() {
                dropped.push(d);
            }
        }
        let last_received = if after_received {
            self.fragments
                .iter()
                .rposition(|f| f.state == FragmentState::Received)
        } else {
            None
        };
        for (i, f) in self.fragments.iter_mut().enumerate() {
            let kept_by_service = last_received.is_some_and(|r| i <= r);
            if kept_by_service {
                continue;
            }
            if matches!(
                f.state,
                FragmentState::Sent | FragmentState::Buffering | FragmentState::Received
            ) {
                f.state = FragmentState::Pending;
            }
        }
        self.cursor = self
            .fragments
            .iter()
            .find(|f| f.state == FragmentState::Pending)
            .map(|f| f.seq)
            .unwrap_or(self.next_seq);
        dropped
    }

    /// Oldest fragment not yet persisted: its timecode and state.
    pub fn oldest_unconfirmed(&self) -> Option<&StoredFragment> {
        self.fragments
            .iter()
            .find(|f| !matches!(f.state, FragmentState::Persisted | FragmentState::Skipped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frag(n: usize) -> Bytes {
        Bytes::from(vec![0u8; n])
    }

    fn store(max_bytes: usize, max_duration: u64, mode: Mode) -> FragmentStore {
        FragmentStore::new(
            Limits {
                max_bytes,
                max_duration,
            },
            mode,
        )
    }

    #[test]
    fn sends_in_order_and_frees_on_persisted() {
        let mut s = store(1000, 10_000, Mode::DropOldest);
        for i in 0..3 {
            assert!(s.push(i * 1000, 1000, 30, frag(100)).unwrap().is_empty());
        }
        assert_eq!(s.bytes_held(), 300);
        let sent: Vec<u64> = std::iter::from_fn(|| s.next_to_send().map(|f| f.timecode)).collect();
        assert_eq!(sent, vec![0, 1000, 2000]);
        assert!(!s.has_pending());
        assert!(s.on_persisted(1000));
        assert_eq!(
            s.bytes_held(),
            300,
            "an older fragment is still unconfirmed"
        );
        assert!(s.on_persisted(0));
        assert_eq!(s.bytes_held(), 100);
        assert!(!s.on_persisted(99));
        assert!(!s.is_drained());
        s.on_persisted(2000);
        assert!(s.is_drained() && s.is_empty());
        assert_eq!(s.persisted_count(), 3);
    }

    #[test]
    fn realtime_evicts_oldest_whole_fragments_and_reports_them() {
        let mut s = store(250, 100_000, Mode::DropOldest);
        s.push(0, 1000, 1, frag(100)).unwrap();
        s.push(1000, 1000, 2, frag(100)).unwrap();
        s.on_persisted(0);
        let d = s.push(2000, 1000, 3, frag(100)).unwrap();
        assert!(d.is_empty(), "persisted data was freed already");
        let d = s.push(3000, 1000, 4, frag(100)).unwrap();
        assert_eq!(
            d,
            vec![Dropped {
                timecode: 1000,
                duration: 1000,
                frames: 2,
                reason: DropReason::StorageFull
            }]
        );
        assert_eq!(s.bytes_held(), 200);
        assert_eq!(s.next_to_send().unwrap().timecode, 2000);
        assert_eq!(s.dropped_count(), 1);
    }

    #[test]
    fn buffer_duration_is_enforced() {
        let mut s = store(1 << 20, 3000, Mode::DropOldest);
        for i in 0..3 {
            s.push(i * 1000, 1000, 1, frag(10)).unwrap();
        }
        let d = s.push(3000, 1000, 1, frag(10)).unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].reason, DropReason::BufferDurationExceeded);
        assert_eq!(d[0].timecode, 0);
    }

    #[test]
    fn oversized_fragment_is_dropped_itself() {
        let mut s = store(100, 100_000, Mode::DropOldest);
        s.push(0, 1000, 1, frag(50)).unwrap();
        let d = s.push(1000, 1000, 9, frag(101)).unwrap();
        assert_eq!(d[0].reason, DropReason::LargerThanStorage);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn offline_refuses_when_full_then_accepts_after_persisted() {
        let mut s = store(200, 100_000, Mode::Block);
        s.push(0, 1000, 1, frag(100)).unwrap();
        s.push(1000, 1000, 1, frag(100)).unwrap();
        let PushError::Full(back) = s.push(2000, 1000, 1, frag(100)).unwrap_err();
        assert_eq!(back.timecode, 2000);
        s.next_to_send();
        s.on_persisted(0);
        assert!(s.push_fragment(*back).unwrap().is_empty());
        let order: Vec<u64> = s.fragments().map(|f| f.timecode).collect();
        assert_eq!(order, vec![1000, 2000]);
    }

    #[test]
    fn rewind_replays_unpersisted_within_window() {
        let mut s = store(1 << 20, 1_000_000, Mode::DropOldest);
        for i in 0..6 {
            s.push(i * 1000, 1000, 1, frag(10)).unwrap();
        }
        while s.next_to_send().is_some() {}
        s.on_persisted(0);
        s.on_progress(1000, FragmentState::Received);
        // Window of 3 s before the newest end (6000): fragments starting before 3000 are too old.
        let d = s.rewind(3000, false);
        assert_eq!(
            d.iter().map(|d| d.timecode).collect::<Vec<_>>(),
            vec![1000, 2000]
        );
        assert!(
            d.iter()
                .all(|d| d.reason == DropReason::OutsideReplayWindow)
        );
        let resent: Vec<u64> =
            std::iter::from_fn(|| s.next_to_send().map(|f| f.timecode)).collect();
        assert_eq!(resent, vec![3000, 4000, 5000]);
    }

    #[test]
    fn rewind_after_received_skips_what_the_service_kept() {
        let mut s = store(1 << 20, 1_000_000, Mode::DropOldest);
        for i in 0..4 {
            s.push(i * 1000, 1000, 1, frag(10)).unwrap();
        }
        while s.next_to_send().is_some() {}
        s.on_progress(1000, FragmentState::Received);
        assert!(s.rewind(1_000_000, true).is_empty());
        let resent: Vec<u64> =
            std::iter::from_fn(|| s.next_to_send().map(|f| f.timecode)).collect();
        assert_eq!(resent, vec![2000, 3000]);
        // Without host-alive, everything unpersisted is re-sent.
        s.rewind(1_000_000, false);
        let resent: Vec<u64> =
            std::iter::from_fn(|| s.next_to_send().map(|f| f.timecode)).collect();
        assert_eq!(resent, vec![0, 1000, 2000, 3000]);
    }

    #[test]
    fn rejected_fragment_is_skipped_and_reported() {
        let mut s = store(1 << 20, 1_000_000, Mode::DropOldest);
        s.push(0, 1000, 5, frag(10)).unwrap();
        s.push(1000, 1000, 5, frag(10)).unwrap();
        while s.next_to_send().is_some() {}
        let d = s.on_rejected(0).unwrap();
        assert_eq!(d.reason, DropReason::RejectedByService);
        assert_eq!(s.len(), 1);
        s.rewind(1_000_000, false);
        assert_eq!(s.next_to_send().unwrap().timecode, 1000);
    }

    proptest! {
        /// Whatever happens, held bytes stay within the budget and equal the sum of what is held;
        /// every fragment is persisted or reported dropped exactly once, or still held.
        #[test]
        fn accounting_holds(ops in proptest::collection::vec((0u8..4, 1usize..400), 1..200)) {
            let mut s = store(1000, 20_000, Mode::DropOldest);
            let mut pushed = 0u64;
            let mut tc = 0u64;
            let mut dropped = 0u64;
            for (op, size) in ops {
                match op {
                    0 | 1 => {
                        dropped += s.push(tc, 1000, 1, frag(size)).unwrap().len() as u64;
                        pushed += 1;
                        tc += 1000;
                    }
                    2 => { s.next_to_send(); }
                    _ => {
                        let sent = s.fragments().find(|f| f.state == FragmentState::Sent).map(|f| f.timecode);
                        if let Some(f) = sent {
                            s.on_persisted(f);
                        }
                    }
                }
                prop_assert!(s.bytes_held() <= 1000);
                prop_assert_eq!(s.bytes_held(), s.fragments().map(|f| f.len).sum::<usize>());
            }
            let held = s.fragments().filter(|f| f.state != FragmentState::Persisted).count() as u64;
            prop_assert_eq!(pushed, s.persisted_count() + dropped + held);
            prop_assert_eq!(dropped, s.dropped_count());
        }
    }
}
