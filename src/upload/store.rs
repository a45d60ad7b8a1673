//! The fragment store: fragments waiting to be sent or confirmed — the open one too, as it
//! grows frame by frame — with their ACK state, the `storage-size` and `buffer-duration` budgets,
//! and the send and replay cursors.
//!
//! It is plain single-threaded logic; the uploader wraps it in a mutex and wakes the sender when
//! something changes. A fragment is Tags + Cluster bytes in pieces (`Bytes`, sent as they are):
//! the open fragment gets a piece per SimpleBlock ([`FragmentStore::put`] with
//! [`StorePiece::Append`]) and its end ([`StorePiece::Complete`]); the sender takes what was not
//! sent yet ([`FragmentStore::take_parts`]), so the open fragment streams while it is packed.
//! Whatever is dropped, the byte stream sent stays valid: nothing is ever cut inside a fragment.
//!
//! Policies:
//! - **Realtime / near-realtime**: when a piece does not fit, the oldest whole fragments not
//!   handed to the connection yet are evicted to make room; never the open fragment, and never
//!   one the connection has (it may yet be persisted, and is kept for a replay): on a slow
//!   uplink the connection holds what its socket buffers take, the store `storage-size` more.
//!   After a connection fails, what it had is again evictable. Each evicted fragment is returned
//!   as [`Dropped`] so the element can report it. A complete fragment larger than the whole
//!   budget is itself dropped; the open fragment may exceed the budget on its own (it cannot be
//!   cut).
//! - **Offline**: [`FragmentStore::put`] refuses instead while older fragments hold the space,
//!   and the producer waits (cancellably) for PERSISTED ACKs to free it.
//! - PERSISTED frees the fragment. ACKs are per fragment, open or not: BUFFERING can come while
//!   it is still open, PERSISTED only after its end was sent.
//! - A fragment the service refuses for good while it is open stops being sent; it is reported
//!   dropped when its end comes, with all its frames.
//! - After a connection ends ([`FragmentStore::rewind`]) every fragment not persisted, the open
//!   one included, is sent again from its first byte on the next connection.

use std::collections::VecDeque;

use bytes::Bytes;

/// Where a fragment is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FragmentState {
    /// Not handed to a connection yet (or to be re-sent after a reconnect).
    Pending,
    /// Handed (at least its beginning) to the current connection.
    Sent,
    Buffering,
    Received,
    Persisted,
    /// Refused by the service with a non-retriable error; never sent again.
    Skipped,
    /// RECEIVED by the service on a connection that ended before its PERSISTED ACK, with the
    /// service up (host alive): the service keeps and persists it, but no later connection
    /// will confirm it. Final, like Persisted: never re-sent, never reported as dropped.
    Kept,
}

/// A fragment as the store holds it.
#[derive(Debug, Clone)]
pub struct StoredFragment {
    /// Sequence number given by the store, unique per stream.
    pub seq: u64,
    /// The cluster timecode as it is written in the stream (timecode-scale units), which is what
    /// ACKs carry.
    pub timecode: u64,
    /// Duration of the fragment, in timecode-scale units (0 while open).
    pub duration: u64,
    /// Number of frames in the fragment (so far, while open).
    pub frames: u32,
    /// The session header (EBML, Segment, Info, Tracks) this fragment must follow. Fragments
    /// with a different header need a new PutMedia session.
    pub header: Bytes,
    /// Tags + Cluster bytes, in pieces (sent as they are, without joining them).
    pub parts: Vec<Bytes>,
    /// Total bytes of `parts`.
    pub len: usize,
    /// Ends with the end-of-fragment tag that closes the stream.
    pub end_of_stream: bool,
    pub state: FragmentState,
    /// Its end came: no more parts.
    pub complete: bool,
    /// Parts handed to the current connection.
    pub sent_parts: usize,
    /// Refused while open: reported dropped when it completes.
    report_on_complete: bool,
}

impl StoredFragment {
    pub fn new(header: Bytes, timecode: u64, duration: u64, frames: u32, bytes: Bytes) -> Self {
        Self::from_parts(header, timecode, duration, frames, vec![bytes], false)
    }

    /// A complete fragment.
    pub fn from_parts(
        header: Bytes,
        timecode: u64,
        duration: u64,
        frames: u32,
        parts: Vec<Bytes>,
        end_of_stream: bool,
    ) -> Self {
        Self {
            seq: 0,
            timecode,
            duration,
            frames,
            header,
            len: parts.iter().map(Bytes::len).sum(),
            parts,
            end_of_stream,
            state: FragmentState::Pending,
            complete: true,
            sent_parts: 0,
            report_on_complete: false,
        }
    }

    /// The beginning of a fragment that is still being packed: its head (Tags, Cluster start)
    /// and the blocks it has so far.
    pub fn open(header: Bytes, timecode: u64, frames: u32, parts: Vec<Bytes>) -> Self {
        Self {
            complete: false,
            ..Self::from_parts(header, timecode, 0, frames, parts, false)
        }
    }

    /// Persisted, or given up after a non-retriable error.
    pub fn is_done(&self) -> bool {
        matches!(
            self.state,
            FragmentState::Persisted | FragmentState::Skipped | FragmentState::Kept
        )
    }

    fn in_flight(&self) -> bool {
        matches!(
            self.state,
            FragmentState::Sent | FragmentState::Buffering | FragmentState::Received
        )
    }

    fn dropped(&self, reason: DropReason) -> Dropped {
        Dropped {
            timecode: self.timecode,
            duration: self.duration,
            frames: self.frames,
            reason,
        }
    }
}

/// What the producer adds to the store.
#[derive(Debug, Clone)]
pub enum StorePiece {
    /// A complete fragment.
    Whole(StoredFragment),
    /// A fragment begins ([`StoredFragment::open`]); it is the open fragment until `Complete`.
    Begin(StoredFragment),
    /// One more SimpleBlock of the open fragment.
    Append(Bytes),
    /// The open fragment is complete.
    Complete {
        /// timecode-scale units.
        duration: u64,
        frames: u32,
        /// End of stream: unsent metadata + the end-of-fragment tag.
        tail: Option<Bytes>,
        end_of_stream: bool,
    },
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

/// Bytes for the connection, from [`FragmentStore::take_parts`].
#[derive(Debug)]
pub struct SendChunk {
    pub timecode: u64,
    pub parts: Vec<Bytes>,
    /// The fragment's end is in this chunk (or it came after all its bytes were sent): close it.
    pub last: bool,
    pub end_of_stream: bool,
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
    /// The fragment whose sending is under way on the current connection (its beginning was
    /// handed out, its end not yet).
    current: Option<u64>,
    /// The open fragment (begun, not complete).
    open: Option<u64>,
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
            current: None,
            open: None,
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

    /// Adds a completed fragment (see [`Self::push`]).
    pub fn push_fragment(&mut self, fragment: StoredFragment) -> Result<Vec<Dropped>, PushError> {
        match self.put(StorePiece::Whole(fragment)) {
            Ok(d) => Ok(d),
            Err(StorePiece::Whole(f)) => Err(PushError::Full(Box::new(f))),
            Err(_) => unreachable!("put returns the piece it refused"),
        }
    }

    /// Adds a piece. `Err` gives the piece back: offline mode, no room now (retry after a
    /// PERSISTED). In [`Mode::DropOldest`] it always succeeds and returns what was evicted.
    pub fn put(&mut self, piece: StorePiece) -> Result<Vec<Dropped>, StorePiece> {
        self.put_inner(piece, true)
    }

    /// Adds a piece without waiting for room (offline mode when stopping: the budget is
    /// exceeded rather than media lost).
    pub fn put_over_budget(&mut self, piece: StorePiece) -> Vec<Dropped> {
        self.put_inner(piece, false).unwrap_or_default()
    }

    fn put_inner(&mut self, piece: StorePiece, enforce: bool) -> Result<Vec<Dropped>, StorePiece> {
        match piece {
            StorePiece::Whole(f) | StorePiece::Begin(f)
                if f.len > self.limits.max_bytes && f.complete =>
            {
                self.dropped += 1;
                Ok(vec![f.dropped(DropReason::LargerThanStorage)])
            }
            StorePiece::Whole(f) | StorePiece::Begin(f) => {
                let timecode = f.timecode + f.duration;
                let dropped = match self.make_room(f.len, timecode, enforce) {
                    Ok(d) => d,
                    Err(()) => {
                        return Err(if f.complete {
                            StorePiece::Whole(f)
                        } else {
                            StorePiece::Begin(f)
                        });
                    }
                };
                self.add(f);
                Ok(dropped)
            }
            StorePiece::Append(b) => {
                let Some(i) = self.open_index() else {
                    return Ok(Vec::new());
                };
                let timecode = self.fragments[i].timecode;
                let dropped = match self.make_room(b.len(), timecode, enforce) {
                    Ok(d) => d,
                    Err(()) => return Err(StorePiece::Append(b)),
                };
                let i = self
                    .open_index()
                    .expect("the open fragment is never evicted");
                let f = &mut self.fragments[i];
                f.frames += 1;
                if f.state != FragmentState::Skipped {
                    f.len += b.len();
                    self.bytes += b.len();
                    f.parts.push(b);
                }
                Ok(dropped)
            }
            StorePiece::Complete {
                duration,
                frames,
                tail,
                end_of_stream,
            } => {
                let Some(i) = self.open_index() else {
                    return Ok(Vec::new());
                };
                self.open = None;
                let f = &mut self.fragments[i];
                f.duration = duration;
                f.frames = frames;
                f.complete = true;
                f.end_of_stream = end_of_stream;
                let mut dropped = Vec::new();
                if f.state == FragmentState::Skipped {
                    if f.report_on_complete {
                        f.report_on_complete = false;
                        dropped.push(f.dropped(DropReason::RejectedByService));
                    }
                } else if let Some(t) = tail {
                    f.len += t.len();
                    self.bytes += t.len();
                    f.parts.push(t);
                }
                self.trim_done();
                Ok(dropped)
            }
        }
    }

    fn open_index(&self) -> Option<usize> {
        let seq = self.open?;
        self.fragments.iter().rposition(|f| f.seq == seq)
    }

    fn add(&mut self, mut f: StoredFragment) {
        f.seq = self.next_seq;
        f.state = FragmentState::Pending;
        f.sent_parts = 0;
        self.next_seq += 1;
        self.bytes += f.len;
        if !f.complete {
            self.open = Some(f.seq);
        }
        self.fragments.push_back(f);
    }

    /// Evicts (drop-oldest) or refuses (block) until `size` more bytes, ending at `end`
    /// (timecode units), fit.
    fn make_room(&mut self, size: usize, end: u64, enforce: bool) -> Result<Vec<Dropped>, ()> {
        let mut dropped = Vec::new();
        if !enforce {
            return Ok(dropped);
        }
        loop {
            let over_bytes = self.bytes + size > self.limits.max_bytes;
            let over_duration =
                self.fragments
                    .iter()
                    .find(|f| !f.is_done())
                    .is_some_and(|oldest| {
                        end.saturating_sub(oldest.timecode) > self.limits.max_duration
                    });
            if !over_bytes && !over_duration {
                return Ok(dropped);
            }
            if self.mode == Mode::Block {
                // Only older fragments waiting for PERSISTED can make room; the open fragment
                // cannot wait for itself.
                let open = self.open;
                let waiting = self
                    .fragments
                    .iter()
                    .any(|f| !f.is_done() && Some(f.seq) != open);
                if waiting && over_bytes {
                    return Err(());
                }
                return Ok(dropped);
            }
            let reason = if over_bytes {
                DropReason::StorageFull
            } else {
                DropReason::BufferDurationExceeded
            };
            match self.evict_one(reason) {
                Some(d) => dropped.extend(d),
                None => return Ok(dropped),
            }
        }
    }

    /// Whether `f` may be evicted: complete, and done or not handed to the connection.
    fn evictable(&self, f: &StoredFragment) -> bool {
        f.complete
            && Some(f.seq) != self.current
            && Some(f.seq) != self.open
            && (f.is_done() || f.state == FragmentState::Pending)
    }

    /// Evicts one whole fragment: done ones first (free), then the oldest not yet sent. `None`
    /// when nothing can be evicted.
    fn evict_one(&mut self, reason: DropReason) -> Option<Option<Dropped>> {
        let pick = |pred: &dyn Fn(&StoredFragment) -> bool| {
            self.fragments
                .iter()
                .position(|f| self.evictable(f) && pred(f))
        };
        let i = pick(&|f| f.is_done()).or_else(|| pick(&|_| true))?;
        let f = self.fragments.remove(i).expect("index exists");
        self.bytes -= f.len;
        Some(if f.is_done() {
            None
        } else {
            self.dropped += 1;
            Some(f.dropped(reason))
        })
    }

    /// The next fragment to start sending, without taking it; `None` while one is being sent.
    pub fn peek_next(&self) -> Option<&StoredFragment> {
        if self.current.is_some() {
            return None;
        }
        self.fragments
            .iter()
            .find(|f| f.seq >= self.cursor && f.state == FragmentState::Pending)
    }

    /// Whether a fragment's sending is under way (its end was not handed out yet).
    pub fn sending(&self) -> bool {
        self.current.is_some()
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
            .find(|f| f.in_flight())
            .map(|f| f.timecode)
    }

    /// The next complete fragment to send, whole, marked [`FragmentState::Sent`] (tools and
    /// tests; the uploader uses [`Self::take_parts`]).
    pub fn next_to_send(&mut self) -> Option<StoredFragment> {
        let cursor = self.cursor;
        let f = self
            .fragments
            .iter_mut()
            .find(|f| f.seq >= cursor && f.state == FragmentState::Pending && f.complete)?;
        f.state = FragmentState::Sent;
        f.sent_parts = f.parts.len();
        self.cursor = f.seq + 1;
        Some(f.clone())
    }

    /// What to hand the connection next: the rest of the fragment being sent, or the beginning
    /// of the next one (whatever it has so far). `None` when there is nothing new.
    pub fn take_parts(&mut self) -> Option<SendChunk> {
        if let Some(seq) = self.current {
            let Some(f) = self.fragments.iter_mut().find(|f| f.seq == seq) else {
                self.current = None;
                return self.take_parts();
            };
            if f.state == FragmentState::Skipped || f.state == FragmentState::Pending {
                // Refused while open (or rewound): its remaining bytes are not sent.
                self.current = None;
                return self.take_parts();
            }
            if f.sent_parts == f.parts.len() && !f.complete {
                return None;
            }
            let parts = f.parts[f.sent_parts..].to_vec();
            f.sent_parts = f.parts.len();
            let last = f.complete;
            if last {
                self.current = None;
            }
            return Some(SendChunk {
                timecode: f.timecode,
                parts,
                last,
                end_of_stream: f.end_of_stream,
            });
        }
        let cursor = self.cursor;
        let f = self
            .fragments
            .iter_mut()
            .find(|f| f.seq >= cursor && f.state == FragmentState::Pending)?;
        f.state = FragmentState::Sent;
        f.sent_parts = f.parts.len();
        self.cursor = f.seq + 1;
        if !f.complete {
            self.current = Some(f.seq);
        }
        Some(SendChunk {
            timecode: f.timecode,
            parts: f.parts.clone(),
            last: f.complete,
            end_of_stream: f.end_of_stream,
        })
    }

    /// Whether something is waiting to be sent.
    pub fn has_pending(&self) -> bool {
        if let Some(seq) = self.current
            && let Some(f) = self.fragments.iter().find(|f| f.seq == seq)
            && f.in_flight()
        {
            return f.sent_parts < f.parts.len() || f.complete;
        }
        self.fragments
            .iter()
            .any(|f| f.seq >= self.cursor && f.state == FragmentState::Pending)
    }

    /// Whether every fragment has been persisted or skipped.
    pub fn is_drained(&self) -> bool {
        self.fragments.iter().all(StoredFragment::is_done)
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

    /// A non-retriable error ACK: the fragment is never sent again. It is reported now, or when
    /// it completes if it is still open.
    pub fn on_rejected(&mut self, timecode: u64) -> Option<Dropped> {
        let f = self.find_mut(timecode)?;
        if f.is_done() {
            return None;
        }
        f.state = FragmentState::Skipped;
        let d = if f.complete {
            Some(f.dropped(DropReason::RejectedByService))
        } else {
            f.report_on_complete = true;
            None
        };
        self.dropped += 1;
        let d = d?;
        self.trim_done();
        Some(d)
    }

    fn trim_done(&mut self) {
        while self
            .fragments
            .front()
            .is_some_and(|f| f.is_done() && f.complete)
        {
            let f = self.fragments.pop_front().expect("front exists");
            self.bytes -= f.len;
        }
    }

    /// After a connection ended: everything not persisted is to be sent again on the next
    /// connection from its first byte, starting with the oldest fragment within `replay_window`
    /// (timecode-scale units) of the newest one. Older unpersisted fragments are dropped and
    /// returned. If `after_received` is set (the service kept what it acknowledged as
    /// RECEIVED), replay starts after the last RECEIVED fragment instead when that is later, and
    /// the fragments up to it become [`FragmentState::Kept`].
    pub fn rewind(&mut self, replay_window: u64, after_received: bool) -> Vec<Dropped> {
        self.current = None;
        let newest_end = self
            .fragments
            .back()
            .map(|f| f.timecode + f.duration)
            .unwrap_or(0);
        let mut dropped = Vec::new();
        while let Some(front) = self.fragments.front() {
            let outside = newest_end.saturating_sub(front.timecode) > replay_window;
            if !(outside || front.is_done()) || !front.complete {
                break;
            }
            let f = self.fragments.pop_front().expect("front exists");
            self.bytes -= f.len;
            if !f.is_done() {
                self.dropped += 1;
                dropped.push(f.dropped(DropReason::OutsideReplayWindow));
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
                if f.in_flight() {
                    f.state = FragmentState::Kept;
                }
                continue;
            }
            if f.in_flight() {
                f.state = FragmentState::Pending;
                f.sent_parts = 0;
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
        self.fragments.iter().find(|f| !f.is_done())
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
        // What the service kept is final: not re-sent after a later failure without host-alive,
        // not unconfirmed, and never reported as dropped when it leaves the replay window.
        assert!(
            s.fragments()
                .take(2)
                .all(|f| f.state == FragmentState::Kept)
        );
        assert!(s.rewind(1_000_000, false).is_empty());
        let resent: Vec<u64> =
            std::iter::from_fn(|| s.next_to_send().map(|f| f.timecode)).collect();
        assert_eq!(resent, vec![2000, 3000]);
        assert_eq!(s.oldest_unconfirmed().map(|f| f.timecode), Some(2000));
        assert!(s.rewind(500, false).iter().all(|d| d.timecode >= 2000));
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

    fn open(tc: u64, head: usize) -> StorePiece {
        StorePiece::Begin(StoredFragment::open(Bytes::new(), tc, 0, vec![frag(head)]))
    }

    fn complete(duration: u64, frames: u32) -> StorePiece {
        StorePiece::Complete {
            duration,
            frames,
            tail: None,
            end_of_stream: false,
        }
    }

    fn lens(c: &SendChunk) -> Vec<usize> {
        c.parts.iter().map(Bytes::len).collect()
    }

    #[test]
    fn the_open_fragment_streams_as_it_grows() {
        let mut s = store(1 << 20, 1_000_000, Mode::DropOldest);
        s.put(open(0, 10)).unwrap();
        let c = s.take_parts().unwrap();
        assert_eq!((lens(&c), c.last), (vec![10], false));
        assert!(s.sending() && s.peek_next().is_none());
        assert!(s.take_parts().is_none(), "nothing new");
        assert!(!s.has_pending());
        s.put(StorePiece::Append(frag(3))).unwrap();
        s.put(StorePiece::Append(frag(4))).unwrap();
        assert!(s.has_pending());
        let c = s.take_parts().unwrap();
        assert_eq!((lens(&c), c.last), (vec![3, 4], false));
        s.put(complete(1000, 2)).unwrap();
        let c = s.take_parts().unwrap();
        assert_eq!((lens(&c), c.last), (vec![], true), "its end");
        assert!(!s.sending());
        assert_eq!(s.bytes_held(), 17);
        assert!(s.on_progress(0, FragmentState::Buffering));
        assert!(s.on_persisted(0));
        assert!(s.is_empty() && s.bytes_held() == 0);
    }

    #[test]
    fn eviction_never_takes_the_open_or_a_partially_sent_fragment() {
        let mut s = store(100, 1_000_000, Mode::DropOldest);
        s.put(open(0, 40)).unwrap();
        s.take_parts().unwrap();
        s.put(complete(1000, 1)).unwrap();
        // Complete, but its end not handed out yet: still being sent.
        s.put(open(1000, 40)).unwrap();
        let d = s.put(StorePiece::Append(frag(40))).unwrap();
        assert!(d.is_empty(), "nothing may go: {d:?}");
        assert_eq!(s.bytes_held(), 120);
        // Sent whole, the connection has it: kept until confirmed (or the connection fails).
        assert!(s.take_parts().unwrap().last);
        assert!(s.put(StorePiece::Append(frag(10))).unwrap().is_empty());
        s.rewind(1_000_000, false);
        let d = s.put(StorePiece::Append(frag(10))).unwrap();
        assert_eq!(
            d.iter().map(|d| d.timecode).collect::<Vec<_>>(),
            vec![0],
            "after the connection failed; never the open one"
        );
        assert_eq!(s.bytes_held(), 100);
    }

    #[test]
    fn fragments_the_connection_has_are_never_evicted() {
        let mut s = store(300, 1_000_000, Mode::DropOldest);
        s.push(0, 1000, 1, frag(100)).unwrap();
        s.next_to_send();
        s.push(1000, 1000, 1, frag(100)).unwrap();
        s.push(2000, 1000, 1, frag(100)).unwrap();
        let d = s.push(3000, 1000, 1, frag(100)).unwrap();
        assert_eq!(d[0].timecode, 1000);
        s.next_to_send();
        s.next_to_send();
        assert!(s.push(4000, 1000, 1, frag(100)).unwrap().is_empty());
        assert_eq!(
            s.bytes_held(),
            400,
            "over budget by what the connection has"
        );
    }

    #[test]
    fn a_fragment_refused_while_open_is_reported_when_it_completes() {
        let mut s = store(1 << 20, 1_000_000, Mode::DropOldest);
        s.put(open(0, 10)).unwrap();
        s.put(StorePiece::Append(frag(5))).unwrap();
        s.take_parts().unwrap();
        assert_eq!(s.on_rejected(0), None, "reported when complete");
        s.put(StorePiece::Append(frag(5))).unwrap();
        assert!(s.take_parts().is_none(), "not sent any more");
        let d = s.put(complete(1000, 3)).unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(
            (d[0].frames, d[0].reason),
            (3, DropReason::RejectedByService)
        );
        assert!(s.is_empty());
        assert_eq!(s.dropped_count(), 1);
    }

    #[test]
    fn rewind_resends_the_open_fragment_from_its_first_byte() {
        let mut s = store(1 << 20, 1_000_000, Mode::DropOldest);
        s.push(0, 1000, 1, frag(7)).unwrap();
        s.put(open(1000, 10)).unwrap();
        s.put(StorePiece::Append(frag(3))).unwrap();
        while s.take_parts().is_some_and(|c| c.timecode == 0) {}
        assert!(s.sending());
        s.on_persisted(0);
        s.rewind(1_000_000, false);
        assert!(!s.sending());
        assert_eq!(s.peek_next().unwrap().timecode, 1000);
        let c = s.take_parts().unwrap();
        assert_eq!((lens(&c), c.last), (vec![10, 3], false));
        s.put(StorePiece::Append(frag(2))).unwrap();
        assert_eq!(lens(&s.take_parts().unwrap()), vec![2]);
    }

    #[test]
    fn offline_blocks_the_open_fragment_only_for_older_fragments() {
        let mut s = store(100, 1_000_000, Mode::Block);
        s.put(open(0, 60)).unwrap();
        // Alone, the open fragment grows past the budget (nothing could free room).
        s.put(StorePiece::Append(frag(60))).unwrap();
        s.put(complete(1000, 1)).unwrap();
        s.put(open(1000, 10))
            .expect_err("waits for the first fragment to be persisted");
        s.next_to_send();
        s.on_persisted(0);
        s.put(open(1000, 10)).unwrap();
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
                let in_flight: usize = s.fragments().filter(|f| f.state == FragmentState::Sent).map(|f| f.len).sum();
                prop_assert!(s.bytes_held() - in_flight <= 1000);
                prop_assert_eq!(s.bytes_held(), s.fragments().map(|f| f.len).sum::<usize>());
            }
            let held = s.fragments().filter(|f| f.state != FragmentState::Persisted).count() as u64;
            prop_assert_eq!(pushed, s.persisted_count() + dropped + held);
            prop_assert_eq!(dropped, s.dropped_count());
        }
    }
}
