//! Incremental Matroska splitter for PutMedia bodies.
//!
//! Owns: turning a byte stream that arrives in chunks of any size into the session header
//! (EBML header, Info, Tracks) and KVS fragments (one Cluster each, with the Tags elements that
//! precede it), and enforcing the per-connection MKV rules of the service (invalid MKV, fragment
//! size/duration limits, timecodes lower than the previous fragment, too many tracks, block track
//! numbers that are not in Tracks, tracks without frames in a fragment).
//!
//! Hand-written rather than `webm-iterable`/`ebml-iterable`: the server must keep the exact bytes
//! of every fragment (they are stored byte-identically and later re-read as playable MKV), must
//! know where each element starts in the body, and must be able to wait for more input in the
//! middle of any element. The iterators hand out decoded tags (payloads copied into owned
//! `Vec`s) and do not expose raw byte ranges, so the splitter would have to re-encode what it
//! stores. The reader only needs element headers (IDs and size vints), a handful of integer,
//! float and string children, and the SimpleBlock header — about the size of the glue code the
//! crates would need.
//!
//! Fragment boundaries: an unknown-size Cluster ends where the next top-level element (Cluster,
//! Tags, Cues, …) or a new EBML header begins; a known-size Cluster at its size. A Tags element
//! carrying `AWS_KINESISVIDEO_END_OF_FRAGMENT` closes the open fragment and is stored with it;
//! other Tags are fragment metadata: those that follow an unknown-size Cluster belong to it when
//! an end-of-fragment Tags (or the end of the body) comes next (metadata the producer flushes at
//! the end of a stream), and to the next fragment when a Cluster comes next (metadata written
//! before the Cluster it belongs to, as the producer does).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};

/// The tag name that closes a fragment (EoFR) or a session (EoS).
pub const END_OF_FRAGMENT_TAG: &str = "AWS_KINESISVIDEO_END_OF_FRAGMENT";

mod ids {
    pub const EBML: u32 = 0x1A45_DFA3;
    pub const DOC_TYPE: u32 = 0x4282;
    pub const SEGMENT: u32 = 0x1853_8067;
    pub const INFO: u32 = 0x1549_A966;
    pub const TIMECODE_SCALE: u32 = 0x2A_D7B1;
    pub const SEGMENT_UID: u32 = 0x73A4;
    pub const TITLE: u32 = 0x7BA9;
    pub const MUXING_APP: u32 = 0x4D80;
    pub const WRITING_APP: u32 = 0x5741;
    pub const TRACKS: u32 = 0x1654_AE6B;
    pub const TRACK_ENTRY: u32 = 0xAE;
    pub const TRACK_NUMBER: u32 = 0xD7;
    pub const TRACK_UID: u32 = 0x73C5;
    pub const TRACK_TYPE: u32 = 0x83;
    pub const NAME: u32 = 0x536E;
    pub const CODEC_ID: u32 = 0x86;
    pub const CODEC_PRIVATE: u32 = 0x63A2;
    pub const VIDEO: u32 = 0xE0;
    pub const PIXEL_WIDTH: u32 = 0xB0;
    pub const PIXEL_HEIGHT: u32 = 0xBA;
    pub const AUDIO: u32 = 0xE1;
    pub const SAMPLING_FREQUENCY: u32 = 0xB5;
    pub const CHANNELS: u32 = 0x9F;
    pub const CLUSTER: u32 = 0x1F43_B675;
    pub const TIMECODE: u32 = 0xE7;
    pub const SIMPLE_BLOCK: u32 = 0xA3;
    pub const BLOCK_GROUP: u32 = 0xA0;
    pub const BLOCK: u32 = 0xA1;
    pub const REFERENCE_BLOCK: u32 = 0xFB;
    pub const TAGS: u32 = 0x1254_C367;
    pub const TAG: u32 = 0x7373;
    pub const SIMPLE_TAG: u32 = 0x67C8;
    pub const TAG_NAME: u32 = 0x45A3;
    pub const TAG_STRING: u32 = 0x4487;
    pub const SEEK_HEAD: u32 = 0x114D_9B74;
    pub const CUES: u32 = 0x1C53_BB6B;
    pub const CHAPTERS: u32 = 0x1043_A770;
    pub const ATTACHMENTS: u32 = 0x1941_A469;
}

/// Largest header-like element (EBML, Info, Tracks, Tags) the splitter buffers whole.
const MAX_HEADER_ELEMENT: u64 = 4 << 20;

/// The service limits the splitter enforces.
#[derive(Debug, Clone)]
pub struct Limits {
    /// ErrorId 4001 above this many bytes in one fragment (service: 50 MB).
    pub max_fragment_bytes: u64,
    /// ErrorId 4002 when the frames of one fragment span more than this.
    pub max_fragment_duration: Duration,
    /// ErrorId 4012 when Tracks declares more tracks (service: 3).
    pub max_tracks: usize,
    /// ErrorId 4011 when a fragment has no frame of a track declared in Tracks.
    pub require_frames_for_every_track: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_fragment_bytes: 50 * 1024 * 1024,
            max_fragment_duration: Duration::from_secs(10),
            max_tracks: 3,
            require_frames_for_every_track: true,
        }
    }
}

/// A rule of the service the body broke; maps to an ERROR ACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    InvalidMkv,
    MaxFragmentSize,
    MaxFragmentDuration,
    TimecodeLesserThanPrevious,
    MoreThanAllowedTracks,
    TrackNumberMismatch,
    FramesMissingForTrack,
}

impl RuleKind {
    /// The `ErrorId` of the ERROR ACK.
    pub fn error_id(self) -> u32 {
        match self {
            RuleKind::MaxFragmentSize => 4001,
            RuleKind::MaxFragmentDuration => 4002,
            RuleKind::TimecodeLesserThanPrevious => 4004,
            RuleKind::InvalidMkv => 4006,
            RuleKind::TrackNumberMismatch => 4010,
            RuleKind::FramesMissingForTrack => 4011,
            RuleKind::MoreThanAllowedTracks => 4012,
        }
    }
}

/// The body broke a rule. `fragment_timecode` is the open fragment's, when there is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind:?} (fragment {fragment_timecode:?}): {detail}")]
pub struct RuleError {
    pub kind: RuleKind,
    pub fragment_timecode: Option<u64>,
    pub detail: String,
}

/// One track as declared in Tracks.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackInfo {
    pub number: u64,
    pub uid: Option<u64>,
    pub track_type: Option<u64>,
    pub name: Option<String>,
    pub codec_id: Option<String>,
    pub codec_private_len: usize,
    pub width: Option<u64>,
    pub height: Option<u64>,
    pub sampling_frequency: Option<f64>,
    pub channels: Option<u64>,
}

/// The header of a PutMedia session: raw bytes for storage plus what was parsed from them.
#[derive(Debug, Clone)]
pub struct SessionHeader {
    /// The EBML header element.
    pub ebml: Bytes,
    /// The Info element (empty if the body had none).
    pub info: Bytes,
    /// The Tracks element.
    pub tracks: Bytes,
    pub timecode_scale_ns: u64,
    pub segment_uid: Option<Vec<u8>>,
    pub title: Option<String>,
    pub muxing_app: Option<String>,
    pub writing_app: Option<String>,
    pub track_list: Vec<TrackInfo>,
}

/// A complete fragment.
#[derive(Debug, Clone)]
pub struct ParsedFragment {
    /// Cluster Timecode, in TimecodeScale units (the ACK's `FragmentTimecode`).
    pub timecode: u64,
    /// Metadata Tags before the Cluster, the Cluster, and an EoFR Tags that closed it.
    pub bytes: Bytes,
    pub frames_per_track: BTreeMap<u64, u64>,
    pub key_frames: u64,
    /// Earliest and latest absolute frame timecodes (TimecodeScale units).
    pub first_frame: i64,
    pub last_frame: i64,
    /// Name/value of every SimpleTag in the fragment's Tags.
    pub tags: Vec<(String, String)>,
    /// Closed by an `AWS_KINESISVIDEO_END_OF_FRAGMENT` tag.
    pub end_of_fragment: bool,
}

/// What the splitter found in the input so far.
#[derive(Debug, Clone)]
pub enum Event {
    /// Session header complete (sent at the first Cluster).
    Header(Arc<SessionHeader>),
    /// A Cluster's Timecode arrived: the fragment is being received.
    FragmentStarted {
        timecode: u64,
    },
    /// A whole SimpleBlock/BlockGroup arrived (only with [`Splitter::report_blocks`]).
    Block {
        track: u64,
        /// Absolute timecode (TimecodeScale units).
        timecode: i64,
        /// The whole SimpleBlock or BlockGroup element, as received.
        element: Bytes,
    },
    FragmentCompleted(ParsedFragment),
}

#[derive(Debug, Clone, Copy)]
struct ElementHeader {
    id: u32,
    header_len: usize,
    /// `None`: unknown size.
    size: Option<u64>,
}

#[derive(Debug)]
enum Stage {
    EbmlHeader,
    Segment,
    SegmentBody,
    Cluster,
    Skip { remaining: u64 },
    AfterSegment,
}

#[derive(Debug, Default)]
struct OpenFragment {
    bytes: BytesMut,
    timecode: Option<u64>,
    frames_per_track: BTreeMap<u64, u64>,
    key_frames: u64,
    first_frame: Option<i64>,
    last_frame: Option<i64>,
    tags: Vec<(String, String)>,
    /// Metadata Tags after the (unknown-size) Cluster, not yet attributed.
    trailing: BytesMut,
    trailing_tags: Vec<(String, String)>,
}

/// The incremental splitter. Feed it with [`Splitter::push`], end with [`Splitter::finish`].
/// After an error it must not be fed again.
#[derive(Debug)]
pub struct Splitter {
    limits: Limits,
    buf: BytesMut,
    consumed: u64,
    stage: Stage,
    segment_end: Option<u64>,
    cluster_end: Option<u64>,
    ebml: Option<Bytes>,
    info: Option<Bytes>,
    tracks: Option<Bytes>,
    header: Option<Arc<SessionHeader>>,
    track_numbers: BTreeSet<u64>,
    prefix: BytesMut,
    prefix_tags: Vec<(String, String)>,
    open: Option<OpenFragment>,
    prev_timecode: Option<u64>,
    prev_last_frame: Option<i64>,
    report_blocks: bool,
}

impl Splitter {
    pub fn new(limits: Limits) -> Self {
        Splitter {
            limits,
            buf: BytesMut::new(),
            consumed: 0,
            stage: Stage::EbmlHeader,
            segment_end: None,
            cluster_end: None,
            ebml: None,
            info: None,
            tracks: None,
            header: None,
            track_numbers: BTreeSet::new(),
            prefix: BytesMut::new(),
            prefix_tags: Vec::new(),
            open: None,
            prev_timecode: None,
            prev_last_frame: None,
            report_blocks: false,
        }
    }

    /// Also report each block as it arrives ([`Event::Block`]).
    pub fn report_blocks(mut self, on: bool) -> Self {
        self.report_blocks = on;
        self
    }

    /// The session header, once the first Cluster began.
    pub fn header(&self) -> Option<&Arc<SessionHeader>> {
        self.header.as_ref()
    }

    /// Timecode of the fragment being received, if any.
    pub fn open_fragment_timecode(&self) -> Option<u64> {
        self.open.as_ref().and_then(|f| f.timecode)
    }

    /// Feeds the next chunk of the body. Events found before an error are in `events` too.
    pub fn push(&mut self, chunk: &[u8], events: &mut Vec<Event>) -> Result<(), RuleError> {
        self.buf.extend_from_slice(chunk);
        self.run(events)
    }

    /// The body ended cleanly: completes the open fragment, or reports what was cut off.
    pub fn finish(&mut self, events: &mut Vec<Event>) -> Result<(), RuleError> {
        self.run(events)?;
        match self.stage {
            Stage::Cluster => {
                let complete =
                    self.buf.is_empty() && self.cluster_end.is_none_or(|end| end == self.consumed);
                if !complete {
                    return Err(self.invalid("the body ended inside a Cluster"));
                }
                self.attach_trailing();
                let done = self.complete_fragment()?;
                events.push(Event::FragmentCompleted(done));
            }
            Stage::Skip { remaining } if remaining > 0 => {
                return Err(self.invalid("the body ended inside an element"));
            }
            _ if !self.buf.is_empty() => {
                return Err(self.invalid("the body ended inside an element"));
            }
            _ => {}
        }
        if !self.prefix.is_empty() {
            tracing::debug!(
                bytes = self.prefix.len(),
                "Tags at the end of the body belong to no fragment"
            );
        }
        Ok(())
    }

    fn invalid(&self, detail: impl Into<String>) -> RuleError {
        self.error(RuleKind::InvalidMkv, detail)
    }

    fn error(&self, kind: RuleKind, detail: impl Into<String>) -> RuleError {
        RuleError {
            kind,
            fragment_timecode: self.open_fragment_timecode(),
            detail: detail.into(),
        }
    }

    fn consume(&mut self, n: usize) -> Bytes {
        self.consumed += n as u64;
        self.buf.split_to(n).freeze()
    }

    fn read_header(&self) -> Result<Option<ElementHeader>, RuleError> {
        let b = &self.buf[..];
        let Some(&first) = b.first() else {
            return Ok(None);
        };
        let id_len = first.leading_zeros() as usize + 1;
        if id_len > 4 {
            return Err(self.invalid(format!("invalid element ID byte {first:#04x}")));
        }
        if b.len() < id_len + 1 {
            return Ok(None);
        }
        let id = b[..id_len].iter().fold(0u32, |acc, &x| acc << 8 | x as u32);
        let Some(size_first) = b.get(id_len).copied() else {
            return Ok(None);
        };
        let size_len = size_first.leading_zeros() as usize + 1;
        if size_len > 8 {
            return Err(self.invalid("invalid element size"));
        }
        if b.len() < id_len + size_len {
            return Ok(None);
        }
        let mask = if size_len == 8 { 0 } else { 0xFFu8 >> size_len };
        let mut value = (size_first & mask) as u64;
        let mut all_ones = (size_first & mask) == mask;
        for &x in &b[id_len + 1..id_len + size_len] {
            value = value << 8 | x as u64;
            all_ones &= x == 0xFF;
        }
        Ok(Some(ElementHeader {
            id,
            header_len: id_len + size_len,
            size: if all_ones { None } else { Some(value) },
        }))
    }

    /// Waits for a whole element of known size; `Ok(None)` means more input is needed.
    fn whole_element(&self, h: ElementHeader, cap: u64) -> Result<Option<usize>, RuleError> {
        let size = h
            .size
            .ok_or_else(|| self.invalid(format!("element {:#x} has an unknown size", h.id)))?;
        if size > cap {
            return Err(self.invalid(format!("element {:#x} is too large ({size} bytes)", h.id)));
        }
        let total = h.header_len + size as usize;
        Ok((self.buf.len() >= total).then_some(total))
    }

    fn run(&mut self, events: &mut Vec<Event>) -> Result<(), RuleError> {
        loop {
            let progressed = match self.stage {
                Stage::EbmlHeader => self.step_ebml()?,
                Stage::Segment => self.step_segment()?,
                Stage::SegmentBody => self.step_segment_body(events)?,
                Stage::Cluster => self.step_cluster(events)?,
                Stage::Skip { remaining } => {
                    let n = remaining.min(self.buf.len() as u64) as usize;
                    self.consume(n);
                    let remaining = remaining - n as u64;
                    self.stage = if remaining == 0 {
                        Stage::SegmentBody
                    } else {
                        Stage::Skip { remaining }
                    };
                    remaining == 0
                }
                Stage::AfterSegment => {
                    if self.buf.is_empty() {
                        false
                    } else {
                        return Err(self.invalid(
                            "data after the end of the Segment (more than one MKV segment)",
                        ));
                    }
                }
            };
            if !progressed {
                return Ok(());
            }
        }
    }

    fn step_ebml(&mut self) -> Result<bool, RuleError> {
        let Some(h) = self.read_header()? else {
            return Ok(false);
        };
        if h.id != ids::EBML {
            return Err(self.invalid("the body does not start with an EBML header"));
        }
        let Some(total) = self.whole_element(h, 4096)? else {
            return Ok(false);
        };
        let el = self.consume(total);
        let mut doc_type = None;
        for (id, data) in children(&el[h.header_len..]).map_err(|e| self.invalid(e))? {
            if id == ids::DOC_TYPE {
                doc_type = Some(read_string(data));
            }
        }
        match doc_type.as_deref() {
            Some("matroska") | Some("webm") => {}
            other => {
                return Err(self.invalid(format!("unsupported DocType {other:?}")));
            }
        }
        self.ebml = Some(el);
        self.stage = Stage::Segment;
        Ok(true)
    }

    fn step_segment(&mut self) -> Result<bool, RuleError> {
        let Some(h) = self.read_header()? else {
            return Ok(false);
        };
        if h.id != ids::SEGMENT {
            return Err(self.invalid("expected a Segment after the EBML header"));
        }
        self.consume(h.header_len);
        self.segment_end = h.size.map(|s| self.consumed + s);
        self.stage = Stage::SegmentBody;
        Ok(true)
    }

    fn step_segment_body(&mut self, events: &mut Vec<Event>) -> Result<bool, RuleError> {
        if self.segment_end == Some(self.consumed) {
            self.stage = Stage::AfterSegment;
            return Ok(true);
        }
        let Some(h) = self.read_header()? else {
            return Ok(false);
        };
        match h.id {
            ids::CLUSTER => {
                let Some(tracks) = self.tracks.clone() else {
                    return Err(self.invalid("Cluster before Tracks"));
                };
                if self.header.is_none() {
                    let header = self.build_header(tracks)?;
                    self.track_numbers = header.track_list.iter().map(|t| t.number).collect();
                    self.header = Some(header.clone());
                    events.push(Event::Header(header));
                }
                let mut open = OpenFragment {
                    bytes: std::mem::take(&mut self.prefix),
                    tags: std::mem::take(&mut self.prefix_tags),
                    ..Default::default()
                };
                let hdr = self.consume(h.header_len);
                open.bytes.extend_from_slice(&hdr);
                self.cluster_end = h.size.map(|s| self.consumed + s);
                self.open = Some(open);
                self.stage = Stage::Cluster;
            }
            ids::TAGS => {
                let Some(total) = self.whole_element(h, MAX_HEADER_ELEMENT)? else {
                    return Ok(false);
                };
                let el = self.consume(total);
                let tags = parse_tags(&el[h.header_len..]).map_err(|e| self.invalid(e))?;
                if tags.iter().any(|(n, _)| n == END_OF_FRAGMENT_TAG) {
                    tracing::debug!("end-of-fragment Tags with no open fragment");
                } else {
                    self.prefix.extend_from_slice(&el);
                    self.prefix_tags.extend(tags);
                }
            }
            ids::INFO | ids::TRACKS => {
                if self.header.is_some() {
                    return Err(self.invalid("Info or Tracks after the first Cluster"));
                }
                let Some(total) = self.whole_element(h, MAX_HEADER_ELEMENT)? else {
                    return Ok(false);
                };
                let el = self.consume(total);
                let slot = if h.id == ids::INFO {
                    &mut self.info
                } else {
                    &mut self.tracks
                };
                if slot.is_some() {
                    return Err(self.invalid("duplicate Info or Tracks"));
                }
                *slot = Some(el);
            }
            ids::EBML | ids::SEGMENT => {
                return Err(self.invalid("more than one MKV segment in the body"));
            }
            _ => {
                let size = h.size.ok_or_else(|| {
                    self.invalid(format!("top-level element {:#x} has an unknown size", h.id))
                })?;
                if let Some(end) = self.segment_end
                    && self.consumed + h.header_len as u64 + size > end
                {
                    return Err(self.invalid("element overruns its Segment"));
                }
                tracing::trace!(id = h.id, size, "skipping top-level element");
                self.consume(h.header_len);
                self.stage = Stage::Skip { remaining: size };
            }
        }
        Ok(true)
    }

    fn build_header(&self, tracks: Bytes) -> Result<Arc<SessionHeader>, RuleError> {
        let mut header = SessionHeader {
            ebml: self.ebml.clone().unwrap_or_default(),
            info: self.info.clone().unwrap_or_default(),
            tracks: tracks.clone(),
            timecode_scale_ns: 1_000_000,
            segment_uid: None,
            title: None,
            muxing_app: None,
            writing_app: None,
            track_list: Vec::new(),
        };
        if let Some(info) = &self.info {
            let body = element_body(info).map_err(|e| self.invalid(e))?;
            for (id, data) in children(body).map_err(|e| self.invalid(e))? {
                match id {
                    ids::TIMECODE_SCALE => header.timecode_scale_ns = read_uint(data),
                    ids::SEGMENT_UID => header.segment_uid = Some(data.to_vec()),
                    ids::TITLE => header.title = Some(read_string(data)),
                    ids::MUXING_APP => header.muxing_app = Some(read_string(data)),
                    ids::WRITING_APP => header.writing_app = Some(read_string(data)),
                    _ => {}
                }
            }
            if header.timecode_scale_ns == 0 {
                return Err(self.invalid("TimecodeScale is 0"));
            }
        }
        let body = element_body(&tracks).map_err(|e| self.invalid(e))?;
        for (id, data) in children(body).map_err(|e| self.invalid(e))? {
            if id == ids::TRACK_ENTRY {
                header
                    .track_list
                    .push(parse_track(data).map_err(|e| self.invalid(e))?);
            }
        }
        if header.track_list.is_empty() {
            return Err(self.invalid("Tracks has no TrackEntry"));
        }
        if header.track_list.len() > self.limits.max_tracks {
            return Err(self.error(
                RuleKind::MoreThanAllowedTracks,
                format!(
                    "{} tracks, at most {} allowed",
                    header.track_list.len(),
                    self.limits.max_tracks
                ),
            ));
        }
        let numbers: BTreeSet<u64> = header.track_list.iter().map(|t| t.number).collect();
        if numbers.len() != header.track_list.len() || numbers.contains(&0) {
            return Err(self.invalid("TrackNumbers must be unique and non-zero"));
        }
        Ok(Arc::new(header))
    }

    fn ends_unknown_cluster(id: u32) -> bool {
        matches!(
            id,
            ids::CLUSTER
                | ids::TAGS
                | ids::CUES
                | ids::INFO
                | ids::TRACKS
                | ids::SEEK_HEAD
                | ids::CHAPTERS
                | ids::ATTACHMENTS
                | ids::EBML
                | ids::SEGMENT
        )
    }

    fn step_cluster(&mut self, events: &mut Vec<Event>) -> Result<bool, RuleError> {
        if self.cluster_end == Some(self.consumed) {
            events.push(Event::FragmentCompleted(self.complete_fragment()?));
            self.stage = Stage::SegmentBody;
            return Ok(true);
        }
        let Some(h) = self.read_header()? else {
            return Ok(false);
        };
        if self.cluster_end.is_none() && Self::ends_unknown_cluster(h.id) {
            if h.id == ids::TAGS {
                let Some(total) = self.whole_element(h, MAX_HEADER_ELEMENT)? else {
                    return Ok(false);
                };
                let tags =
                    parse_tags(&self.buf[h.header_len..total]).map_err(|e| self.invalid(e))?;
                let el = self.consume(total);
                let end = tags.iter().any(|(n, _)| n == END_OF_FRAGMENT_TAG);
                let open = self.open_mut();
                open.trailing.extend_from_slice(&el);
                open.trailing_tags.extend(tags);
                if !end {
                    // Whose it is depends on what follows.
                    return Ok(true);
                }
                self.attach_trailing();
                let mut done = self.complete_fragment()?;
                done.end_of_fragment = true;
                events.push(Event::FragmentCompleted(done));
                self.stage = Stage::SegmentBody;
                return Ok(true);
            }
            // The next fragment's Tags came before its Cluster.
            let open = self.open_mut();
            let (trailing, tags) = (
                std::mem::take(&mut open.trailing),
                std::mem::take(&mut open.trailing_tags),
            );
            self.prefix = trailing;
            self.prefix_tags = tags;
            events.push(Event::FragmentCompleted(self.complete_fragment()?));
            self.stage = Stage::SegmentBody;
            return Ok(true);
        }
        if self.open.as_ref().is_some_and(|o| !o.trailing.is_empty()) {
            return Err(self.invalid(format!(
                "Cluster child {:#x} after a top-level Tags element",
                h.id
            )));
        }
        let size = h.size.ok_or_else(|| {
            self.invalid(format!("Cluster child {:#x} has an unknown size", h.id))
        })?;
        let total = h.header_len as u64 + size;
        if let Some(end) = self.cluster_end
            && self.consumed + total > end
        {
            return Err(self.invalid("element overruns its Cluster"));
        }
        let open_len = self.open.as_ref().map_or(0, |f| f.bytes.len() as u64);
        if open_len + total > self.limits.max_fragment_bytes {
            return Err(self.error(
                RuleKind::MaxFragmentSize,
                format!("fragment exceeds {} bytes", self.limits.max_fragment_bytes),
            ));
        }
        if (self.buf.len() as u64) < total {
            return Ok(false);
        }
        let el = self.consume(total as usize);
        let body = &el[h.header_len..];
        match h.id {
            ids::TIMECODE => {
                let timecode = read_uint(body);
                if self.open_fragment_timecode().is_some() {
                    return Err(self.invalid("two Timecodes in one Cluster"));
                }
                self.open_mut().timecode = Some(timecode);
                events.push(Event::FragmentStarted { timecode });
                if let Some(prev) = self.prev_timecode
                    && timecode < prev
                {
                    return Err(self.error(
                        RuleKind::TimecodeLesserThanPrevious,
                        format!("fragment timecode {timecode} < previous {prev}"),
                    ));
                }
            }
            ids::SIMPLE_BLOCK => self.block(body, None, &el, events)?,
            ids::BLOCK_GROUP => {
                let kids = children(body).map_err(|e| self.invalid(e))?;
                let block = kids
                    .iter()
                    .find(|(id, _)| *id == ids::BLOCK)
                    .map(|(_, d)| *d)
                    .ok_or_else(|| self.invalid("BlockGroup without Block"))?;
                let key = !kids.iter().any(|(id, _)| *id == ids::REFERENCE_BLOCK);
                self.block(block, Some(key), &el, events)?;
            }
            _ => {}
        }
        self.open_mut().bytes.extend_from_slice(&el);
        Ok(true)
    }

    /// The Tags after the open Cluster belong to it.
    fn attach_trailing(&mut self) {
        if let Some(open) = self.open.as_mut() {
            let trailing = std::mem::take(&mut open.trailing);
            open.bytes.extend_from_slice(&trailing);
            let tags = std::mem::take(&mut open.trailing_tags);
            open.tags.extend(tags);
        }
    }

    fn open_mut(&mut self) -> &mut OpenFragment {
        self.open.as_mut().expect("a Cluster is open")
    }

    fn block(
        &mut self,
        data: &[u8],
        key_from_group: Option<bool>,
        element: &Bytes,
        events: &mut Vec<Event>,
    ) -> Result<(), RuleError> {
        let Some(cluster_tc) = self.open.as_ref().and_then(|f| f.timecode) else {
            return Err(self.invalid("block before the Cluster Timecode"));
        };
        let (track, n) = read_vint(data).ok_or_else(|| self.invalid("bad block track number"))?;
        if data.len() < n + 3 {
            return Err(self.invalid("block header truncated"));
        }
        let rel = i16::from_be_bytes([data[n], data[n + 1]]);
        let flags = data[n + 2];
        if !self.track_numbers.contains(&track) {
            return Err(self.error(
                RuleKind::TrackNumberMismatch,
                format!("block of track {track}, which Tracks does not declare"),
            ));
        }
        let frames = if flags & 0x06 != 0 {
            1 + *data
                .get(n + 3)
                .ok_or_else(|| self.invalid("lacing header truncated"))? as u64
        } else {
            1
        };
        // A Cluster Timecode beyond i64 (or a block past it) is no timecode the service takes.
        let Some((cluster_tc, ts)) = i64::try_from(cluster_tc)
            .ok()
            .and_then(|tc| Some((tc, tc.checked_add(i64::from(rel))?)))
        else {
            return Err(self.invalid(format!(
                "frame timecode {cluster_tc} {rel:+} is out of range"
            )));
        };
        if let Some(prev) = self.prev_last_frame
            && ts <= prev
        {
            return Err(self.error(
                RuleKind::TimecodeLesserThanPrevious,
                format!("frame at {ts} is not after the previous fragment's last frame at {prev}"),
            ));
        }
        let scale = self
            .header
            .as_ref()
            .map_or(1_000_000, |h| h.timecode_scale_ns);
        let max_units = (self.limits.max_fragment_duration.as_nanos() / scale as u128) as i64;
        let open = self.open_mut();
        let first = open.first_frame.map_or(ts, |f| f.min(ts));
        open.first_frame = Some(first);
        let last = open.last_frame.map_or(ts, |l| l.max(ts));
        open.last_frame = Some(last);
        *open.frames_per_track.entry(track).or_default() += frames;
        let key = key_from_group.unwrap_or(flags & 0x80 != 0);
        if key {
            open.key_frames += 1;
        }
        if self.report_blocks {
            events.push(Event::Block {
                track,
                timecode: ts,
                element: element.clone(),
            });
        }
        let start = first.min(cluster_tc);
        if last.saturating_sub(start) > max_units {
            return Err(self.error(
                RuleKind::MaxFragmentDuration,
                format!(
                    "fragment spans more than {:?}",
                    self.limits.max_fragment_duration
                ),
            ));
        }
        Ok(())
    }

    fn complete_fragment(&mut self) -> Result<ParsedFragment, RuleError> {
        let Some(timecode) = self.open_fragment_timecode() else {
            return Err(self.invalid("Cluster without Timecode"));
        };
        if self.limits.require_frames_for_every_track {
            let open = self.open.as_ref().expect("a Cluster is open");
            if let Some(missing) = self
                .track_numbers
                .iter()
                .find(|n| !open.frames_per_track.contains_key(n))
            {
                return Err(self.error(
                    RuleKind::FramesMissingForTrack,
                    format!("no frame of track {missing} in the fragment"),
                ));
            }
        }
        let open = self.open.take().expect("a Cluster is open");
        self.cluster_end = None;
        let first_frame = open.first_frame.unwrap_or(timecode as i64);
        let last_frame = open.last_frame.unwrap_or(timecode as i64);
        self.prev_timecode = Some(timecode);
        if open.last_frame.is_some() {
            self.prev_last_frame = Some(last_frame);
        }
        Ok(ParsedFragment {
            timecode,
            bytes: open.bytes.freeze(),
            frames_per_track: open.frames_per_track,
            key_frames: open.key_frames,
            first_frame,
            last_frame,
            tags: open.tags,
            end_of_fragment: false,
        })
    }
}

/// Reads a size-style vint (marker bit removed). Returns the value and its length.
fn read_vint(b: &[u8]) -> Option<(u64, usize)> {
    let first = *b.first()?;
    let len = first.leading_zeros() as usize + 1;
    if len > 8 || b.len() < len {
        return None;
    }
    let mask = if len == 8 { 0 } else { 0xFFu8 >> len };
    let v = b[1..len]
        .iter()
        .fold((first & mask) as u64, |acc, &x| acc << 8 | x as u64);
    Some((v, len))
}

/// The payload of a complete element held in `el` (header included).
fn element_body(el: &[u8]) -> Result<&[u8], String> {
    let (_, rest) = split_element(el)?.ok_or("truncated element")?;
    Ok(rest)
}

/// Splits the first element of `b` into (id, body); the body must be complete and of known size.
fn split_element(b: &[u8]) -> Result<Option<(u32, &[u8])>, String> {
    if b.is_empty() {
        return Ok(None);
    }
    let id_len = b[0].leading_zeros() as usize + 1;
    if id_len > 4 || b.len() < id_len {
        return Err(format!("invalid element ID byte {:#04x}", b[0]));
    }
    let id = b[..id_len].iter().fold(0u32, |acc, &x| acc << 8 | x as u32);
    let (size, size_len) = read_vint(&b[id_len..]).ok_or("invalid element size")?;
    let start = id_len + size_len;
    let end = start
        .checked_add(usize::try_from(size).map_err(|_| "element too large")?)
        .ok_or("element too large")?;
    if end > b.len() {
        return Err(format!("element {id:#x} overruns its parent"));
    }
    Ok(Some((id, &b[start..end])))
}

/// The children of a complete master element body.
fn children(mut b: &[u8]) -> Result<Vec<(u32, &[u8])>, String> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let (id, body) = split_element(b)?.expect("non-empty");
        let consumed = body.as_ptr() as usize - b.as_ptr() as usize + body.len();
        out.push((id, body));
        b.advance(consumed);
    }
    Ok(out)
}

fn read_uint(b: &[u8]) -> u64 {
    b.iter().take(8).fold(0u64, |acc, &x| acc << 8 | x as u64)
}

fn read_float(b: &[u8]) -> Option<f64> {
    match b.len() {
        4 => Some(f32::from_be_bytes(b.try_into().ok()?) as f64),
        8 => Some(f64::from_be_bytes(b.try_into().ok()?)),
        _ => None,
    }
}

fn read_string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn parse_track(b: &[u8]) -> Result<TrackInfo, String> {
    let mut t = TrackInfo {
        number: 0,
        uid: None,
        track_type: None,
        name: None,
        codec_id: None,
        codec_private_len: 0,
        width: None,
        height: None,
        sampling_frequency: None,
        channels: None,
    };
    for (id, data) in children(b)? {
        match id {
            ids::TRACK_NUMBER => t.number = read_uint(data),
            ids::TRACK_UID => t.uid = Some(read_uint(data)),
            ids::TRACK_TYPE => t.track_type = Some(read_uint(data)),
            ids::NAME => t.name = Some(read_string(data)),
            ids::CODEC_ID => t.codec_id = Some(read_string(data)),
            ids::CODEC_PRIVATE => t.codec_private_len = data.len(),
            ids::VIDEO => {
                for (id, data) in children(data)? {
                    match id {
                        ids::PIXEL_WIDTH => t.width = Some(read_uint(data)),
                        ids::PIXEL_HEIGHT => t.height = Some(read_uint(data)),
                        _ => {}
                    }
                }
            }
            ids::AUDIO => {
                for (id, data) in children(data)? {
                    match id {
                        ids::SAMPLING_FREQUENCY => t.sampling_frequency = read_float(data),
                        ids::CHANNELS => t.channels = Some(read_uint(data)),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if t.number == 0 {
        return Err("TrackEntry without TrackNumber".into());
    }
    Ok(t)
}

/// SimpleTags nested deeper than this are refused (the recursion would otherwise let a body of a
/// few hundred KB overflow the stack of the task reading it).
const MAX_SIMPLE_TAG_DEPTH: usize = 16;

/// Every SimpleTag (nested ones too) of a Tags body, as (TagName, TagString).
fn parse_tags(b: &[u8]) -> Result<Vec<(String, String)>, String> {
    fn simple(b: &[u8], out: &mut Vec<(String, String)>, depth: usize) -> Result<(), String> {
        if depth > MAX_SIMPLE_TAG_DEPTH {
            return Err(format!(
                "SimpleTags nested deeper than {MAX_SIMPLE_TAG_DEPTH}"
            ));
        }
        let mut name = None;
        let mut value = String::new();
        for (id, data) in children(b)? {
            match id {
                ids::TAG_NAME => name = Some(read_string(data)),
                ids::TAG_STRING => value = read_string(data),
                ids::SIMPLE_TAG => simple(data, out, depth + 1)?,
                _ => {}
            }
        }
        if let Some(name) = name {
            out.push((name, value));
        }
        Ok(())
    }
    let mut out = Vec::new();
    for (id, tag) in children(b)? {
        if id != ids::TAG {
            continue;
        }
        for (id, data) in children(tag)? {
            if id == ids::SIMPLE_TAG {
                simple(data, &mut out, 1)?;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn media(name: &str) -> Vec<u8> {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/data")
            .join(name);
        std::fs::read(p).expect("test data")
    }

    fn split(data: &[u8], sizes: &mut dyn FnMut() -> usize) -> (Vec<Event>, Result<(), RuleError>) {
        let mut s = Splitter::new(Limits::default());
        let mut events = Vec::new();
        let mut i = 0;
        while i < data.len() {
            let n = sizes().clamp(1, data.len() - i);
            if let Err(e) = s.push(&data[i..i + n], &mut events) {
                return (events, Err(e));
            }
            i += n;
        }
        let r = s.finish(&mut events);
        (events, r)
    }

    fn fragments(events: &[Event]) -> Vec<(u64, Bytes)> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::FragmentCompleted(f) => Some((f.timecode, f.bytes.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn any_chunking_gives_the_same_fragments() {
        for (name, count) in [
            ("kvs-cpp-test-stream-1_0.mkv", 37),
            ("kvs-java-clusters.mkv", 8),
        ] {
            let data = media(name);
            let (whole, r) = split(&data, &mut || usize::MAX);
            r.unwrap();
            let whole = fragments(&whole);
            assert_eq!(whole.len(), count, "{name}");
            let mut x = 0x9E37_79B9u64;
            for max in [1usize, 7, 1000, 65_536] {
                let (events, r) = split(&data, &mut || {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    1 + (x % max as u64) as usize
                });
                r.unwrap();
                assert_eq!(fragments(&events), whole, "{name}, chunks up to {max}");
                let started = events
                    .iter()
                    .filter(|e| matches!(e, Event::FragmentStarted { .. }))
                    .count();
                assert_eq!(started, count);
                assert!(matches!(events[0], Event::Header(_)));
            }
        }
    }

    /// A Tags element with one SimpleTag, written by hand.
    fn tags(name: &str, value: &str) -> Vec<u8> {
        fn el(id: &[u8], body: &[u8]) -> Vec<u8> {
            let mut v = id.to_vec();
            v.extend_from_slice(&((body.len() as u64) | (1 << 56)).to_be_bytes());
            v.extend_from_slice(body);
            v
        }
        let simple = [
            el(&[0x45, 0xA3], name.as_bytes()),
            el(&[0x44, 0x87], value.as_bytes()),
        ]
        .concat();
        el(
            &[0x12, 0x54, 0xC3, 0x67],
            &el(&[0x73, 0x73], &el(&[0x67, 0xC8], &simple)),
        )
    }

    #[test]
    fn tags_after_a_cluster_belong_to_it_before_an_end_of_fragment_and_to_the_next_before_a_cluster()
     {
        let data = media("kvs-cpp-test-stream-1_0.mkv");
        let clusters: Vec<usize> = data
            .windows(5)
            .enumerate()
            .filter(|(_, w)| *w == [0x1F, 0x43, 0xB6, 0x75, 0xFF])
            .map(|(i, _)| i)
            .take(3)
            .collect();
        let mut body = data[..clusters[1]].to_vec();
        body.extend(tags("late", "1"));
        body.extend(tags(END_OF_FRAGMENT_TAG, ""));
        body.extend(&data[clusters[1]..clusters[2]]);
        body.extend(tags("next", "2"));
        body.extend(&data[clusters[2]..]);
        let (events, r) = split(&body, &mut || 333);
        r.unwrap();
        let frags: Vec<&ParsedFragment> = events
            .iter()
            .filter_map(|e| match e {
                Event::FragmentCompleted(f) => Some(f),
                _ => None,
            })
            .collect();
        let names = |f: &ParsedFragment| f.tags.iter().map(|t| t.0.clone()).collect::<Vec<_>>();
        // (The file's own metadata tags come first.)
        assert!(names(frags[0]).ends_with(&["late".into(), END_OF_FRAGMENT_TAG.into()]));
        assert!(frags[0].end_of_fragment);
        let ours = |f: &ParsedFragment| {
            names(f)
                .into_iter()
                .filter(|n| ["late", "next"].contains(&n.as_str()))
                .collect::<Vec<_>>()
        };
        assert!(ours(frags[1]).is_empty());
        assert_eq!(ours(frags[2]), vec!["next"]);
        // A block after such Tags is not inside the Cluster any more.
        let mut bad = data[..clusters[1]].to_vec();
        bad.extend(tags("late", "1"));
        let block_at = data[clusters[0]..]
            .windows(1)
            .position(|w| w[0] == 0xA3)
            .unwrap();
        bad.extend(&data[clusters[0] + block_at..clusters[1]]);
        let (_, r) = split(&bad, &mut || 4096);
        assert_eq!(r.unwrap_err().kind, RuleKind::InvalidMkv);
    }

    #[test]
    fn header_and_fragment_details_of_the_cpp_file() {
        let data = media("kvs-cpp-test-stream-1_0.mkv");
        let (events, r) = split(&data, &mut || 4096);
        r.unwrap();
        let Event::Header(h) = &events[0] else {
            panic!("header first")
        };
        assert_eq!(h.timecode_scale_ns, 1_000_000);
        assert_eq!(h.track_list.len(), 1);
        let t = &h.track_list[0];
        assert_eq!(t.codec_id.as_deref(), Some("V_MPEG4/ISO/AVC"));
        assert_eq!((t.width, t.height), (Some(640), Some(480)));
        assert_eq!(t.name.as_deref(), Some("kinesis_video"));
        let frags: Vec<&ParsedFragment> = events
            .iter()
            .filter_map(|e| match e {
                Event::FragmentCompleted(f) => Some(f),
                _ => None,
            })
            .collect();
        assert_eq!(frags[0].key_frames, 1);
        assert_eq!(frags[0].frames_per_track.get(&1), Some(&45));
        assert_eq!(frags[0].last_frame - frags[0].first_frame, 1467);
        // The file ends with an end-of-fragment tag, which closes the last fragment.
        assert!(frags[36].end_of_fragment);
        assert!(!frags[35].end_of_fragment);
        let total: usize = frags.iter().map(|f| f.bytes.len()).sum();
        assert_eq!(total, data.len() - 0x115);
    }

    #[test]
    fn truncation_and_garbage_are_invalid_mkv() {
        let data = media("kvs-cpp-test-stream-1_0.mkv");
        let (events, r) = split(&data[..data.len() - 100], &mut || 10_000);
        assert_eq!(fragments(&events).len(), 36);
        let e = r.unwrap_err();
        assert_eq!(e.kind, RuleKind::InvalidMkv);
        assert_eq!(e.fragment_timecode, Some(1_703_120_844_149));
        let (_, r) = split(b"GET / HTTP/1.1\r\n", &mut || 3);
        assert_eq!(r.unwrap_err().kind, RuleKind::InvalidMkv);
    }

    #[test]
    fn frame_timecodes_beyond_i64_are_invalid_mkv() {
        // Found by a crafted input through the fuzz target local_mkv (10 minutes of fuzzing did
        // not reach it): a Cluster Timecode near or above i64::MAX overflowed
        // `cluster + relative` (a panic with overflow checks, a wrapped timecode without).
        let header = &media("kvs-cpp-test-stream-1_0.mkv")[..277];
        let block = |rel: i16| {
            let mut b = vec![0xA3, 0x85, 0x81];
            b.extend_from_slice(&rel.to_be_bytes());
            b.extend_from_slice(&[0x80, b'x']);
            b
        };
        // Cluster (unknown size) + Timecode (8 bytes).
        let cluster_start = |body: &mut Vec<u8>, timecode: u64| {
            body.extend_from_slice(&[0x1F, 0x43, 0xB6, 0x75, 0xFF, 0xE7, 0x88]);
            body.extend_from_slice(&timecode.to_be_bytes());
        };
        for (timecode, rel) in [(i64::MAX as u64, 1), (1 << 63, -1), (u64::MAX, 0)] {
            let mut body = header.to_vec();
            cluster_start(&mut body, timecode);
            body.extend(block(rel));
            let (_, r) = split(&body, &mut || usize::MAX);
            let e = r.unwrap_err();
            assert_eq!(e.kind, RuleKind::InvalidMkv, "{timecode} {rel}");
            assert!(e.detail.contains("out of range"), "{}", e.detail);
        }
        // The largest timecode that fits is still taken.
        let mut body = header.to_vec();
        cluster_start(&mut body, i64::MAX as u64 - 1);
        body.extend(block(1));
        let (events, r) = split(&body, &mut || usize::MAX);
        r.unwrap();
        assert_eq!(fragments(&events).len(), 1);
    }

    #[test]
    fn deeply_nested_simple_tags_are_invalid_mkv() {
        // Found by a crafted input through the fuzz target local_mkv: 200 000 nested
        // SimpleTags (a 2 MB Tags element, under the 4 MiB limit) overflowed the stack.
        let nested = |depth: usize| {
            let size8 = |n: usize| ((1u64 << 56) | n as u64).to_be_bytes();
            // TagName "n" in `depth` SimpleTags, in a Tag, in Tags (all sizes 8 bytes wide).
            let simple_len = |level: usize| 10 * level + 10 + 1;
            let mut body = media("kvs-cpp-test-stream-1_0.mkv")[..277].to_vec();
            body.extend([0x12, 0x54, 0xC3, 0x67]);
            body.extend(size8(simple_len(depth) + 10));
            body.extend([0x73, 0x73]);
            body.extend(size8(simple_len(depth)));
            for level in (1..=depth).rev() {
                body.extend([0x67, 0xC8]);
                body.extend(size8(simple_len(level) - 10));
            }
            body.extend([0x45, 0xA3]);
            body.extend(size8(1));
            body.push(b'n');
            body
        };
        let (_, r) = split(&nested(200_000), &mut || 65_536);
        let e = r.unwrap_err();
        assert_eq!(e.kind, RuleKind::InvalidMkv);
        assert!(e.detail.contains("nested deeper"), "{}", e.detail);
        // A few levels are fine.
        let mut s = Splitter::new(Limits::default());
        s.push(&nested(MAX_SIMPLE_TAG_DEPTH), &mut Vec::new())
            .unwrap();
    }
}
