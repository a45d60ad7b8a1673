//! The media core's front door: one [`StreamMuxer`] per KVS stream turns what arrives on the
//! element's pads (caps-level track inputs, buffers with PTS/DTS and a key flag, metadata, EOS)
//! into KVS fragments and the session header. No GStreamer types.
//!
//! Per buffer: the [`crate::media::timeline`] stamps it; its payload is copied once into the fragment
//! arena (converting Annex-B to length-prefixed NAL units on the way when needed, see
//! [`crate::media::codec::annexb`]); the interleaver ([`crate::media::interleave`])
//! orders frames of all tracks; the fragmenter ([`crate::media::fragmenter`]) cuts them into fragments, emitted piece by piece as frames are packed;
//! the caller takes the pieces with [`StreamMuxer::pop_piece`] (or whole fragments with
//! [`StreamMuxer::pop_fragment`]).
//!
//! Nothing here is fatal: a frame that cannot be used is dropped, counted in [`MuxStats`] and
//! logged (an `Err` from [`StreamMuxer::push`] means "this frame was dropped, post a warning").
//!
//! ```text
//! let mut mux = StreamMuxer::new(MuxerConfig::default(), Box::new(SystemClock));
//! let v = mux.add_track(TrackType::Video, "kinesis_video")?;      // request pads, before data
//! mux.set_input(v, TrackInput::Configured(TrackConfig::h264(codec_data, w, h)?))?; // caps
//! mux.push(v, FrameIn { pts, dts, duration, key, data })?;       // each buffer
//! while let Some(p) = mux.pop_piece() { upload(p) }              // after each call
//! mux.end_of_stream(v);                                           // EOS per pad
//! ```

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::Arc;

use bytes::{BufMut, Bytes};

use crate::media::codec::annexb::{AnnexBConverter, max_converted_len};
use crate::media::codec::{CodecError, TrackConfig, TrackType, VideoCodec};
use crate::media::fragment_metadata::MetadataError;
use crate::media::fragmenter::{
    Arena, Fragment, FragmentAssembler, Fragmenter, FragmenterConfig, FragmenterStats, Frame,
    Piece, TrackError,
};
use crate::media::interleave::{
    DEFAULT_MAX_QUEUED_BYTES, InterleaveStats, Interleaver, Slot, Wait,
};
use crate::media::mkv::cluster::SIMPLE_BLOCK_HEADER_LEN;
use crate::media::timeline::{RawTimes, Timeline, TimelineConfig, TimelineStats, WallClock};

/// Logs go to the media debug category (`kvssink-media`), like the other fragment modules.
const LOG_TARGET: &str = "gstkvssink::media";

/// Live input: no buffer on any pad for this long (or four usual gaps between buffers, if
/// longer) is a pause — a closed valve, a motion-triggered camera at rest — and the open fragment
/// is closed with the end-of-fragment tag, so the service persists it now rather than when the
/// source resumes; the next fragment starts at a key frame. A stall of a live source this long
/// costs the frames until its next key frame.
pub const PAUSE_AFTER_NS: u64 = 700_000_000;

/// Everything the element's properties decide for the media path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MuxerConfig {
    pub timeline: TimelineConfig,
    pub fragmenter: FragmenterConfig,
    /// How long a silent track is waited for ([`crate::media::interleave`]); the element sets it from
    /// the pipeline's liveness and latency ([`StreamMuxer::set_wait`]).
    pub wait: Wait,
    /// Memory bound of the interleaver's queues.
    pub max_queued_bytes: usize,
}

impl Default for MuxerConfig {
    fn default() -> Self {
        Self {
            timeline: TimelineConfig::default(),
            fragmenter: FragmenterConfig::default(),
            wait: Wait::UntilData,
            max_queued_bytes: DEFAULT_MAX_QUEUED_BYTES,
        }
    }
}

/// What the caps of a pad say about its stream.
#[derive(Debug, Clone, PartialEq)]
pub enum TrackInput {
    /// CodecPrivate known from the caps (H.264 avc, H.265 hvc1/hev1, AAC, G.711): payloads are
    /// copied verbatim.
    Configured(TrackConfig),
    /// Annex-B H.264/H.265 (`stream-format=byte-stream`): payloads are converted and the
    /// configuration is built from in-band parameter sets.
    AnnexB {
        codec: VideoCodec,
        width: Option<u32>,
        height: Option<u32>,
    },
}

/// One buffer.
#[derive(Debug, Clone, Copy)]
pub struct FrameIn<'a> {
    /// ns; running time (or raw buffer time with `disable-buffer-clipping`).
    pub pts: Option<u64>,
    pub dts: Option<u64>,
    pub duration: Option<u64>,
    /// Not `DELTA_UNIT`.
    pub key: bool,
    pub data: &'a [u8],
}

/// Why a call failed. For [`StreamMuxer::push`] every error means that frame was dropped;
/// nothing else is affected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MuxError {
    #[error("no track {0}")]
    UnknownTrack(usize),
    #[error(transparent)]
    Track(#[from] TrackError),
    #[error("track {0} got a buffer before its caps")]
    NoCaps(usize),
    #[error("track {track}: {source}")]
    Codec { track: usize, source: CodecError },
    #[error("track {0}: caps of a video codec on an audio track or vice versa")]
    WrongKind(usize),
    #[error("track {0}: an empty buffer (no frame data)")]
    Empty(usize),
    #[error(
        "track {track}: a frame of {bytes} bytes is larger than the service's maximum fragment size ({MAX_FRAME_BYTES} bytes, MAX_FRAGMENT_SIZE_REACHED); check the encoder's bitrate settings"
    )]
    TooLarge { track: usize, bytes: usize },
}

/// No fragment may exceed this (the service's limit, ErrorId 4001), so no frame may either.
pub const MAX_FRAME_BYTES: usize = 50 * 1024 * 1024;

/// Counters of the whole media path (what was dropped and what was repaired).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MuxStats {
    pub frames_in: u64,
    /// Frames that could not be converted (not Annex-B, …).
    pub dropped_invalid: u64,
    /// Annex-B frames before the first SPS/PPS(/VPS).
    pub dropped_no_config: u64,
    /// Frames too late to be placed in order (see [`crate::media::interleave`]).
    pub dropped_late: u64,
    /// Video frames after a dropped one, until the next key frame.
    pub dropped_until_key: u64,
    /// Frames queued in the interleaver when it was flushed.
    pub dropped_flush: u64,
    pub timeline: TimelineStats,
    pub interleave: InterleaveStats,
    pub fragmenter: FragmenterStats,
    pub arena_chunks: u64,
}

impl MuxStats {
    /// Every frame dropped, per reason (what a user reads in the warning).
    pub fn drops(&self) -> [(&'static str, u64); 7] {
        [
            ("not usable (invalid data or no caps)", self.dropped_invalid),
            (
                "before the first SPS/PPS of a byte-stream",
                self.dropped_no_config,
            ),
            (
                "older than frames already sent (a track was silent past the live wait bound)",
                self.dropped_late,
            ),
            (
                "after a dropped video frame, until the next key frame",
                self.dropped_until_key,
            ),
            ("queued when a flush came", self.dropped_flush),
            (
                "audio before the first video key frame",
                self.fragmenter.dropped_before_key,
            ),
            (
                "of a track left out of a fragment that could not wait for it (it came back mid-fragment)",
                self.fragmenter.dropped_track_absent,
            ),
        ]
    }

    /// Every frame dropped for any reason.
    pub fn dropped(&self) -> u64 {
        self.drops().iter().map(|(_, n)| n).sum()
    }
}

#[derive(Debug)]
enum Input {
    PassThrough,
    AnnexB(AnnexBConverter),
}

#[derive(Debug)]
struct MuxTrack {
    kind: TrackType,
    input: Option<Input>,
    /// Configuration to attach to the next frame (it takes effect in order).
    config_to_send: Option<Arc<TrackConfig>>,
    last_config: Option<Arc<TrackConfig>>,
    needs_key: bool,
    eos: bool,
    late_warned: bool,
    /// Frames of this track dropped for any reason (its share of [`MuxStats::dropped`]).
    dropped: u64,
    /// Video: the PTS of the last key frame. Frames are interleaved by
    /// `max(DTS, this)`, so that a key frame whose PTS is later than its DTS (B-frames) leaves
    /// only after the other tracks' frames that are presented before it: those belong to the
    /// fragment it closes, and a fragment never holds a frame presented before the previous
    /// fragment's last one.
    order_floor: u64,
}

/// One KVS stream's media path. See the module docs for the call order.
pub struct StreamMuxer {
    timeline: Timeline,
    interleaver: Interleaver<Frame>,
    fragmenter: Fragmenter,
    arena: Arena,
    tracks: Vec<MuxTrack>,
    out: VecDeque<Piece>,
    assembler: FragmentAssembler,
    /// Wall clock (ns) when the last buffer arrived, and the usual gap between buffers.
    last_arrival_ns: Option<u64>,
    usual_gap_ns: u64,
    /// Off while the element itself is paused (its sources then stop, and resume the same
    /// stream: that is not a pause of the source).
    pause_detection: bool,
    stats: MuxStats,
    /// The fragmenter's drops already given to a track (see [`Self::settle_fragmenter_drops`]).
    fragmenter_drops_seen: u64,
}

impl std::fmt::Debug for StreamMuxer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamMuxer")
            .field("tracks", &self.tracks)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl StreamMuxer {
    pub fn new(cfg: MuxerConfig, clock: Box<dyn WallClock>) -> Self {
        let mut fragmenter_cfg = cfg.fragmenter;
        let mut timeline_cfg = cfg.timeline;
        timeline_cfg.min_dts_step_ns = fragmenter_cfg.timecode_scale_ns;
        if timeline_cfg.offline && !fragmenter_cfg.absolute_fragment_times {
            tracing::info!(
                target: LOG_TARGET,
                "offline streaming: using absolute fragment times, as the reference");
            fragmenter_cfg.absolute_fragment_times = true;
        }
        Self {
            timeline: Timeline::new(timeline_cfg, clock),
            interleaver: Interleaver::new(cfg.wait, cfg.max_queued_bytes),
            fragmenter: Fragmenter::new(fragmenter_cfg),
            arena: Arena::new(),
            tracks: Vec::new(),
            out: VecDeque::with_capacity(16),
            assembler: FragmentAssembler::default(),
            last_arrival_ns: None,
            usual_gap_ns: 0,
            pause_detection: true,
            stats: MuxStats::default(),
            fragmenter_drops_seen: 0,
        }
    }

    /// Adds a track (one per pad, before the first buffer). The returned index is used in every
    /// other call. Track numbers in the file: video first (1), then audio (2).
    pub fn add_track(&mut self, kind: TrackType, name: &str) -> Result<usize, MuxError> {
        let idx = self.fragmenter.add_track(kind, name)?;
        let il = self.interleaver.add_track();
        debug_assert_eq!(idx, il);
        self.tracks.push(MuxTrack {
            kind,
            input: None,
            config_to_send: None,
            last_config: None,
            needs_key: false,
            eos: false,
            late_warned: false,
            dropped: 0,
            order_floor: 0,
        });
        Ok(idx)
    }

    /// Caps: what the track's buffers are. May be called again (caps change): a changed
    /// configuration becomes a new session header at the next key frame.
    pub fn set_input(&mut self, track: usize, input: TrackInput) -> Result<(), MuxError> {
        let t = self
            .tracks
            .get_mut(track)
            .ok_or(MuxError::UnknownTrack(track))?;
        match input {
            TrackInput::Configured(cfg) => {
                if cfg.track_type != t.kind {
                    return Err(MuxError::WrongKind(track));
                }
                t.input = Some(Input::PassThrough);
                if t.last_config.as_deref() != Some(&cfg) {
                    tracing::debug!(
                    target: LOG_TARGET,
                    "track {track}: configuration {} ({} bytes CodecPrivate)",
                            cfg.codec_id,
                            cfg.codec_private.len()
                        );
                    let cfg = Arc::new(cfg);
                    t.last_config = Some(cfg.clone());
                    if self.fragmenter.started() {
                        // In order with the frames: it takes effect with the next frame.
                        t.config_to_send = Some(cfg);
                    } else {
                        self.fragmenter.set_initial_config(track, cfg)?;
                    }
                }
            }
            TrackInput::AnnexB {
                codec,
                width,
                height,
            } => {
                if t.kind != TrackType::Video {
                    return Err(MuxError::WrongKind(track));
                }
                let keep = matches!(&t.input, Some(Input::AnnexB(c)) if c.codec() == codec);
                if !keep {
                    t.input = Some(Input::AnnexB(AnnexBConverter::new(codec, width, height)));
                    t.last_config = None;
                }
            }
        }
        Ok(())
    }

    /// One buffer of `track`. What it produced is available from [`Self::pop_piece`]
    /// afterwards.
    pub fn push(&mut self, track: usize, frame: FrameIn<'_>) -> Result<(), MuxError> {
        self.note_arrival();
        let t = self
            .tracks
            .get_mut(track)
            .ok_or(MuxError::UnknownTrack(track))?;
        self.stats.frames_in += 1;
        let Some(input) = t.input.as_mut() else {
            self.stats.dropped_invalid += 1;
            t.dropped += 1;
            return Err(MuxError::NoCaps(track));
        };
        if frame.data.is_empty() {
            self.stats.dropped_invalid += 1;
            t.dropped += 1;
            return Err(MuxError::Empty(track));
        }
        if frame.data.len() > MAX_FRAME_BYTES {
            self.stats.dropped_invalid += 1;
            t.dropped += 1;
            // Later frames of the GOP refer to it.
            t.needs_key = t.kind == TrackType::Video;
            return Err(MuxError::TooLarge {
                track,
                bytes: frame.data.len(),
            });
        }
        let stamped = self.timeline.stamp(
            track,
            RawTimes {
                pts: frame.pts,
                dts: frame.dts,
                duration: frame.duration,
            },
        );
        let (block, key) = match input {
            Input::PassThrough => (Frame::copy_block(&mut self.arena, frame.data), frame.key),
            Input::AnnexB(conv) => {
                let buf = self
                    .arena
                    .reserve(SIMPLE_BLOCK_HEADER_LEN + max_converted_len(frame.data));
                buf.put_bytes(0, SIMPLE_BLOCK_HEADER_LEN);
                match conv.convert(frame.data, buf) {
                    Ok(r) => {
                        let block = self.arena.take();
                        if r.config_changed {
                            let cfg = conv.config().cloned().map(Arc::new);
                            t.last_config = cfg.clone();
                            t.config_to_send = cfg;
                        }
                        if conv.config().is_none() {
                            self.stats.dropped_no_config += 1;
                            t.dropped += 1;
                            tracing::debug!(
                target: LOG_TARGET,
                "track {track}: no SPS/PPS seen yet, frame dropped");
                            return Ok(());
                        }
                        (block, frame.key || r.has_random_access)
                    }
                    Err(source) => {
                        drop(self.arena.take());
                        self.stats.dropped_invalid += 1;
                        t.dropped += 1;
                        return Err(MuxError::Codec { track, source });
                    }
                }
            }
        };
        if t.needs_key {
            if key {
                t.needs_key = false;
            } else {
                self.stats.dropped_until_key += 1;
                t.dropped += 1;
                return Ok(());
            }
        }
        if t.eos {
            t.eos = false;
            self.fragmenter.resume_track(track);
        }
        let t = &mut self.tracks[track];
        let f = Frame {
            track,
            pts: stamped.pts,
            dts: stamped.dts,
            duration: stamped.duration,
            key,
            discontinuity: stamped.discontinuity,
            new_config: t.config_to_send.take(),
            block,
        };
        let t = &mut self.tracks[track];
        let slot = if t.kind == TrackType::Video {
            if f.discontinuity {
                t.order_floor = 0;
            }
            if f.key {
                t.order_floor = t.order_floor.max(stamped.pts);
            }
            Slot {
                dts: stamped.dts.max(t.order_floor),
                opening: f.key,
                bytes: f.block.len(),
            }
        } else {
            Slot {
                dts: stamped.dts,
                opening: false,
                bytes: f.block.len(),
            }
        };
        let now = self.timeline.now_ns();
        let pushed = self.interleaver.push(track, slot, now, f);
        if let Err(late) = pushed {
            self.stats.dropped_late += 1;
            let t = &mut self.tracks[track];
            t.dropped += 1;
            // Keep a configuration it carried for the next frame.
            if late.item.new_config.is_some() && t.config_to_send.is_none() {
                t.config_to_send = late.item.new_config;
            }
            if t.kind == TrackType::Video {
                t.needs_key = true;
            }
            let msg = format!(
                "track {track}: frame {:.1} ms older than frames already sent without waiting for this track (it was silent past the interleaver's bound); dropped",
                (late.released - late.dts) as f64 / 1e6,
            );
            if t.late_warned {
                tracing::debug!(
                target: LOG_TARGET,
                "{msg}");
            } else {
                t.late_warned = true;
                tracing::warn!(
                target: LOG_TARGET,
                "{msg}");
            }
        }
        self.drain();
        Ok(())
    }

    fn drain(&mut self) {
        let now = self.timeline.now_ns();
        while let Some((_, f)) = self.interleaver.pop(now) {
            self.fragment_frame(f);
        }
    }

    fn fragment_frame(&mut self, f: Frame) {
        let track = f.track;
        self.fragmenter.push(f, &mut self.out);
        self.settle_fragmenter_drops(Some(track));
    }

    /// Gives the frames the fragmenter dropped since the last call to `track`: the track of the
    /// frame it was given, or, for drops at a close or an end (audio queued before the first
    /// video key frame), the first audio track.
    fn settle_fragmenter_drops(&mut self, track: Option<usize>) {
        let fs = self.fragmenter.stats();
        let total = fs.dropped_before_key + fs.dropped_track_absent;
        let new = total - self.fragmenter_drops_seen;
        if new == 0 {
            return;
        }
        self.fragmenter_drops_seen = total;
        let track = track
            .or_else(|| self.tracks.iter().position(|t| t.kind == TrackType::Audio))
            .unwrap_or(0);
        if let Some(t) = self.tracks.get_mut(track) {
            t.dropped += new;
        }
    }

    /// Frames of `track` dropped so far, for any reason of [`MuxStats::drops`] (0 for an
    /// unknown track). The tracks' counts add up to [`MuxStats::dropped`].
    pub fn track_dropped(&self, track: usize) -> u64 {
        self.tracks.get(track).map_or(0, |t| t.dropped)
    }

    /// How long a silent track is waited for: [`Wait::UntilData`] for non-live input (the
    /// producer that is ahead waits, see [`Self::waits_for`]), [`Wait::Clock`] with the pipeline
    /// latency plus a margin for live input.
    pub fn set_wait(&mut self, wait: Wait) {
        if self.interleaver.wait() != wait {
            tracing::debug!(target: LOG_TARGET, "interleaving: {wait:?}");
            self.interleaver.set_wait(wait);
            self.drain();
        }
    }

    /// When [`Self::tick`] should be called if nothing else happens: a frame waits for a silent
    /// live track until then (wall-clock ns since the epoch, the clock of the timeline).
    pub fn next_deadline(&self) -> Option<u64> {
        let pause = self.pause_deadline();
        match (self.interleaver.next_deadline(), pause) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Releases what may leave now (a deadline of [`Self::next_deadline`] passed); closes the
    /// open fragment when no buffer came for a while.
    pub fn tick(&mut self) {
        self.drain();
        if self
            .pause_deadline()
            .is_some_and(|d| self.timeline.now_ns() >= d)
        {
            tracing::info!(
                target: LOG_TARGET,
                "no buffer for {} ms: the open fragment is closed so that it is persisted now; the next one starts at a key frame",
                self.pause_after_ns() / 1_000_000
            );
            self.close_for_pause();
        }
    }

    /// Turns pause detection off (element PLAYING→PAUSED) or on again (PAUSED→PLAYING; the
    /// time without buffers counts from now).
    pub fn set_pause_detection(&mut self, on: bool) {
        self.pause_detection = on;
        if on && self.last_arrival_ns.is_some() {
            self.last_arrival_ns = Some(self.timeline.now_ns());
        }
    }

    fn note_arrival(&mut self) {
        let now = self.timeline.now_ns();
        if let Some(last) = self.last_arrival_ns {
            let gap = now.saturating_sub(last);
            if gap < self.pause_after_ns() {
                // A slow average (1/8) of the gaps between buffers, pauses left out.
                self.usual_gap_ns = self.usual_gap_ns - self.usual_gap_ns / 8 + gap / 8;
            }
        }
        self.last_arrival_ns = Some(now);
    }

    /// How long without a buffer is a pause: [`PAUSE_AFTER_NS`], or four usual gaps between
    /// buffers for sources slower than that (a 1 fps camera is not paused between frames).
    fn pause_after_ns(&self) -> u64 {
        PAUSE_AFTER_NS.max(self.usual_gap_ns.saturating_mul(4))
    }

    /// Live input with an open fragment: when it is closed if no buffer arrives.
    fn pause_deadline(&self) -> Option<u64> {
        if !self.pause_detection
            || !matches!(self.interleaver.wait(), Wait::Clock { .. })
            || !self.fragmenter.has_open_fragment()
        {
            return None;
        }
        Some(self.last_arrival_ns?.saturating_add(self.pause_after_ns()))
    }

    /// A GAP event: `track` has nothing before `running_time` (ns, same clock as the PTS), so
    /// the other tracks need not wait for it.
    pub fn heartbeat(&mut self, track: usize, running_time: u64) -> Result<(), MuxError> {
        if track >= self.tracks.len() {
            return Err(MuxError::UnknownTrack(track));
        }
        if let Some(ts) = self.timeline.map(running_time) {
            self.interleaver.heartbeat(track, ts);
            self.drain();
        }
        Ok(())
    }

    /// With non-live input: the track the producer of `track` should wait for before pushing
    /// more, because `track` is ahead of it (see [`crate::media::interleave`]).
    pub fn waits_for(&self, track: usize) -> Option<usize> {
        if track < self.tracks.len() {
            self.interleaver.waits_for(track)
        } else {
            None
        }
    }

    /// `kvs-add-metadata`: goes in front of the next fragment (persistent: every fragment).
    pub fn add_metadata(
        &mut self,
        name: &str,
        value: &str,
        persistent: bool,
    ) -> Result<(), MetadataError> {
        self.fragmenter.add_metadata(name, value, persistent)
    }

    /// EOS on `track`. When every track is at EOS the last fragment is closed with the
    /// end-of-fragment tag; returns true then.
    pub fn end_of_stream(&mut self, track: usize) -> Result<bool, MuxError> {
        let t = self
            .tracks
            .get_mut(track)
            .ok_or(MuxError::UnknownTrack(track))?;
        t.eos = true;
        self.interleaver.set_ended(track);
        self.drain();
        self.fragmenter.end_track(track, &mut self.out);
        self.settle_fragmenter_drops(None);
        if self.tracks.iter().all(|t| t.eos) {
            self.finish();
            return Ok(true);
        }
        Ok(false)
    }

    /// Ends the stream now (state change to READY): everything queued is written and the last
    /// fragment closed with the end-of-fragment tag.
    pub fn finish(&mut self) {
        while let Some((_, f)) = self.interleaver.pop_any() {
            self.fragment_frame(f);
        }
        self.fragmenter.finish(&mut self.out);
        self.settle_fragmenter_drops(None);
    }

    /// No frame arrived for a while (a valve closed, a motion-triggered camera stopped): what is
    /// queued is written and the open fragment is closed, so that it can be persisted now; the
    /// next fragment starts at a video key frame. Returns whether a fragment was closed.
    pub fn close_for_pause(&mut self) -> bool {
        while let Some((_, f)) = self.interleaver.pop_any() {
            self.fragment_frame(f);
        }
        let was_open = self.fragmenter.has_open_fragment();
        self.fragmenter.close(&mut self.out);
        self.settle_fragmenter_drops(None);
        was_open
    }

    /// Whether a fragment is open (started and not closed yet).
    pub fn has_open_fragment(&self) -> bool {
        self.fragmenter.has_open_fragment()
    }

    /// FLUSH_STOP: queued frames are dropped (counted), the open fragment is closed as is, and
    /// the next fragment starts at a key frame.
    pub fn flush(&mut self) {
        let dropped = self.interleaver.clear();
        if !dropped.is_empty() {
            tracing::debug!(
                target: LOG_TARGET,
                "flush: {} queued frames dropped", dropped.len());
        }
        self.stats.dropped_flush += dropped.len() as u64;
        for (track, _) in &dropped {
            self.tracks[*track].dropped += 1;
        }
        self.fragmenter.close(&mut self.out);
        self.settle_fragmenter_drops(None);
        self.timeline.reset_tracks();
        for (i, t) in self.tracks.iter_mut().enumerate() {
            t.eos = false;
            t.needs_key = false;
            self.fragmenter.resume_track(i);
        }
    }

    /// The next piece of fragment, in order.
    pub fn pop_piece(&mut self) -> Option<Piece> {
        self.out.pop_front()
    }

    /// The next completed fragment, in order (joins the pieces; for tools and tests, not to be
    /// mixed with [`Self::pop_piece`]).
    pub fn pop_fragment(&mut self) -> Option<Fragment> {
        while let Some(p) = self.out.pop_front() {
            if let Some(f) = self.assembler.push(p) {
                return Some(f);
            }
        }
        None
    }

    /// The current session header (EBML, Segment, Info, Tracks), for (re)connects. None before
    /// the first fragment started.
    pub fn header(&self) -> Option<Bytes> {
        self.fragmenter.header().cloned()
    }

    /// Track number of a track in the file (after the stream started).
    pub fn track_number(&self, track: usize) -> Option<u8> {
        self.fragmenter.track_number(track)
    }

    pub fn stats(&self) -> MuxStats {
        MuxStats {
            timeline: self.timeline.stats(),
            interleave: self.interleaver.stats(),
            fragmenter: self.fragmenter.stats(),
            arena_chunks: self.arena.chunks(),
            ..self.stats
        }
    }
}

/// Writes fragments as one playable Matroska byte stream, as the uploader sends them: the header
/// before the first fragment and before every fragment that changes it. This is what
/// `KVS_DEBUG_DUMP_DATA_FILE_DIR` files contain.
pub fn write_fragment(w: &mut impl Write, f: &Fragment, first: bool) -> io::Result<()> {
    if first || f.header_changed {
        w.write_all(&f.header)?;
    }
    f.write_to(w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::codec::G711Law;
    use crate::media::timeline::tests::ManualClock;

    const MS: u64 = 1_000_000;
    const EPOCH: u64 = 1_700_000_000_000 * MS;

    fn h264() -> TrackConfig {
        TrackConfig::h264(
            &[
                1, 66, 0, 30, 0xff, 0xe1, 0, 4, 0x67, 66, 0, 30, 1, 0, 2, 0x68, 0xce,
            ],
            Some(320),
            Some(240),
        )
        .unwrap()
    }

    fn frame(pts_ms: u64, key: bool, data: &[u8]) -> FrameIn<'_> {
        FrameIn {
            pts: Some(pts_ms * MS),
            dts: Some(pts_ms * MS),
            duration: None,
            key,
            data,
        }
    }

    fn collect(m: &mut StreamMuxer) -> Vec<Fragment> {
        std::iter::from_fn(|| m.pop_fragment()).collect()
    }

    #[test]
    fn av_stream_end_to_end() {
        let clock = ManualClock::at(EPOCH);
        let mut m = StreamMuxer::new(MuxerConfig::default(), Box::new(clock));
        let a = m.add_track(TrackType::Audio, "audio").unwrap();
        let v = m.add_track(TrackType::Video, "kinesis_video").unwrap();
        assert_eq!(m.push(v, frame(0, true, b"x")), Err(MuxError::NoCaps(v)));
        m.set_input(v, TrackInput::Configured(h264())).unwrap();
        m.set_input(
            a,
            TrackInput::Configured(TrackConfig::g711(G711Law::MuLaw, 8000, 1).unwrap()),
        )
        .unwrap();
        assert_eq!(
            m.set_input(a, TrackInput::Configured(h264())),
            Err(MuxError::WrongKind(a))
        );
        for i in 0..50u64 {
            m.push(v, frame(i * 40, i % 25 == 0, &[1; 100])).unwrap();
            m.push(a, frame(i * 40 + 5, false, &[2; 20])).unwrap();
        }
        assert!(m.header().is_some());
        m.end_of_stream(a).unwrap();
        assert!(m.end_of_stream(v).unwrap());
        let frags = collect(&mut m);
        assert_eq!(frags.len(), 2);
        assert_eq!(frags[0].timecode, EPOCH / MS);
        assert_eq!(frags[0].frame_counts, [25, 25, 0]);
        assert_eq!(frags[1].frame_counts, [25, 25, 0]);
        assert!(frags[1].end_of_stream);
        assert_eq!(m.stats().dropped(), 1, "the buffer before caps");
        assert_eq!(m.track_number(v), Some(1));
    }

    #[test]
    fn close_for_pause_ends_the_open_fragment_and_the_next_starts_at_a_key_frame() {
        let clock = ManualClock::at(EPOCH);
        let mut m = StreamMuxer::new(MuxerConfig::default(), Box::new(clock));
        let v = m.add_track(TrackType::Video, "v").unwrap();
        m.set_input(v, TrackInput::Configured(h264())).unwrap();
        assert!(!m.close_for_pause(), "nothing open");
        for i in 0..5u64 {
            m.push(v, frame(i * 40, i == 0, &[1; 10])).unwrap();
        }
        assert!(m.has_open_fragment());
        assert!(m.close_for_pause());
        assert!(!m.has_open_fragment());
        let frags = collect(&mut m);
        assert_eq!(frags.len(), 1);
        assert_eq!(frags[0].frames(), 5);
        assert!(!frags[0].end_of_stream);
        // After the pause: delta frames are dropped until a key frame starts the next fragment.
        m.push(v, frame(2000, false, &[1; 10])).unwrap();
        m.push(v, frame(2040, true, &[1; 10])).unwrap();
        m.finish();
        let frags = collect(&mut m);
        assert_eq!(frags.len(), 1);
        assert_eq!(frags[0].timecode, EPOCH / MS + 2040);
        assert_eq!(m.stats().fragmenter.dropped_before_key, 1);
    }

    #[test]
    fn live_input_closes_the_open_fragment_when_no_buffer_comes_for_a_while() {
        let clock = ManualClock::at(EPOCH);
        let live = MuxerConfig {
            wait: Wait::Clock { bound_ns: 500 * MS },
            ..MuxerConfig::default()
        };
        let mut m = StreamMuxer::new(live, Box::new(clock.clone()));
        let v = m.add_track(TrackType::Video, "v").unwrap();
        m.set_input(v, TrackInput::Configured(h264())).unwrap();
        assert_eq!(m.next_deadline(), None, "nothing open");
        for i in 0..10u64 {
            m.push(v, frame(i * 40, i == 0, &[1; 10])).unwrap();
            clock.advance(40 * MS);
        }
        let last = clock.now_ns() - 40 * MS;
        assert_eq!(m.next_deadline(), Some(last + PAUSE_AFTER_NS));
        clock.advance(PAUSE_AFTER_NS - 50 * MS);
        m.tick();
        assert!(m.has_open_fragment(), "not yet");
        clock.advance(20 * MS);
        m.tick();
        assert!(!m.has_open_fragment());
        let frags = collect(&mut m);
        assert_eq!((frags.len(), frags[0].frames()), (1, 10));
        assert!(!frags[0].end_of_stream);
        assert_eq!(m.next_deadline(), None);
        // A slow source (a frame every 400 ms) is not paused between its frames.
        let mut m = StreamMuxer::new(
            MuxerConfig {
                wait: Wait::Clock { bound_ns: 500 * MS },
                ..MuxerConfig::default()
            },
            Box::new(clock.clone()),
        );
        let v = m.add_track(TrackType::Video, "v").unwrap();
        m.set_input(v, TrackInput::Configured(h264())).unwrap();
        for i in 0..40u64 {
            m.push(v, frame(i * 400, i == 0, &[1; 10])).unwrap();
            clock.advance(400 * MS);
            m.tick();
        }
        assert!(m.has_open_fragment());
        assert!(m.pause_after_ns() > 1_400 * MS);
    }

    #[test]
    fn stalled_audio_does_not_stop_video_fragments() {
        let clock = ManualClock::at(EPOCH);
        let live = MuxerConfig {
            wait: Wait::Clock { bound_ns: 500 * MS },
            ..MuxerConfig::default()
        };
        let mut m = StreamMuxer::new(live, Box::new(clock.clone()));
        let v = m.add_track(TrackType::Video, "v").unwrap();
        let a = m.add_track(TrackType::Audio, "a").unwrap();
        m.set_input(v, TrackInput::Configured(h264())).unwrap();
        m.set_input(
            a,
            TrackInput::Configured(TrackConfig::aac(Some(&[0x12, 0x10]), None, None).unwrap()),
        )
        .unwrap();
        let mut frags = Vec::new();
        for i in 0..250u64 {
            // Audio stops after 2 s; video goes on for 10 s with a key frame every second.
            m.push(v, frame(i * 40, i % 25 == 0, &[1; 10])).unwrap();
            if i * 40 < 2000 {
                m.push(a, frame(i * 40, true, &[2; 10])).unwrap();
            }
            clock.advance(40 * MS);
            frags.extend(collect(&mut m));
        }
        // Fragments kept coming during the stall (all but the open GOP).
        assert!(frags.len() >= 7, "{} fragments", frags.len());
        assert_eq!(m.stats().interleave.stalls, 1);
        // Audio comes back late: dropped, counted; video unaffected.
        m.push(a, frame(2100, true, &[2; 10])).unwrap();
        assert_eq!(m.stats().dropped_late, 1);
        m.finish();
        frags.extend(collect(&mut m));
        let video: u32 = frags.iter().map(|f| f.frame_counts[v]).sum();
        assert_eq!(video, 250);
    }

    #[test]
    fn drops_are_counted_per_track() {
        let clock = ManualClock::at(EPOCH);
        let mut m = StreamMuxer::new(MuxerConfig::default(), Box::new(clock));
        let v = m.add_track(TrackType::Video, "v").unwrap();
        let a = m.add_track(TrackType::Audio, "a").unwrap();
        // Audio before caps (refused), audio waiting for the first video key frame.
        assert!(m.push(a, frame(0, true, &[2; 10])).is_err());
        m.set_input(v, TrackInput::Configured(h264())).unwrap();
        m.set_input(
            a,
            TrackInput::Configured(TrackConfig::aac(Some(&[0x12, 0x10]), None, None).unwrap()),
        )
        .unwrap();
        assert!(m.push(v, frame(0, false, &[])).is_err());
        for i in 0..10u64 {
            m.push(v, frame(i * 40, i == 5, &[1; 10])).unwrap();
            m.push(a, frame(i * 40 + 5, true, &[2; 10])).unwrap();
        }
        m.flush();
        m.finish();
        let total = m.stats().dropped();
        assert!(
            m.track_dropped(v) >= 6,
            "empty + deltas before the key frame"
        );
        assert!(m.track_dropped(a) >= 1, "before caps");
        assert_eq!(m.track_dropped(v) + m.track_dropped(a), total);
        assert_eq!(m.track_dropped(7), 0);
    }

    #[test]
    fn empty_and_oversized_frames_are_refused_and_video_resumes_at_a_key_frame() {
        let mut m = StreamMuxer::new(MuxerConfig::default(), Box::new(ManualClock::at(EPOCH)));
        let v = m.add_track(TrackType::Video, "v").unwrap();
        m.set_input(v, TrackInput::Configured(h264())).unwrap();
        let big = vec![7u8; MAX_FRAME_BYTES + 1];
        m.push(v, frame(0, true, &[1; 10])).unwrap();
        assert_eq!(m.push(v, frame(40, false, &[])), Err(MuxError::Empty(v)));
        m.push(v, frame(80, false, &[1; 10])).unwrap();
        let e = m.push(v, frame(120, false, &big)).unwrap_err();
        assert!(e.to_string().contains("maximum fragment size"), "{e}");
        m.push(v, frame(160, false, &[1; 10])).unwrap();
        m.push(v, frame(200, true, &[1; 10])).unwrap();
        m.push(v, frame(240, false, &[1; 10])).unwrap();
        m.finish();
        let frags = collect(&mut m);
        let stored: u32 = frags.iter().map(|f| f.frames()).sum();
        assert_eq!(stored, 4, "0, 80, then from the key frame at 200");
        let st = m.stats();
        assert_eq!((st.dropped_invalid, st.dropped_until_key), (2, 1));
    }

    #[test]
    fn annexb_track_is_configured_from_the_stream_and_drops_until_sps() {
        let clock = ManualClock::at(EPOCH);
        let mut m = StreamMuxer::new(MuxerConfig::default(), Box::new(clock));
        let v = m.add_track(TrackType::Video, "v").unwrap();
        m.set_input(
            v,
            TrackInput::AnnexB {
                codec: VideoCodec::H264,
                width: None,
                height: None,
            },
        )
        .unwrap();
        m.push(v, frame(0, false, &[0, 0, 1, 0x41, 9])).unwrap();
        assert!(matches!(
            m.push(v, frame(40, false, &[1, 2, 3])),
            Err(MuxError::Codec { .. })
        ));
        let sps_pps_idr = [
            0, 0, 0, 1, 0x67, 66, 0, 30, 0xF4, 0x0A, 0x0F, 0xC8, 0, 0, 0, 1, 0x68, 0xce, 0x38,
            0x80, 0, 0, 0, 1, 0x65, 0x88, 0x84,
        ];
        m.push(v, frame(80, false, &sps_pps_idr)).unwrap();
        m.push(v, frame(120, false, &[0, 0, 1, 0x41, 0x9a]))
            .unwrap();
        m.finish();
        let frags = collect(&mut m);
        assert_eq!(frags.len(), 1);
        assert!(frags[0].key, "IDR detected in the stream");
        assert_eq!(frags[0].frames(), 2);
        let st = m.stats();
        assert_eq!((st.dropped_no_config, st.dropped_invalid), (1, 1));
        let header = m.header().unwrap();
        assert!(
            header.windows(4).any(|w| w == [0x63, 0xA2, 0x97, 1]),
            "avcC CodecPrivate"
        );
        // Block payload: length-prefixed NALs.
        let block = &frags[0].parts[1];
        assert_eq!(&block[13..17], &[0, 0, 0, 8]);
        assert_eq!(block[17], 0x67);
    }
}
