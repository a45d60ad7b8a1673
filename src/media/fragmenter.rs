//! Fragmenter: ordered, stamped frames → KVS fragments (one Cluster each) and the session header,
//! emitted piece by piece as the frames are packed.
//!
//! What a fragment is: optional metadata `Tags` chains, then a Cluster (unknown size, Timecode,
//! Position 0) with its SimpleBlocks; the last fragment of a stream also carries the
//! `AWS_KINESISVIDEO_END_OF_FRAGMENT` tag after its blocks. The fragmenter emits it as
//! [`Piece`]s: [`Piece::Start`] (the header it follows, its Tags and Cluster start), one
//! [`Piece::Block`] per SimpleBlock as soon as the frame is packed, and [`Piece::End`] when the
//! next fragment starts (or at a pause, flush or end of stream). The uploader streams the pieces
//! of the open fragment as they come; [`FragmentAssembler`] joins them into whole [`Fragment`]s
//! for the dump file and tests. The session header ([`Fragment::header`]) is sent before the
//! first fragment of every connection and whenever [`Fragment::header_changed`] is set.
//!
//! ## When a fragment starts
//! - The stream starts at the first key frame of the video track (frames before it are dropped
//!   and counted, as the reference does). Audio-only streams start at once.
//! - `key-frame-fragmentation=true`: at every video key frame.
//! - `key-frame-fragmentation=false`: at the first video key frame at least `fragment-duration`
//!   after the fragment start. Audio-only streams: at the first frame at least
//!   `fragment-duration` after the start (every audio frame is a random access point).
//! - At the next video key frame after a codec configuration change (a new header: new
//!   resolution/profile, or a track that got its configuration late) or a timestamp jump.
//! - After [`Fragmenter::close`] (a pause or a flush): at the next video key frame.
//! - A/V with a stalled video track: when no video frame came for `fragment-duration` (at least
//!   2 s), audio frames start fragments by duration, so audio keeps flowing into bounded
//!   fragments.
//! - **Forced split**: when the next frame would lie more than 32767 timecode units after the
//!   cluster timecode (the i16 relative timecode), it starts a new fragment even if it is not a
//!   key frame (warning + counter). This only happens with GOPs longer than 32.7 s at the default
//!   scale, which the service rejects anyway (its maximum fragment duration is 10 s: a GOP longer
//!   than that gets a warning that names the encoder setting to change).
//!
//! ## Timecodes inside a cluster
//! The Cluster Timecode is written when the fragment starts, before its other frames are known:
//! it is the smaller of the first frame's PTS and DTS (and of the PTS of the audio kept for the
//! first fragment). Every later frame of the fragment has a PTS at or above the first frame's DTS
//! (per track DTS never decreases and PTS ≥ DTS, see [`crate::media::timeline`]; the interleaver puts
//! the other tracks' frames presented before a key frame in the fragment it closes), so frames
//! that follow the key frame in decode order but are shown before it (B-frames of an open GOP)
//! still get a non-negative relative timecode, with no distortion. Without B-frames this is the
//! key frame's PTS, as in the reference. The cluster timecodes strictly increase and a fragment
//! starts after the previous fragment's last frame (the service's 4004): when the first frame
//! would not, the cluster timecode is raised and the frames below it are clamped to relative
//! timecode 0 (counted). Together with the forced split every relative timecode lies in
//! 0..=32767.
//!
//! ## Track completeness (the service's ErrorId 4011)
//! The service refuses a fragment without a frame of a track its session header declares. The
//! header is chosen when the fragment's first piece is emitted, so a fragment is **held** at its
//! start until each track that gave frames during the previous fragment (every configured track
//! for the first fragment or after a header change) has given one, at most [`MAX_TRACK_HOLD_NS`]
//! of media time. Then it is released with a header listing the tracks that have frames in it; a
//! track left out (silent for the whole hold, or silent in the previous fragment and late in this
//! one) has its frames dropped, counted, until the next fragment, which waits for it again. A fragment that ends while held is released whole, the same way. With live A/V the
//! hold costs the first frames of a fragment at most the gap to the other track's next frame (an
//! audio frame: ~21 ms for AAC at 48 kHz, 20–40 ms for G.711 packets); a track that stops costs
//! the first [`MAX_TRACK_HOLD_NS`] of the fragment in which it stopped, once.
//!
//! ## Key flag
//! SimpleBlocks of video key frames get flag 0x80. As in the reference, audio blocks are flagged
//! key only in audio-only streams.
//!
//! ## Memory
//! Frames arrive already copied into an [`Arena`] (the one copy of the payload, made by the
//! caller when the frame is pushed). The fragmenter patches the block header in place and hands
//! the buffer on frozen; nothing is allocated per frame in steady state.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Write};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use crate::media::codec::{TrackConfig, TrackType};
use crate::media::fragment_metadata::{MetadataError, MetadataQueue};
use crate::media::mkv::cluster::{
    CLUSTER_START_LEN, SIMPLE_BLOCK_HEADER_LEN, put_cluster_start, put_tag_chain,
    simple_block_header, tag_chain_len,
};
use crate::media::mkv::header::{HeaderTrack, SegmentInfo, write_header};
use crate::media::mkv::{END_OF_FRAGMENT_TAG, FLAG_KEY};
use crate::media::timeline::Timecodes;

/// Most tracks a KVS stream may have (`MAX_SUPPORTED_TRACK_COUNT_PER_STREAM`).
pub const MAX_TRACKS: usize = 3;

/// The service's maximum fragment duration (MAX_FRAGMENT_DURATION_REACHED, error 4002).
pub const MAX_SERVICE_FRAGMENT_DURATION_NS: u64 = 10_000_000_000;

/// Below this, a silent video track is not considered stalled by the fragmenter.
const MIN_VIDEO_STALL_NS: u64 = 2_000_000_000;

/// Largest relative timecode of a SimpleBlock.
const MAX_RELATIVE: u64 = i16::MAX as u64;

/// A bump allocator of `BytesMut` blocks carved out of large chunks: many frames share one
/// allocation, and each block is its own (unique) `BytesMut`, patchable until frozen.
#[derive(Debug)]
pub struct Arena {
    buf: BytesMut,
    largest: usize,
    chunks: u64,
}

impl Default for Arena {
    fn default() -> Self {
        Self::new()
    }
}

impl Arena {
    pub const MIN_CHUNK: usize = 256 * 1024;
    pub const MAX_CHUNK: usize = 8 * 1024 * 1024;

    pub fn new() -> Self {
        Self {
            buf: BytesMut::new(),
            largest: 0,
            chunks: 0,
        }
    }

    /// Makes room for writing `n` bytes without reallocation, and returns the buffer to write
    /// them into. A new chunk holds at least 16 of the largest blocks seen (clamped to
    /// 256 KiB .. 8 MiB).
    #[inline]
    pub fn reserve(&mut self, n: usize) -> &mut BytesMut {
        debug_assert!(self.buf.is_empty(), "take() what was written first");
        if self.buf.capacity() < n {
            self.largest = self.largest.max(n);
            let size = (self.largest * 16)
                .clamp(Self::MIN_CHUNK, Self::MAX_CHUNK)
                .max(n);
            self.buf = BytesMut::with_capacity(size);
            self.chunks += 1;
        }
        &mut self.buf
    }

    /// Takes what was written since [`Self::reserve`].
    #[inline]
    pub fn take(&mut self) -> BytesMut {
        self.buf.split()
    }

    /// Chunks allocated so far.
    pub fn chunks(&self) -> u64 {
        self.chunks
    }
}

/// A frame ready for the fragmenter: timestamps on the KVS axis (ns), and its SimpleBlock
/// (a [`SIMPLE_BLOCK_HEADER_LEN`]-byte header placeholder followed by the payload).
#[derive(Debug)]
pub struct Frame {
    pub track: usize,
    pub pts: u64,
    pub dts: u64,
    pub duration: u64,
    pub key: bool,
    pub discontinuity: bool,
    /// A new configuration for this track, taking effect at the next fragment start.
    pub new_config: Option<Arc<TrackConfig>>,
    pub block: BytesMut,
}

impl Frame {
    /// Copies `payload` into the arena behind a block header placeholder: the one copy.
    pub fn copy_block(arena: &mut Arena, payload: &[u8]) -> BytesMut {
        let buf = arena.reserve(SIMPLE_BLOCK_HEADER_LEN + payload.len());
        buf.put_bytes(0, SIMPLE_BLOCK_HEADER_LEN);
        buf.put_slice(payload);
        arena.take()
    }
}

/// A completed KVS fragment.
#[derive(Debug, Clone)]
pub struct Fragment {
    /// 0, 1, 2, … per stream.
    pub sequence: u64,
    /// The Cluster Timecode as written (timecode units; relative to the first fragment in
    /// relative mode). This is the `FragmentTimecode` of the service's ACKs.
    pub timecode: u64,
    /// The cluster's time on the KVS axis (ns since the epoch in absolute and relative mode).
    pub start_ns: u64,
    /// From the start to the end of the last frame.
    pub duration_ns: u64,
    /// Tags + Cluster + Timecode + Position, then one SimpleBlock per part, then (end of
    /// stream) the closing tags.
    pub parts: Vec<Bytes>,
    /// Total bytes of `parts`.
    pub len: usize,
    /// Frames per track index.
    pub frame_counts: [u32; MAX_TRACKS],
    /// Starts with a key frame (false only for a forced split or an audio-started fragment
    /// of an A/V stream).
    pub key: bool,
    /// The session header (EBML … Tracks) this fragment belongs to.
    pub header: Bytes,
    /// The header differs from the previous fragment's (or this is the first fragment): it must
    /// be sent before this fragment.
    pub header_changed: bool,
    /// Carries `AWS_KINESISVIDEO_END_OF_FRAGMENT` (end of stream).
    pub end_of_stream: bool,
}

impl Fragment {
    pub fn frames(&self) -> u32 {
        self.frame_counts.iter().sum()
    }

    /// The fragment as one contiguous buffer (a copy; for dumps and tests).
    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(self.len);
        for p in &self.parts {
            b.put_slice(p);
        }
        b.freeze()
    }

    /// Writes the parts (not the header) to `w`.
    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        for p in &self.parts {
            w.write_all(p)?;
        }
        Ok(())
    }
}

/// The first piece of a fragment: what it follows and its first bytes.
#[derive(Debug, Clone)]
pub struct FragmentStart {
    /// 0, 1, 2, … per stream.
    pub sequence: u64,
    /// The Cluster Timecode as written (see [`Fragment::timecode`]).
    pub timecode: u64,
    /// The cluster's time on the KVS axis (ns).
    pub start_ns: u64,
    /// Starts with a key frame.
    pub key: bool,
    /// The session header this fragment follows.
    pub header: Bytes,
    /// The header differs from the previous fragment's (or this is the first fragment).
    pub header_changed: bool,
    /// Tags + Cluster + Timecode + Position, then the blocks packed while the fragment was held.
    pub parts: Vec<Bytes>,
}

/// The last piece of a fragment.
#[derive(Debug, Clone)]
pub struct FragmentEnd {
    pub sequence: u64,
    /// From the start to the end of the last frame.
    pub duration_ns: u64,
    /// Frames per track index.
    pub frame_counts: [u32; MAX_TRACKS],
    /// End of stream: metadata not sent yet and the end-of-fragment tag.
    pub tail: Option<Bytes>,
    pub end_of_stream: bool,
}

impl FragmentEnd {
    pub fn frames(&self) -> u32 {
        self.frame_counts.iter().sum()
    }
}

/// What the fragmenter emits, in order: for each fragment a `Start`, its `Block`s, an `End`.
#[derive(Debug, Clone)]
pub enum Piece {
    Start(FragmentStart),
    /// One SimpleBlock of the open fragment.
    Block(Bytes),
    End(FragmentEnd),
}

/// Joins [`Piece`]s into whole [`Fragment`]s.
#[derive(Debug, Default)]
pub struct FragmentAssembler {
    open: Option<Fragment>,
    /// Parts of the last fragment: room reserved for the next one, once.
    last_parts: usize,
}

impl FragmentAssembler {
    /// Adds the next piece; returns the fragment it completes.
    pub fn push(&mut self, piece: Piece) -> Option<Fragment> {
        match piece {
            Piece::Start(mut s) => {
                s.parts
                    .reserve(self.last_parts.saturating_sub(s.parts.len()));
                self.open = Some(Fragment {
                    sequence: s.sequence,
                    timecode: s.timecode,
                    start_ns: s.start_ns,
                    duration_ns: 0,
                    len: s.parts.iter().map(Bytes::len).sum(),
                    parts: s.parts,
                    frame_counts: [0; MAX_TRACKS],
                    key: s.key,
                    header: s.header,
                    header_changed: s.header_changed,
                    end_of_stream: false,
                });
                None
            }
            Piece::Block(b) => {
                let f = self.open.as_mut()?;
                f.len += b.len();
                f.parts.push(b);
                None
            }
            Piece::End(e) => {
                let mut f = self.open.take()?;
                self.last_parts = f.parts.len() + 1;
                f.duration_ns = e.duration_ns;
                f.frame_counts = e.frame_counts;
                f.end_of_stream = e.end_of_stream;
                if let Some(t) = e.tail {
                    f.len += t.len();
                    f.parts.push(t);
                }
                Some(f)
            }
        }
    }
}

/// How fragments are cut (from the element's properties).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragmenterConfig {
    /// `timecode-scale` in ns (the property is in ms).
    pub timecode_scale_ns: u64,
    pub absolute_fragment_times: bool,
    pub key_frame_fragmentation: bool,
    /// `fragment-duration` in ns.
    pub fragment_duration_ns: u64,
    /// A fragment without frames of some track gets a session header without that track (the
    /// service answers ErrorId 4011 otherwise). Off: every fragment uses the full header.
    pub omit_silent_tracks: bool,
}

impl Default for FragmenterConfig {
    fn default() -> Self {
        Self {
            timecode_scale_ns: 1_000_000,
            absolute_fragment_times: true,
            key_frame_fragmentation: true,
            fragment_duration_ns: 2_000_000_000,
            omit_silent_tracks: true,
        }
    }
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FragmenterStats {
    pub fragments: u64,
    pub frames: u64,
    /// Frames dropped before the stream's first key frame.
    pub dropped_before_key: u64,
    /// Fragments started at a non-key frame because the i16 timecode range was exhausted.
    pub forced_splits: u64,
    /// Fragments longer than the service's maximum fragment duration.
    pub long_fragments: u64,
    /// Cluster timecodes raised to keep them increasing.
    pub timecodes_raised: u64,
    /// Frames whose relative timecode was clamped to 0 because of that.
    pub frames_clamped: u64,
    /// Session headers built.
    pub headers: u64,
    /// Frames of a track that the open fragment's header leaves out (silent for the whole hold
    /// at its start), dropped until the next fragment.
    pub dropped_track_absent: u64,
    /// Fragments held at their start for a track's first frame that were released without it.
    pub hold_timeouts: u64,
}

/// Why a track cannot be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrackError {
    #[error("a KVS stream has at most {MAX_TRACKS} tracks")]
    TooMany,
    #[error("tracks cannot be added after the stream started")]
    Started,
    #[error("no track {0}")]
    Unknown(usize),
}

#[derive(Debug)]
struct TrackState {
    track_type: TrackType,
    name: String,
    number: u8,
    config: Option<Arc<TrackConfig>>,
    pending: Option<Arc<TrackConfig>>,
}

#[derive(Debug)]
struct OpenFragment {
    sequence: u64,
    /// The cluster timecode's time base (absolute units).
    base: u64,
    timecode: u64,
    max_units: u64,
    first_pts: u64,
    end_ns: u64,
    counts: [u32; MAX_TRACKS],
    key: bool,
    /// Track mask of the header it was released with; `None` while held.
    released: Option<u32>,
    /// Tracks it waits for while held.
    wanted: u32,
    /// Tracks that gave a frame to it, kept or dropped.
    live: u32,
    /// Head and blocks packed while held.
    held: Vec<Bytes>,
}

/// Builds fragments from frames that arrive in DTS order.
#[derive(Debug)]
pub struct Fragmenter {
    cfg: FragmenterConfig,
    timecodes: Timecodes,
    tracks: Vec<TrackState>,
    /// The first video track, if any: its key frames start fragments.
    primary: Option<usize>,
    numbers_frozen: bool,
    header: Option<Bytes>,
    /// The full header was rebuilt since the last fragment started.
    header_rebuilt: bool,
    metadata: MetadataQueue,
    open: Option<OpenFragment>,
    prev_base_units: Option<u64>,
    /// The latest timecode (units) of a frame of the previous fragment.
    prev_last_units: Option<u64>,
    /// Tracks that gave frames during the previous fragment (kept or dropped).
    prev_tracks: u32,
    /// Tracks that ended (EOS, pad released) and sent nothing since: never waited for.
    ended: u32,
    /// Frames of the previous fragment.
    prev_frames: u32,
    sequence: u64,
    discontinuity_pending: bool,
    last_video_dts: Option<u64>,
    video_stall_warned: bool,
    head_arena: Arena,
    stats: FragmenterStats,
    /// Audio of an A/V stream that came before the first video key frame; it goes into the first
    /// fragment (whose cluster timecode is then the earliest of them) instead of being dropped.
    lead_in: VecDeque<Frame>,
    /// Headers listing only some tracks, by track-index mask, for fragments in which a track
    /// has no frame (the service refuses those under a header that lists it: ErrorId 4011).
    /// Cleared whenever the full header is rebuilt.
    partial_headers: Vec<(u32, Bytes)>,
    /// The header of the last fragment handed out.
    last_header: Option<Bytes>,
}

/// Longest a fragment is held at its start (media time) for a track's first frame; see the
/// module docs.
pub const MAX_TRACK_HOLD_NS: u64 = 500_000_000;

/// How much audio before the first video key frame is kept for the first fragment.
const MAX_LEAD_IN_NS: u64 = 2_000_000_000;

/// 16 random bytes for a SegmentUID, from the standard library's randomly seeded hasher keys
/// (uniqueness is what matters, not unpredictability).
pub fn random_segment_uid() -> [u8; 16] {
    let mut uid = [0u8; 16];
    for (i, half) in uid.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(i);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        half.copy_from_slice(&h.finish().to_le_bytes());
    }
    uid
}

impl Fragmenter {
    pub fn new(cfg: FragmenterConfig) -> Self {
        Self {
            timecodes: Timecodes::new(cfg.timecode_scale_ns, cfg.absolute_fragment_times),
            cfg,
            tracks: Vec::new(),
            primary: None,
            numbers_frozen: false,
            header: None,
            header_rebuilt: false,
            metadata: MetadataQueue::new(),
            open: None,
            prev_base_units: None,
            prev_last_units: None,
            prev_tracks: 0,
            ended: 0,
            prev_frames: 8,
            sequence: 0,
            discontinuity_pending: false,
            last_video_dts: None,
            video_stall_warned: false,
            head_arena: Arena::new(),
            lead_in: VecDeque::new(),
            partial_headers: Vec::new(),
            last_header: None,
            stats: FragmenterStats::default(),
        }
    }

    pub fn config(&self) -> &FragmenterConfig {
        &self.cfg
    }

    pub fn stats(&self) -> FragmenterStats {
        self.stats
    }

    /// Adds a track (before the first frame). Track numbers are given when the stream starts:
    /// video tracks first, then audio, as the reference (video 1, audio 2).
    pub fn add_track(&mut self, track_type: TrackType, name: &str) -> Result<usize, TrackError> {
        if self.numbers_frozen {
            return Err(TrackError::Started);
        }
        if self.tracks.len() >= MAX_TRACKS {
            return Err(TrackError::TooMany);
        }
        self.tracks.push(TrackState {
            track_type,
            name: name.to_owned(),
            number: 0,
            config: None,
            pending: None,
        });
        let idx = self.tracks.len() - 1;
        if track_type == TrackType::Video && self.primary.is_none() {
            self.primary = Some(idx);
        }
        Ok(idx)
    }

    /// The track number (TrackNumber / SimpleBlock track) of a track, once the stream started.
    pub fn track_number(&self, track: usize) -> Option<u8> {
        self.tracks.get(track).map(|t| t.number).filter(|&n| n != 0)
    }

    fn freeze_numbers(&mut self) {
        if self.numbers_frozen {
            return;
        }
        let mut n = 0u8;
        for want in [TrackType::Video, TrackType::Audio] {
            for t in self.tracks.iter_mut().filter(|t| t.track_type == want) {
                n += 1;
                t.number = n;
            }
        }
        self.numbers_frozen = true;
    }

    /// The current session header (None before the first fragment started).
    pub fn header(&self) -> Option<&Bytes> {
        self.header.as_ref()
    }

    /// Queues metadata for the next fragment start (`kvs-add-metadata`).
    pub fn add_metadata(
        &mut self,
        name: &str,
        value: &str,
        persistent: bool,
    ) -> Result<(), MetadataError> {
        self.metadata.add(name, value, persistent)
    }

    fn audio_started_allowed(&self, f: &Frame, open: &OpenFragment) -> bool {
        let stall = self.cfg.fragment_duration_ns.max(MIN_VIDEO_STALL_NS);
        self.last_video_dts
            .is_some_and(|v| f.dts.saturating_sub(v) >= stall)
            && f.pts.saturating_sub(open.first_pts) >= self.cfg.fragment_duration_ns
    }

    /// Adds the next frame (in DTS order); what it produces is appended to `out`.
    pub fn push(&mut self, mut f: Frame, out: &mut VecDeque<Piece>) {
        if let Some(cfg) = f.new_config.take() {
            self.tracks[f.track].pending = Some(cfg);
        }
        if f.discontinuity {
            self.discontinuity_pending = true;
        }
        let is_primary = self.primary == Some(f.track);
        if is_primary {
            self.last_video_dts = Some(f.dts);
        }
        let has_config = {
            let t = &self.tracks[f.track];
            t.config.is_some() || t.pending.is_some()
        };
        if !has_config {
            self.stats.dropped_before_key += 1;
            tracing::debug!("track {}: frame before its configuration, dropped", f.track);
            return;
        }
        let Some(open) = &self.open else {
            let may_start = match self.primary {
                Some(p) => p == f.track && f.key,
                None => true,
            };
            if may_start {
                self.start_fragment(f, true, out);
            } else if self.primary.is_some_and(|p| p != f.track) {
                let newest = f.pts;
                self.lead_in.push_back(f);
                while self
                    .lead_in
                    .front()
                    .is_some_and(|a| newest.saturating_sub(a.pts) > MAX_LEAD_IN_NS)
                {
                    self.lead_in.pop_front();
                    self.stats.dropped_before_key += 1;
                    tracing::debug!(
                        "audio more than 2 s before the first video key frame, dropped"
                    );
                }
            } else {
                self.stats.dropped_before_key += 1;
                tracing::debug!(
                    "track {}: frame before the first video key frame, dropped",
                    f.track
                );
            }
            return;
        };

        let age = f.pts.saturating_sub(open.first_pts);
        let header_pending = self.tracks.iter().any(|t| t.pending.is_some());
        let mut boundary = match self.primary {
            Some(p) if p == f.track => {
                f.key
                    && (self.cfg.key_frame_fragmentation
                        || age >= self.cfg.fragment_duration_ns
                        || header_pending
                        || self.discontinuity_pending)
            }
            Some(_) => {
                let stalled = self.audio_started_allowed(&f, open);
                if stalled && !self.video_stall_warned {
                    self.video_stall_warned = true;
                    tracing::warn!(
                        "no video for {} ms; audio frames now start fragments every {} ms",
                        f.dts.saturating_sub(self.last_video_dts.unwrap_or(0)) / 1_000_000,
                        self.cfg.fragment_duration_ns / 1_000_000
                    );
                }
                stalled
            }
            None => {
                age >= self.cfg.fragment_duration_ns || header_pending || self.discontinuity_pending
            }
        };
        let mut key = boundary && (f.key || self.primary.is_none());
        if is_primary {
            self.video_stall_warned = false;
        }
        if !boundary {
            let u = self.timecodes.units(f.pts);
            let span = u.saturating_sub(open.base);
            if span > MAX_RELATIVE {
                boundary = true;
                key = f.key;
                self.stats.forced_splits += 1;
                tracing::warn!(
                    "fragment {} would span more than {MAX_RELATIVE} timecode units ({} ms); starting a new one at a {} frame of track {}. Lower the encoder's key-frame interval (e.g. x264enc/x265enc key-int-max)",
                    self.sequence,
                    span * self.timecodes.scale_ns() / 1_000_000,
                    if f.key { "key" } else { "non-key" },
                    f.track
                );
            }
        }
        if boundary {
            self.close_fragment(false, out);
            self.start_fragment(f, key, out);
        } else {
            self.append(f, out);
        }
    }

    fn build_header(&mut self) {
        self.freeze_numbers();
        let header = self.header_for(u32::MAX);
        self.partial_headers.clear();
        self.header = Some(header);
        self.header_rebuilt = true;
        self.stats.headers += 1;
    }

    /// A session header listing the configured tracks whose index is in `mask`.
    fn header_for(&self, mask: u32) -> Bytes {
        let mut tracks: Vec<HeaderTrack<'_>> = self
            .tracks
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, t)| t)
            .filter_map(|t| {
                t.config.as_deref().map(|config| HeaderTrack {
                    number: t.number,
                    uid: u64::from(t.number),
                    name: &t.name,
                    config,
                })
            })
            .collect();
        tracks.sort_by_key(|t| t.number);
        let info = SegmentInfo {
            segment_uid: random_segment_uid(),
            timecode_scale_ns: self.timecodes.scale_ns(),
        };
        let header = write_header(&info, &tracks);
        tracing::debug!(
            "session header {}: {} tracks, {} bytes",
            self.stats.headers,
            tracks.len(),
            header.len()
        );
        header
    }

    /// Mask of the configured tracks.
    fn configured_mask(&self) -> u32 {
        (0..self.tracks.len())
            .filter(|&i| self.tracks[i].config.is_some())
            .fold(0, |m, i| m | (1 << i))
    }

    /// Mask of the tracks with frames in `counts`.
    fn mask_of(counts: &[u32; MAX_TRACKS]) -> u32 {
        (0..MAX_TRACKS)
            .filter(|&i| counts[i] > 0)
            .fold(0, |m, i| m | (1 << i))
    }

    /// The header for a fragment with frames of the tracks in `mask`: the full one, or one
    /// without the tracks that have no frame in it. Returns it and the mask it lists.
    fn header_for_mask(&mut self, mask: u32) -> (Bytes, u32) {
        let full = self
            .header
            .clone()
            .expect("a header exists once a fragment started");
        let configured = self.configured_mask();
        let mask = mask & configured;
        if !self.cfg.omit_silent_tracks
            || configured.count_ones() < 2
            || mask == 0
            || mask == configured
        {
            return (full, configured);
        }
        if let Some((_, h)) = self.partial_headers.iter().find(|(m, _)| *m == mask) {
            return (h.clone(), mask);
        }
        tracing::info!(
            "a track has no frames in fragment {}: its session header leaves that track out",
            self.sequence
        );
        let h = self.header_for(mask);
        self.partial_headers.push((mask, h.clone()));
        (h, mask)
    }

    fn start_fragment(&mut self, f: Frame, key: bool, out: &mut VecDeque<Piece>) {
        let mut changed = false;
        for t in &mut self.tracks {
            if let Some(p) = t.pending.take() {
                if t.config.as_ref() != Some(&p) {
                    changed = true;
                }
                t.config = Some(p);
            }
        }
        if changed || self.header.is_none() {
            self.build_header();
        }
        self.discontinuity_pending = false;

        let first_units = self.timecodes.units(f.pts);
        let mut base = self
            .lead_in
            .iter()
            .map(|a| self.timecodes.units(a.pts))
            .fold(first_units.min(self.timecodes.units(f.dts)), u64::min);
        if let Some(prev) = self.prev_base_units
            && base <= prev
        {
            self.stats.timecodes_raised += 1;
            tracing::warn!(
                "fragment {}: cluster timecode {base} not above the previous {prev}; raised to {}",
                self.sequence,
                prev + 1
            );
            base = prev + 1;
        }
        if let Some(prev_last) = self.prev_last_units
            && base <= prev_last
        {
            // The service wants every frame of a fragment after the previous fragment's last
            // one (4004). Only a frame in the same unit as it (another track's, a fraction of a
            // unit earlier) moves: it is clamped to the raised timecode.
            if first_units <= prev_last {
                self.stats.timecodes_raised += 1;
                tracing::debug!(
                    "fragment {}: starts in the unit of the previous fragment's last frame; raised by one",
                    self.sequence
                );
            }
            base = prev_last + 1;
        }
        let timecode = self.timecodes.cluster_timecode(base);

        let tags_len = self.metadata.encoded_len();
        let buf = self.head_arena.reserve(tags_len + CLUSTER_START_LEN);
        self.metadata
            .take_for_fragment(|name, value| put_tag_chain(buf, name, value));
        put_cluster_start(buf, timecode);
        let head = self.head_arena.take().freeze();

        let configured = self.configured_mask();
        let wanted = if self.header_rebuilt || self.prev_tracks == 0 {
            configured
        } else {
            self.prev_tracks & configured
        } & !self.ended;
        self.header_rebuilt = false;
        // Room for every block once: no reallocation while held.
        let mut held = Vec::with_capacity(self.prev_frames as usize + 2);
        held.push(head);
        self.open = Some(OpenFragment {
            sequence: self.sequence,
            base,
            timecode,
            max_units: base,
            first_pts: f.pts,
            end_ns: f.pts,
            counts: [0; MAX_TRACKS],
            key,
            released: None,
            wanted,
            live: 0,
            held,
        });
        self.sequence += 1;
        self.append(f, out);
        while let Some(a) = self.lead_in.pop_front() {
            self.append(a, out);
        }
    }

    /// `track` sends again after [`Self::end_track`].
    pub fn resume_track(&mut self, track: usize) {
        self.ended &= !(1 << track);
    }

    /// `track` ended (EOS, pad released): no fragment waits for it any more, the open one
    /// included, until [`Self::resume_track`]. Its frames still queued upstream may follow.
    pub fn end_track(&mut self, track: usize, out: &mut VecDeque<Piece>) {
        self.ended |= 1 << track;
        let Some(open) = self.open.as_mut() else {
            return;
        };
        if open.released.is_some() {
            return;
        }
        open.wanted &= !self.ended;
        let have = Self::mask_of(&open.counts);
        if have & open.wanted == open.wanted {
            self.release(have, out);
        }
    }

    /// Emits the held start of the open fragment with the header for `mask`.
    fn release(&mut self, mask: u32, out: &mut VecDeque<Piece>) {
        let (header, listed) = self.header_for_mask(mask);
        let open = self.open.as_mut().expect("an open fragment");
        open.released = Some(listed);
        let parts = std::mem::take(&mut open.held);
        let header_changed = self.last_header.as_ref() != Some(&header);
        self.last_header = Some(header.clone());
        out.push_back(Piece::Start(FragmentStart {
            sequence: open.sequence,
            timecode: open.timecode,
            start_ns: open.base.saturating_mul(self.timecodes.scale_ns()),
            key: open.key,
            header,
            header_changed,
            parts,
        }));
    }

    fn append(&mut self, mut f: Frame, out: &mut VecDeque<Piece>) {
        let open = self.open.as_mut().expect("append to an open fragment");
        open.live |= 1 << f.track;
        if let Some(listed) = open.released
            && listed & (1 << f.track) == 0
        {
            self.stats.dropped_track_absent += 1;
            tracing::debug!(
                "track {}: not in the header of fragment {}, frame dropped until the next fragment",
                f.track,
                open.sequence
            );
            return;
        }
        let t = &self.tracks[f.track];
        let audio_only = self.primary.is_none();
        let key_flag = f.key && (t.track_type == TrackType::Video || audio_only);
        let u = self.timecodes.units(f.pts);
        let rel = if u < open.base {
            self.stats.frames_clamped += 1;
            0
        } else {
            (u - open.base).min(MAX_RELATIVE)
        };
        let header = simple_block_header(
            t.number,
            rel as i16,
            if key_flag { FLAG_KEY } else { 0 },
            f.block.len() - SIMPLE_BLOCK_HEADER_LEN,
        );
        f.block[..SIMPLE_BLOCK_HEADER_LEN].copy_from_slice(&header);
        let open = self.open.as_mut().expect("append to an open fragment");
        open.max_units = open.max_units.max(u);
        open.end_ns = open.end_ns.max(f.pts.saturating_add(f.duration));
        open.counts[f.track] += 1;
        self.stats.frames += 1;
        let block = f.block.freeze();
        if open.released.is_some() {
            out.push_back(Piece::Block(block));
            return;
        }
        open.held.push(block);
        let have = Self::mask_of(&open.counts);
        if have & open.wanted == open.wanted {
            self.release(have, out);
        } else if f.pts.saturating_sub(open.first_pts) >= MAX_TRACK_HOLD_NS {
            self.stats.hold_timeouts += 1;
            tracing::debug!(
                "fragment {}: a track gave no frame within {} ms of its start; released without it",
                open.sequence,
                MAX_TRACK_HOLD_NS / 1_000_000
            );
            self.release(have, out);
        }
    }

    fn close_fragment(&mut self, end_of_stream: bool, out: &mut VecDeque<Piece>) {
        if self.open.as_ref().is_some_and(|o| o.released.is_none()) {
            let have = Self::mask_of(&self.open.as_ref().expect("open").counts);
            self.release(have, out);
        }
        let Some(open) = self.open.take() else {
            return;
        };
        self.prev_base_units = Some(open.base);
        self.prev_last_units = Some(open.max_units.max(open.base));
        self.prev_tracks = open.live;
        self.prev_frames = open.counts.iter().sum();
        let tail = end_of_stream.then(|| {
            let unsent = self.metadata.unsent_encoded_len();
            let eofr = tag_chain_len(END_OF_FRAGMENT_TAG, "");
            let buf = self.head_arena.reserve(unsent + eofr);
            self.metadata
                .take_unsent(|name, value| put_tag_chain(buf, name, value));
            put_tag_chain(buf, END_OF_FRAGMENT_TAG, "");
            self.head_arena.take().freeze()
        });
        let start_ns = open.base.saturating_mul(self.timecodes.scale_ns());
        let duration_ns = open.end_ns.saturating_sub(start_ns);
        if duration_ns > MAX_SERVICE_FRAGMENT_DURATION_NS {
            self.stats.long_fragments += 1;
            self.warn_long_fragment(open.sequence, duration_ns, &open.counts);
        }
        tracing::trace!(
            "fragment {}: timecode {}, {} ms, {} frames",
            open.sequence,
            open.timecode,
            duration_ns / 1_000_000,
            open.counts.iter().sum::<u32>()
        );
        self.stats.fragments += 1;
        out.push_back(Piece::End(FragmentEnd {
            sequence: open.sequence,
            duration_ns,
            frame_counts: open.counts,
            tail,
            end_of_stream,
        }));
    }

    fn warn_long_fragment(&self, sequence: u64, duration_ns: u64, counts: &[u32; MAX_TRACKS]) {
        let video_frames = self.primary.map_or(0, |p| counts[p]);
        let max_s = MAX_SERVICE_FRAGMENT_DURATION_NS / 1_000_000_000;
        let msg = if !self.cfg.key_frame_fragmentation
            && self.cfg.fragment_duration_ns > MAX_SERVICE_FRAGMENT_DURATION_NS
        {
            format!("set fragment-duration to at most {} ms", max_s * 1000)
        } else if video_frames > 0 {
            let fps = f64::from(video_frames) / (duration_ns as f64 / 1e9);
            format!(
                "the video key-frame interval is too long: set the encoder's key-frame interval (x264enc/x265enc key-int-max, v4l2h264enc extra-controls video_gop_size, vaapih264enc keyframe-period, nvh264enc gop-size) to at most {} frames (~{fps:.0} fps)",
                (fps * max_s as f64).floor() as u64
            )
        } else {
            format!("lower fragment-duration below {max_s} s")
        };
        if self.stats.long_fragments == 1 {
            tracing::warn!(
                "fragment {} lasts {:.1} s, longer than the service's {max_s} s maximum fragment duration (it answers MAX_FRAGMENT_DURATION_REACHED): {msg}",
                sequence,
                duration_ns as f64 / 1e9
            );
        } else {
            tracing::debug!(
                "fragment {} lasts {:.1} s (> {max_s} s): {msg}",
                sequence,
                duration_ns as f64 / 1e9
            );
        }
    }

    /// Closes the open fragment as the last one of the stream (with the end-of-fragment tag and
    /// any metadata not sent yet). The next frame must again be a key frame.
    pub fn finish(&mut self, out: &mut VecDeque<Piece>) {
        self.drop_lead_in();
        self.close_fragment(true, out);
    }

    /// Closes the open fragment without ending the stream (flush, pause); the next fragment
    /// starts at a video key frame.
    pub fn close(&mut self, out: &mut VecDeque<Piece>) {
        self.drop_lead_in();
        self.close_fragment(false, out);
    }

    fn drop_lead_in(&mut self) {
        if !self.lead_in.is_empty() {
            tracing::debug!(
                "{} audio frames dropped: no video key frame came",
                self.lead_in.len()
            );
            self.stats.dropped_before_key += self.lead_in.len() as u64;
            self.lead_in.clear();
        }
    }

    /// Whether the stream has started (its first header was built).
    pub fn started(&self) -> bool {
        self.header.is_some()
    }

    /// Sets the configuration of a track before the stream started, so a track whose caps are
    /// known is in the first header even if its first frame comes later.
    pub fn set_initial_config(
        &mut self,
        track: usize,
        cfg: Arc<TrackConfig>,
    ) -> Result<(), TrackError> {
        if self.started() {
            return Err(TrackError::Started);
        }
        self.tracks
            .get_mut(track)
            .ok_or(TrackError::Unknown(track))?
            .pending = Some(cfg);
        Ok(())
    }

    pub fn has_open_fragment(&self) -> bool {
        self.open.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::codec::{AudioParams, VideoParams};

    const MS: u64 = 1_000_000;
    const T0: u64 = 1_700_000_000_000 * MS;

    fn video() -> Arc<TrackConfig> {
        Arc::new(TrackConfig {
            track_type: TrackType::Video,
            codec_id: "V_MPEG4/ISO/AVC".into(),
            codec_private: Bytes::from_static(&[1, 66, 0, 30, 0xff, 0xe0, 0]),
            video: Some(VideoParams {
                width: 320,
                height: 240,
            }),
            audio: None,
        })
    }

    fn audio() -> Arc<TrackConfig> {
        Arc::new(TrackConfig {
            track_type: TrackType::Audio,
            codec_id: "A_AAC".into(),
            codec_private: Bytes::from_static(&[0x12, 0x10]),
            video: None,
            audio: Some(AudioParams {
                sampling_frequency: 44100.0,
                channels: 2,
                bit_depth: 0,
            }),
        })
    }

    struct Feeder {
        fr: Fragmenter,
        arena: Arena,
        out: VecDeque<Piece>,
        configured: Vec<bool>,
    }

    impl Feeder {
        fn frags(&mut self) -> Vec<Fragment> {
            let mut asm = FragmentAssembler::default();
            self.out.drain(..).filter_map(|p| asm.push(p)).collect()
        }

        fn new(cfg: FragmenterConfig, tracks: &[TrackType]) -> Self {
            let mut fr = Fragmenter::new(cfg);
            for t in tracks {
                fr.add_track(*t, "t").unwrap();
            }
            Self {
                fr,
                arena: Arena::new(),
                out: VecDeque::new(),
                configured: vec![false; tracks.len()],
            }
        }

        fn push(&mut self, track: usize, pts: u64, dts: u64, key: bool, payload: &[u8]) {
            let cfg = (!self.configured[track]).then(|| {
                self.configured[track] = true;
                if track == 0 && self.fr.primary == Some(0) {
                    video()
                } else {
                    audio()
                }
            });
            let block = Frame::copy_block(&mut self.arena, payload);
            self.fr.push(
                Frame {
                    track,
                    pts,
                    dts,
                    duration: 40 * MS,
                    key,
                    discontinuity: false,
                    new_config: cfg,
                    block,
                },
                &mut self.out,
            );
        }
    }

    /// (relative timecode, flags, payload) of each block of a fragment.
    fn blocks(f: &Fragment) -> Vec<(u8, i16, u8, Vec<u8>)> {
        f.parts[1..]
            .iter()
            .filter(|p| p[0] == 0xA3)
            .map(|p| {
                (
                    p[9] & 0x7F,
                    i16::from_be_bytes([p[10], p[11]]),
                    p[12],
                    p[13..].to_vec(),
                )
            })
            .collect()
    }

    fn cluster_timecode(f: &Fragment) -> u64 {
        let head = &f.parts[0];
        let at = head.len() - CLUSTER_START_LEN;
        assert_eq!(&head[at..at + 5], &[0x1F, 0x43, 0xB6, 0x75, 0xFF]);
        u64::from_be_bytes(head[at + 7..at + 15].try_into().unwrap())
    }

    /// Audio 0.3 ms before a key frame, in the same millisecond: it ends the previous fragment,
    /// and the next fragment moves up one unit so that it starts after it (the service's 4004).
    #[test]
    fn a_fragment_starts_after_the_previous_fragments_last_frame() {
        let mut f = Feeder::new(
            FragmenterConfig::default(),
            &[TrackType::Video, TrackType::Audio],
        );
        f.fr.set_initial_config(1, audio()).unwrap();
        f.configured[1] = true;
        f.push(0, T0, T0, true, b"k1");
        f.push(1, T0 + 10 * MS, T0 + 10 * MS, true, b"a1");
        let key2 = T0 + 1000 * MS + 700_000;
        f.push(1, key2 - 300_000, key2 - 300_000, true, b"a2");
        f.push(0, key2, key2, true, b"k2");
        f.push(1, key2 + 40 * MS, key2 + 40 * MS, true, b"a3");
        f.fr.finish(&mut f.out);
        let frags: Vec<Fragment> = f.frags();
        assert_eq!(frags.len(), 2);
        let last_of_first = frags[0].timecode + blocks(&frags[0]).last().unwrap().1 as u64;
        assert_eq!(
            last_of_first,
            T0 / MS + 1000,
            "a2, in the key frame's millisecond"
        );
        assert_eq!(frags[1].timecode, T0 / MS + 1001, "raised by one unit");
        let b = blocks(&frags[1]);
        assert_eq!((b[0].1, &b[0].3[..]), (0, &b"k2"[..]));
        assert_eq!(
            (b[1].1, &b[1].3[..]),
            (39, &b"a3"[..]),
            "others keep their time"
        );
        assert_eq!(f.fr.stats().timecodes_raised, 1);
    }

    fn rel_of(block: &Bytes) -> i16 {
        i16::from_be_bytes([block[10], block[11]])
    }

    #[test]
    fn each_frame_is_emitted_as_it_is_packed() {
        let mut f = Feeder::new(FragmenterConfig::default(), &[TrackType::Video]);
        f.push(0, T0, T0, true, b"k1");
        match f.out.pop_front() {
            Some(Piece::Start(s)) => {
                assert_eq!((s.sequence, s.timecode), (0, T0 / MS));
                assert!(s.header_changed && s.key);
                assert_eq!(s.parts.len(), 2, "head + the key frame");
                assert_eq!(&s.parts[1][13..], b"k1");
            }
            other => panic!("{other:?}"),
        }
        f.push(0, T0 + 33 * MS, T0 + 33 * MS, false, b"p1");
        match f.out.pop_front() {
            Some(Piece::Block(b)) => assert_eq!((rel_of(&b), &b[13..]), (33, &b"p1"[..])),
            other => panic!("{other:?}"),
        }
        assert!(f.out.is_empty());
        f.push(0, T0 + 66 * MS, T0 + 66 * MS, true, b"k2");
        match (f.out.pop_front(), f.out.pop_front()) {
            (Some(Piece::End(e)), Some(Piece::Start(s))) => {
                assert_eq!(
                    (e.sequence, e.frame_counts[0], e.tail.is_none()),
                    (0, 2, true)
                );
                assert_eq!((s.sequence, s.timecode), (1, T0 / MS + 66));
                assert!(!s.header_changed);
            }
            other => panic!("{other:?}"),
        }
        f.fr.close(&mut f.out);
        assert!(matches!(f.out.pop_front(), Some(Piece::End(e)) if !e.end_of_stream));
        // After a close (pause), the next fragment starts at a key frame.
        f.push(0, T0 + 99 * MS, T0 + 99 * MS, false, b"p2");
        assert!(f.out.is_empty());
        assert_eq!(f.fr.stats().dropped_before_key, 1);
        f.push(0, T0 + 132 * MS, T0 + 132 * MS, true, b"k3");
        assert!(matches!(f.out.pop_front(), Some(Piece::Start(s)) if s.sequence == 2));
    }

    fn av_feeder() -> Feeder {
        let mut f = Feeder::new(
            FragmenterConfig::default(),
            &[TrackType::Video, TrackType::Audio],
        );
        f.fr.set_initial_config(0, video()).unwrap();
        f.fr.set_initial_config(1, audio()).unwrap();
        f.configured = vec![true, true];
        f
    }

    #[test]
    fn a_fragment_is_held_until_each_track_gave_a_frame() {
        let mut f = av_feeder();
        f.push(0, T0, T0, true, b"k1");
        f.push(0, T0 + 33 * MS, T0 + 33 * MS, false, b"p1");
        assert!(f.out.is_empty(), "held for the audio track");
        f.push(1, T0 + 40 * MS, T0 + 40 * MS, false, b"a1");
        match f.out.pop_front() {
            Some(Piece::Start(s)) => {
                assert_eq!(s.parts.len(), 4);
                assert!(s.header.windows(5).any(|w| w == b"A_AAC"), "full header");
            }
            other => panic!("{other:?}"),
        }
        f.push(0, T0 + 66 * MS, T0 + 66 * MS, false, b"p2");
        assert!(matches!(f.out.pop_front(), Some(Piece::Block(_))));
        assert_eq!(f.fr.stats().hold_timeouts, 0);
    }

    #[test]
    fn an_ended_track_is_not_waited_for() {
        let mut f = av_feeder();
        f.push(0, T0, T0, true, b"k");
        f.push(0, T0 + 40 * MS, T0 + 40 * MS, false, b"d");
        assert!(f.out.is_empty(), "held for the audio track");
        f.fr.end_track(1, &mut f.out);
        let Some(Piece::Start(s)) = f.out.pop_front() else {
            panic!("released at once: {:?}", f.out.len())
        };
        assert!(!s.header.windows(5).any(|w| w == b"A_AAC"));
        assert_eq!(f.fr.stats().hold_timeouts, 0);
        // Nor are the next fragments, even when audio frames sent before the end arrive late.
        f.push(1, T0 + 50 * MS, T0 + 50 * MS, false, b"a");
        f.out.clear();
        f.push(0, T0 + 80 * MS, T0 + 80 * MS, true, b"k2");
        assert!(f.out.iter().any(|p| matches!(p, Piece::Start(_))));
    }

    #[test]
    fn a_silent_track_is_left_out_after_the_hold_and_waited_for_again_once_it_is_back() {
        let mut f = av_feeder();
        for i in 0..16u64 {
            f.push(0, T0 + i * 40 * MS, T0 + i * 40 * MS, i == 0, &[i as u8]);
        }
        // Released once 500 ms of video passed without audio, with a video-only header.
        let start = f
            .out
            .iter()
            .position(|p| matches!(p, Piece::Start(_)))
            .unwrap();
        let Piece::Start(s) = &f.out[start] else {
            unreachable!()
        };
        assert_eq!(
            s.parts.len(),
            1 + 14,
            "held frames 0..=13 (13 × 40 ms ≥ 500 ms)"
        );
        assert!(!s.header.windows(5).any(|w| w == b"A_AAC"));
        assert_eq!(f.fr.stats().hold_timeouts, 1);
        // Audio comes back: not in this fragment's header, dropped until the next fragment.
        f.push(1, T0 + 650 * MS, T0 + 650 * MS, false, b"a");
        assert_eq!(f.fr.stats().dropped_track_absent, 1);
        // The next fragment waits for it again and gets the full header.
        f.out.clear();
        f.push(0, T0 + 680 * MS, T0 + 680 * MS, true, b"k2");
        assert!(matches!(f.out.pop_front(), Some(Piece::End(_))));
        assert!(f.out.is_empty(), "held for the audio track");
        f.push(1, T0 + 690 * MS, T0 + 690 * MS, false, b"a2");
        match f.out.pop_front() {
            Some(Piece::Start(s)) => assert!(s.header.windows(5).any(|w| w == b"A_AAC")),
            other => panic!("{other:?}"),
        }
        f.fr.finish(&mut f.out);
        match f.out.pop_back() {
            Some(Piece::End(e)) => {
                assert_eq!(e.frame_counts, [1, 1, 0]);
                assert!(e.end_of_stream && e.tail.is_some());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_fragment_per_key_frame_with_exact_blocks() {
        let mut f = Feeder::new(FragmenterConfig::default(), &[TrackType::Video]);
        f.push(0, T0 - 40 * MS, T0 - 40 * MS, false, b"before-key");
        for i in 0..6u64 {
            f.push(
                0,
                T0 + i * 40 * MS,
                T0 + i * 40 * MS,
                i % 3 == 0,
                &[i as u8; 5],
            );
        }
        f.fr.finish(&mut f.out);
        let frags: Vec<Fragment> = f.frags();
        assert_eq!(frags.len(), 2);
        assert_eq!(f.fr.stats().dropped_before_key, 1);
        let (a, b) = (&frags[0], &frags[1]);
        assert_eq!(a.timecode, T0 / MS);
        assert_eq!(cluster_timecode(a), T0 / MS);
        assert_eq!(b.timecode, T0 / MS + 120);
        assert!(a.header_changed && !b.header_changed);
        assert!(a.key && b.key);
        assert!(!a.end_of_stream && b.end_of_stream);
        assert_eq!(a.frame_counts, [3, 0, 0]);
        assert_eq!(
            blocks(a),
            vec![
                (1, 0, 0x80, vec![0; 5]),
                (1, 40, 0, vec![1; 5]),
                (1, 80, 0, vec![2; 5])
            ]
        );
        assert_eq!(a.len, a.to_bytes().len());
        // The last fragment ends with the EoFR tag.
        let tail = b.parts.last().unwrap();
        assert_eq!(&tail[..4], &[0x12, 0x54, 0xC3, 0x67]);
        assert!(
            tail.windows(32)
                .any(|w| w == END_OF_FRAGMENT_TAG.as_bytes())
        );
        assert_eq!(a.header, b.header);
        assert_eq!(a.duration_ns, 120 * MS);
    }

    #[test]
    fn b_frames_before_the_key_frame_get_non_negative_timecodes() {
        let mut f = Feeder::new(FragmenterConfig::default(), &[TrackType::Video]);
        // Decode order I P B B with PTS 80, 200, 120, 160 … and an open-GOP leading picture
        // shown before the I frame of the second GOP.
        let frames = [
            (80, 0, true),
            (200, 40, false),
            (120, 80, false),
            (160, 120, false),
            (360, 160, true),
            (320, 200, false),
        ];
        for (i, (p, d, k)) in frames.into_iter().enumerate() {
            f.push(0, T0 + p * MS, T0 + d * MS, k, &[i as u8]);
        }
        f.fr.finish(&mut f.out);
        let frags: Vec<Fragment> = f.frags();
        // The cluster starts at the key frame's DTS: every later frame is presented after it.
        assert_eq!(frags[0].timecode, T0 / MS);
        let rel: Vec<i16> = blocks(&frags[0]).iter().map(|b| b.1).collect();
        assert_eq!(rel, vec![80, 200, 120, 160]);
        // The second cluster starts after the first fragment's last frame (200), below its
        // key frame's DTS (160) would be 4004; the leading picture (320) stays after it.
        assert_eq!(frags[1].timecode, T0 / MS + 201);
        let rel: Vec<i16> = blocks(&frags[1]).iter().map(|b| b.1).collect();
        assert_eq!(rel, vec![159, 119]);
        assert_eq!(f.fr.stats().frames_clamped, 0);
    }

    #[test]
    fn long_gop_is_split_before_the_i16_limit() {
        let mut f = Feeder::new(FragmenterConfig::default(), &[TrackType::Video]);
        for i in 0..40u64 {
            f.push(0, T0 + i * 1000 * MS, T0 + i * 1000 * MS, i == 0, &[1]);
        }
        f.fr.finish(&mut f.out);
        let frags: Vec<Fragment> = f.frags();
        assert_eq!(frags.len(), 2);
        assert_eq!(frags[0].frames(), 33);
        assert!(frags[0].key && !frags[1].key);
        assert_eq!(blocks(&frags[0]).last().unwrap().1, 32_000);
        let st = f.fr.stats();
        assert_eq!((st.forced_splits, st.long_fragments), (1, 1));
    }

    #[test]
    fn duration_based_fragmentation_and_audio_only() {
        let cfg = FragmenterConfig {
            key_frame_fragmentation: false,
            fragment_duration_ns: 1000 * MS,
            ..Default::default()
        };
        let mut f = Feeder::new(cfg, &[TrackType::Video]);
        for i in 0..50u64 {
            // key frame every 10 frames (400 ms)
            f.push(0, T0 + i * 40 * MS, T0 + i * 40 * MS, i % 10 == 0, &[1]);
        }
        f.fr.finish(&mut f.out);
        let counts: Vec<u32> = f.frags().iter().map(|x| x.frames()).collect();
        // fragments start at the first key frame ≥ 1 s after the start: frames 0, 30.
        assert_eq!(counts, vec![30, 20]);

        let mut f = Feeder::new(cfg, &[TrackType::Audio]);
        for i in 0..100u64 {
            f.push(0, T0 + i * 23 * MS, T0 + i * 23 * MS, true, &[2]);
        }
        f.fr.finish(&mut f.out);
        let frags: Vec<Fragment> = f.frags();
        assert_eq!(frags.iter().map(|x| x.frames()).sum::<u32>(), 100);
        assert_eq!(frags[0].frames(), 44); // 44 × 23 ms ≥ 1 s
        assert!(blocks(&frags[0]).iter().all(|b| b.2 == 0x80));
    }

    #[test]
    fn av_track_numbers_flags_and_start_at_video_key() {
        let mut f = Feeder::new(
            FragmenterConfig::default(),
            &[TrackType::Audio, TrackType::Video],
        );
        // Track 0 is audio, track 1 video: video gets number 1, audio 2.
        f.configured = vec![false, false];
        f.fr.primary = Some(1);
        let push_a = |f: &mut Feeder, ms: u64| {
            let cfg = (!f.configured[0]).then(|| {
                f.configured[0] = true;
                audio()
            });
            let block = Frame::copy_block(&mut f.arena, b"aa");
            f.fr.push(
                Frame {
                    track: 0,
                    pts: T0 + ms * MS,
                    dts: T0 + ms * MS,
                    duration: 0,
                    key: true,
                    discontinuity: false,
                    new_config: cfg,
                    block,
                },
                &mut f.out,
            );
        };
        let push_v = |f: &mut Feeder, ms: u64, key: bool| {
            let cfg = (!f.configured[1]).then(|| {
                f.configured[1] = true;
                video()
            });
            let block = Frame::copy_block(&mut f.arena, b"vv");
            f.fr.push(
                Frame {
                    track: 1,
                    pts: T0 + ms * MS,
                    dts: T0 + ms * MS,
                    duration: 0,
                    key,
                    discontinuity: false,
                    new_config: cfg,
                    block,
                },
                &mut f.out,
            );
        };
        push_a(&mut f, 0); // before the first video key frame: kept for the first fragment
        push_v(&mut f, 10, true);
        push_a(&mut f, 20);
        push_v(&mut f, 50, false);
        push_a(&mut f, 43);
        f.fr.finish(&mut f.out);
        let frag = f.frags().remove(0);
        assert_eq!(f.fr.track_number(1), Some(1));
        assert_eq!(f.fr.track_number(0), Some(2));
        let b = blocks(&frag);
        assert_eq!(
            b.iter().map(|x| (x.0, x.1, x.2)).collect::<Vec<_>>(),
            vec![(1, 10, 0x80), (2, 0, 0), (2, 20, 0), (1, 50, 0), (2, 43, 0)]
        );
        assert_eq!(frag.frame_counts, [3, 2, 0]);
        assert_eq!(f.fr.stats().dropped_before_key, 0);
        // Header: video entry first.
        let h = &frag.header;
        let v_at = h.windows(15).position(|w| w == b"V_MPEG4/ISO/AVC").unwrap();
        let a_at = h.windows(5).position(|w| w == b"A_AAC").unwrap();
        assert!(v_at < a_at);
    }

    #[test]
    fn metadata_tags_precede_the_cluster() {
        let mut f = Feeder::new(FragmenterConfig::default(), &[TrackType::Video]);
        f.fr.add_metadata("camera", "front", true).unwrap();
        f.fr.add_metadata("event", "motion", false).unwrap();
        f.push(0, T0, T0, true, &[1]);
        f.fr.add_metadata("late", "x", false).unwrap();
        f.push(0, T0 + 40 * MS, T0 + 40 * MS, true, &[2]);
        f.fr.add_metadata("unsent", "y", false).unwrap();
        f.fr.finish(&mut f.out);
        let frags: Vec<Fragment> = f.frags();
        let names = |b: &[u8]| -> Vec<String> {
            let mut v = Vec::new();
            let mut i = 0;
            while let Some(p) = b[i..].windows(2).position(|w| w == [0x45, 0xA3]) {
                let at = i + p + 2;
                let len = u64::from_be_bytes(b[at..at + 8].try_into().unwrap()) & !(1 << 56);
                v.push(String::from_utf8(b[at + 8..at + 8 + len as usize].to_vec()).unwrap());
                i = at + 8 + len as usize;
            }
            v
        };
        assert_eq!(names(&frags[0].parts[0]), vec!["camera", "event"]);
        assert_eq!(names(&frags[1].parts[0]), vec!["camera", "late"]);
        assert_eq!(
            names(frags[1].parts.last().unwrap()),
            vec!["unsent", END_OF_FRAGMENT_TAG]
        );
    }

    #[test]
    fn config_change_starts_a_new_header_at_the_next_key_frame() {
        let mut f = Feeder::new(FragmenterConfig::default(), &[TrackType::Video]);
        f.push(0, T0, T0, true, &[1]);
        let mut bigger = (*video()).clone();
        bigger.video = Some(VideoParams {
            width: 640,
            height: 480,
        });
        let block = Frame::copy_block(&mut f.arena, &[2]);
        f.fr.push(
            Frame {
                track: 0,
                pts: T0 + 40 * MS,
                dts: T0 + 40 * MS,
                duration: 0,
                key: true,
                discontinuity: false,
                new_config: Some(Arc::new(bigger)),
                block,
            },
            &mut f.out,
        );
        f.fr.finish(&mut f.out);
        let frags: Vec<Fragment> = f.frags();
        assert!(frags[1].header_changed);
        assert_ne!(frags[0].header, frags[1].header);
        assert!(frags[1].header.windows(3).any(|w| w == [0xB0, 0x82, 0x02]));
        assert_eq!(f.fr.stats().headers, 2);
    }

    #[test]
    fn arena_shares_chunks() {
        let mut arena = Arena::new();
        let blocks: Vec<BytesMut> = (0..100)
            .map(|_| Frame::copy_block(&mut arena, &[7; 1000]))
            .collect();
        assert_eq!(arena.chunks(), 1);
        assert!(
            blocks
                .iter()
                .all(|b| b.len() == 1013 && b[13..] == [7; 1000])
        );
        let _big = Frame::copy_block(&mut arena, &vec![0; 400_000]);
        assert_eq!(arena.chunks(), 2);
    }
}
