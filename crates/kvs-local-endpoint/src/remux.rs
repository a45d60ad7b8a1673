//! Remuxing stored Matroska into MP4 for playback (HLS segments, GetClip), with GStreamer.
//!
//! Owns: running `appsrc ! matroskademux ! {h264parse|h265parse|aacparse} ! mp4mux ! fakesink`
//! on a stored fragment (or a run of them) and collecting what the muxer wrote. The MP4 is
//! written by GStreamer's `mp4mux`; this module only splits its output into top-level boxes and,
//! for HLS, adjusts three fields so independently remuxed fragments line up on one timeline:
//! `tfdt` (each track's decode time, which `mp4mux` starts at 0 in every run), `mfhd` (sequence
//! numbers) and the durations in `mvhd`/`mehd` (zeroed: a live presentation has none).
//!
//! Tracks: the first H.264 or H.265 video track and the first AAC audio track. Other tracks
//! (G.711 audio, a second video) are left out: `mp4mux` does not carry G.711, and HLS players
//! expect at most one of each.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use gst::prelude::*;

/// Longest a remux may take before it is abandoned.
const TIMEOUT: Duration = Duration::from_secs(30);

/// `mp4mux fragment-duration` (ms) for HLS segments: longer than any KVS fragment (10-20 s), so
/// each KVS fragment becomes one MP4 fragment per track.
const FRAGMENT_DURATION_MS: u32 = 60_000;

#[derive(Debug, thiserror::Error)]
pub(crate) enum RemuxError {
    #[error("GStreamer: {0}")]
    Gst(String),
    #[error("the media has no H.264 or H.265 video track")]
    NoVideo,
    #[error("unexpected MP4 output: {0}")]
    Output(&'static str),
    #[error("remuxing did not finish within {0:?}")]
    Timeout(Duration),
}

impl From<gst::glib::Error> for RemuxError {
    fn from(e: gst::glib::Error) -> Self {
        RemuxError::Gst(e.to_string())
    }
}

impl From<gst::glib::BoolError> for RemuxError {
    fn from(e: gst::glib::BoolError) -> Self {
        RemuxError::Gst(e.to_string())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TrackKind {
    Video,
    Audio,
}

/// A track the muxer received.
#[derive(Debug, Clone, Default)]
struct TrackInput {
    /// RFC 6381 codec string (`avc1.42c01e`, `mp4a.40.2`, …).
    codec: Option<String>,
    /// Decode timestamp of its first sample, ns, on the Matroska timeline.
    first_ns: Option<u64>,
    resolution: Option<(i32, i32)>,
}

/// A track of the MP4 output, as its `moov` describes it.
#[derive(Debug, Clone, Copy)]
struct Mp4Track {
    id: u32,
    kind: TrackKind,
    timescale: u32,
}

/// One remuxed KVS fragment as fragmented MP4.
#[derive(Debug)]
pub(crate) struct Fragmented {
    /// `ftyp` + `moov` (durations zeroed).
    pub init: Bytes,
    /// `moof` + `mdat` pairs as muxed (decode times from 0).
    media: Vec<u8>,
    tracks: Vec<(Mp4Track, TrackInput)>,
}

impl Fragmented {
    /// RFC 6381 codecs of the tracks, video first (`avc1.64001f,mp4a.40.2`).
    pub fn codecs(&self) -> String {
        let mut v: Vec<_> = self.tracks.iter().collect();
        v.sort_by_key(|(t, _)| t.kind != TrackKind::Video);
        v.iter()
            .filter_map(|(_, i)| i.codec.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn resolution(&self) -> Option<(i32, i32)> {
        self.tracks.iter().find_map(|(_, i)| i.resolution)
    }

    /// The earliest first decode timestamp of its tracks (ns, Matroska timeline).
    pub fn first_ns(&self) -> u64 {
        self.tracks
            .iter()
            .filter_map(|(_, i)| i.first_ns)
            .min()
            .unwrap_or(0)
    }

    /// The media segment with decode times relative to `zero_ns` (on the Matroska timeline) and
    /// movie fragment sequence numbers from `sequence`.
    pub fn media_segment(&self, zero_ns: u64, sequence: u32) -> Result<Vec<u8>, RemuxError> {
        let mut out = self.media.clone();
        let mut seq = sequence;
        // Each track's first tfdt in this output, to keep later ones at their distance.
        let mut first_tfdt: Vec<(u32, u64)> = Vec::new();
        for moof in children(&out, 0, out.len())? {
            if &moof.ty != b"moof" {
                continue;
            }
            for b in children(&out, moof.body, moof.end)? {
                match &b.ty {
                    b"mfhd" => {
                        put_u32(&mut out, b.body + 4, seq)?;
                        seq = seq.wrapping_add(1);
                    }
                    b"traf" => self.patch_traf(&mut out, &b, zero_ns, &mut first_tfdt)?,
                    _ => {}
                }
            }
        }
        Ok(out)
    }

    fn patch_traf(
        &self,
        out: &mut [u8],
        traf: &BoxRef,
        zero_ns: u64,
        first_tfdt: &mut Vec<(u32, u64)>,
    ) -> Result<(), RemuxError> {
        let kids = children(out, traf.body, traf.end)?;
        let tfhd = kids
            .iter()
            .find(|b| &b.ty == b"tfhd")
            .ok_or(RemuxError::Output("traf without tfhd"))?;
        let track_id = get_u32(out, tfhd.body + 4)?;
        let Some(tfdt) = kids.iter().find(|b| &b.ty == b"tfdt") else {
            return Ok(());
        };
        let Some((track, input)) = self.tracks.iter().find(|(t, _)| t.id == track_id) else {
            return Ok(());
        };
        let v1 = *out.get(tfdt.body).ok_or(RemuxError::Output("short tfdt"))? == 1;
        let old = if v1 {
            get_u64(out, tfdt.body + 4)?
        } else {
            u64::from(get_u32(out, tfdt.body + 4)?)
        };
        let first = match first_tfdt.iter().find(|(id, _)| *id == track_id) {
            Some((_, f)) => *f,
            None => {
                first_tfdt.push((track_id, old));
                old
            }
        };
        let start_ns = input.first_ns.unwrap_or(zero_ns).saturating_sub(zero_ns);
        let start =
            (u128::from(start_ns) * u128::from(track.timescale) + 500_000_000) / 1_000_000_000;
        let new = (start as u64).saturating_add(old - first.min(old));
        if v1 {
            put_u64(out, tfdt.body + 4, new)
        } else {
            // Version 0 holds 32 bits: 13 h at 90 kHz from the start of the stored file.
            put_u32(out, tfdt.body + 4, new as u32)
        }
    }
}

/// Remuxes one fragment (a stored file's header followed by the fragment's bytes) into
/// fragmented MP4.
pub(crate) fn fragmented(mkv: Vec<u8>) -> Result<Fragmented, RemuxError> {
    gst::init()?;
    let mux = gst::ElementFactory::make("mp4mux")
        .property("fragment-duration", FRAGMENT_DURATION_MS)
        .property("streamable", true)
        .build()?;
    let (bytes, inputs) = run(mkv, mux, true)?;
    let mut init = Vec::new();
    let mut media = Vec::new();
    for b in children(&bytes, 0, bytes.len())? {
        match &b.ty {
            b"ftyp" | b"moov" => init.extend_from_slice(&bytes[b.start..b.end]),
            b"moof" | b"mdat" => media.extend_from_slice(&bytes[b.start..b.end]),
            _ => {}
        }
    }
    let mp4_tracks = zero_durations_and_list_tracks(&mut init)?;
    let tracks = mp4_tracks
        .into_iter()
        .map(|t| {
            let input = inputs
                .iter()
                .find(|(k, _)| *k == t.kind)
                .map(|(_, i)| i.clone())
                .unwrap_or_default();
            (t, input)
        })
        .collect();
    Ok(Fragmented {
        init: init.into(),
        media,
        tracks,
    })
}

/// Remuxes a run of fragments (a stored file's header followed by their bytes) into one
/// progressive MP4 (`moov` first).
pub(crate) fn clip(mkv: Vec<u8>) -> Result<Vec<u8>, RemuxError> {
    gst::init()?;
    let mux = gst::ElementFactory::make("mp4mux")
        .property("faststart", true)
        .build()?;
    Ok(run(mkv, mux, false)?.0)
}

/// The tracks linked to the muxer, in the order they were linked.
type TrackInputs = Vec<(TrackKind, TrackInput)>;
type Inputs = Arc<Mutex<TrackInputs>>;

/// Runs the pipeline over `mkv` with `mux`; returns what the muxer wrote and the tracks it got.
/// `restart_tracks`: every track starts at running time 0 (fragmented output, whose decode times
/// are rewritten from each track's first timestamp).
fn run(
    mkv: Vec<u8>,
    mux: gst::Element,
    restart_tracks: bool,
) -> Result<(Vec<u8>, TrackInputs), RemuxError> {
    let pipeline = gst::Pipeline::new();
    let src = gst::ElementFactory::make("appsrc")
        .property("caps", gst::Caps::builder("video/x-matroska").build())
        .property("format", gst::Format::Bytes)
        .build()?;
    let demux = gst::ElementFactory::make("matroskademux").build()?;
    let sink = gst::ElementFactory::make("fakesink")
        .property("sync", false)
        .build()?;
    pipeline.add_many([&src, &demux, &mux, &sink])?;
    src.link(&demux)?;
    mux.link(&sink)?;

    let output = Arc::new(Mutex::new(Writer::default()));
    let sink_pad = sink.static_pad("sink").expect("fakesink has a sink pad");
    {
        let output = output.clone();
        sink_pad.add_probe(
            gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM,
            move |_, info| {
                let mut w = output.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(buffer) = info.buffer() {
                    if let Ok(map) = buffer.map_readable() {
                        w.write(&map);
                    }
                } else if let Some(gst::EventView::Segment(s)) = info.event().map(|e| e.view())
                    && let Some(seg) = s.segment().downcast_ref::<gst::format::Bytes>()
                {
                    w.pos = seg.start().map_or(0, |b| *b as usize);
                }
                gst::PadProbeReturn::Ok
            },
        );
    }

    let inputs: Inputs = Arc::default();
    {
        let inputs = inputs.clone();
        let mux = mux.clone();
        demux.connect_pad_added(move |demux, pad| {
            if let Err(e) = link_track(demux, pad, &mux, &inputs, restart_tracks) {
                tracing::warn!(error = %e, "remux: cannot link a track");
            }
        });
    }

    let result = (|| {
        pipeline
            .set_state(gst::State::Playing)
            .map_err(|e| RemuxError::Gst(e.to_string()))?;
        let flow = src
            .emit_by_name::<gst::FlowReturn>("push-buffer", &[&gst::Buffer::from_mut_slice(mkv)]);
        if flow != gst::FlowReturn::Ok {
            return Err(RemuxError::Gst(format!(
                "appsrc refused the input: {flow:?}"
            )));
        }
        let _ = src.emit_by_name::<gst::FlowReturn>("end-of-stream", &[]);
        let bus = pipeline.bus().expect("a pipeline has a bus");
        let msg = bus
            .timed_pop_filtered(
                gst::ClockTime::from_nseconds(TIMEOUT.as_nanos() as u64),
                &[gst::MessageType::Eos, gst::MessageType::Error],
            )
            .ok_or(RemuxError::Timeout(TIMEOUT))?;
        if let gst::MessageView::Error(e) = msg.view() {
            return Err(RemuxError::Gst(format!("{} ({:?})", e.error(), e.debug())));
        }
        Ok(())
    })();
    let _ = pipeline.set_state(gst::State::Null);
    result?;
    let inputs = std::mem::take(&mut *inputs.lock().unwrap_or_else(|e| e.into_inner()));
    if !inputs.iter().any(|(k, _)| *k == TrackKind::Video) {
        return Err(RemuxError::NoVideo);
    }
    let bytes = std::mem::take(&mut output.lock().unwrap_or_else(|e| e.into_inner()).bytes);
    Ok((bytes, inputs))
}

/// The muxer's output, written where its byte segments say (it may go back to fix a header).
#[derive(Debug, Default)]
struct Writer {
    bytes: Vec<u8>,
    pos: usize,
}

impl Writer {
    fn write(&mut self, data: &[u8]) {
        let end = self.pos + data.len();
        if self.bytes.len() < end {
            self.bytes.resize(end, 0);
        }
        self.bytes[self.pos..end].copy_from_slice(data);
        self.pos = end;
    }
}

/// Links a demuxer pad to a parser and the muxer, or to a fakesink when the track is left out.
fn link_track(
    demux: &gst::Element,
    pad: &gst::Pad,
    mux: &gst::Element,
    inputs: &Inputs,
    restart: bool,
) -> Result<(), RemuxError> {
    let bin = demux
        .parent()
        .and_downcast::<gst::Bin>()
        .ok_or(RemuxError::Gst("the demuxer has no bin".into()))?;
    let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
    let s = caps.structure(0).ok_or(RemuxError::Output("empty caps"))?;
    let choice = match s.name().as_str() {
        "video/x-h264" => Some((TrackKind::Video, "h264parse")),
        "video/x-h265" => Some((TrackKind::Video, "h265parse")),
        "audio/mpeg" if s.get::<i32>("mpegversion").is_ok_and(|v| v == 4) => {
            Some((TrackKind::Audio, "aacparse"))
        }
        _ => None,
    };
    let mut guard = inputs.lock().unwrap_or_else(|e| e.into_inner());
    let choice = choice.filter(|(k, _)| !guard.iter().any(|(g, _)| g == k));
    let Some((kind, parser)) = choice else {
        tracing::debug!(caps = %caps, "remux: track left out");
        let sink = gst::ElementFactory::make("fakesink")
            .property("sync", false)
            .build()?;
        bin.add(&sink)?;
        sink.sync_state_with_parent()?;
        pad.link(&sink.static_pad("sink").expect("fakesink has a sink pad"))
            .map_err(|e| RemuxError::Gst(format!("{e:?}")))?;
        return Ok(());
    };
    let index = guard.len();
    guard.push((kind, TrackInput::default()));
    drop(guard);

    let queue = gst::ElementFactory::make("queue")
        .property("max-size-buffers", 0u32)
        .property("max-size-bytes", 0u32)
        .property("max-size-time", 0u64)
        .build()?;
    let parse = gst::ElementFactory::make(parser).build()?;
    bin.add_many([&queue, &parse])?;
    queue.link(&parse)?;
    let template = if kind == TrackKind::Video {
        "video_%u"
    } else {
        "audio_%u"
    };
    let mux_pad = mux
        .request_pad_simple(template)
        .ok_or(RemuxError::Gst(format!("mp4mux gave no {template} pad")))?;
    let parse_src = parse.static_pad("src").expect("parsers have a src pad");
    parse_src
        .link(&mux_pad)
        .map_err(|e| RemuxError::Gst(format!("{e:?}")))?;
    let inputs = inputs.clone();
    parse_src.add_probe(
        gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM,
        move |pad, info| {
            let mut guard = inputs.lock().unwrap_or_else(|e| e.into_inner());
            let input = &mut guard[index].1;
            if let Some(b) = info.buffer() {
                if input.first_ns.is_none() {
                    let ts = b.dts_or_pts();
                    input.first_ns = ts.map(|t| t.nseconds());
                    // The track starts at running time 0: in fragmented output mp4mux places a
                    // track's first sample at decode time 0 anyway and would shift the following
                    // ones by the gap (the demuxer's segment starts at the earliest track, a
                    // left-out one too).
                    let segment = restart
                        .then(|| pad.sticky_event::<gst::event::Segment>(0))
                        .flatten();
                    let running = segment.and_then(|e| {
                        e.segment()
                            .downcast_ref::<gst::ClockTime>()
                            .and_then(|s| s.to_running_time(ts?))
                    });
                    if let Some(rt) = running {
                        pad.set_offset(-(rt.nseconds() as i64));
                    }
                }
            } else if let Some(gst::EventView::Caps(c)) = info.event().map(|e| e.view())
                && let Some(s) = c.caps().structure(0)
            {
                input.codec = codec_string(s);
                if let (Ok(w), Ok(h)) = (s.get::<i32>("width"), s.get::<i32>("height")) {
                    input.resolution = Some((w, h));
                }
            }
            gst::PadProbeReturn::Ok
        },
    );
    for e in [&queue, &parse] {
        e.sync_state_with_parent()?;
    }
    pad.link(&queue.static_pad("sink").expect("queue has a sink pad"))
        .map_err(|e| RemuxError::Gst(format!("{e:?}")))?;
    Ok(())
}

/// The RFC 6381 codec string of parsed caps, from their codec data.
fn codec_string(s: &gst::StructureRef) -> Option<String> {
    let data = s.get::<gst::Buffer>("codec_data").ok()?;
    let data = data.map_readable().ok()?;
    match s.name().as_str() {
        "video/x-h264" if data.len() >= 4 => Some(format!(
            "avc1.{:02x}{:02x}{:02x}",
            data[1], data[2], data[3]
        )),
        "video/x-h265" if data.len() >= 13 => {
            // hvcC: profile space/tier/idc, compatibility flags, constraint flags, level.
            let space = ["", "A", "B", "C"][usize::from(data[1] >> 6)];
            let tier = if data[1] & 0x20 != 0 { 'H' } else { 'L' };
            let idc = data[1] & 0x1f;
            let compat = u32::from_be_bytes([data[2], data[3], data[4], data[5]]).reverse_bits();
            let mut constraints: Vec<u8> = data[6..12].to_vec();
            while constraints.last() == Some(&0) {
                constraints.pop();
            }
            let mut out = format!("hvc1.{space}{idc}.{compat:X}.{tier}{}", data[12]);
            for c in constraints {
                out.push_str(&format!(".{c:X}"));
            }
            Some(out)
        }
        "audio/mpeg" if !data.is_empty() => Some(format!("mp4a.40.{}", data[0] >> 3)),
        _ => None,
    }
}

/// A box: type, where it starts, where its body starts, where it ends.
#[derive(Debug, Clone, Copy)]
struct BoxRef {
    ty: [u8; 4],
    start: usize,
    body: usize,
    end: usize,
}

/// The boxes in `data[start..end]`.
fn children(data: &[u8], start: usize, end: usize) -> Result<Vec<BoxRef>, RemuxError> {
    let mut out = Vec::new();
    let mut pos = start;
    while pos + 8 <= end {
        let size32 = get_u32(data, pos)? as usize;
        let ty: [u8; 4] = data[pos + 4..pos + 8].try_into().expect("4 bytes");
        let (size, header) = match size32 {
            0 => (end - pos, 8),
            1 => (get_u64(data, pos + 8)? as usize, 16),
            n => (n, 8),
        };
        if size < header || pos + size > end {
            return Err(RemuxError::Output("box size out of bounds"));
        }
        out.push(BoxRef {
            ty,
            start: pos,
            body: pos + header,
            end: pos + size,
        });
        pos += size;
    }
    Ok(out)
}

/// Zeroes the presentation durations of an init segment (`mvhd`, `mehd`) and lists its tracks.
fn zero_durations_and_list_tracks(init: &mut [u8]) -> Result<Vec<Mp4Track>, RemuxError> {
    let moov = children(init, 0, init.len())?
        .into_iter()
        .find(|b| &b.ty == b"moov")
        .ok_or(RemuxError::Output("no moov"))?;
    let mut tracks = Vec::new();
    for b in children(init, moov.body, moov.end)? {
        match &b.ty {
            b"mvhd" => {
                if init[b.body] == 1 {
                    put_u64(init, b.body + 24, 0)?;
                } else {
                    put_u32(init, b.body + 16, 0)?;
                }
            }
            b"mvex" => {
                for m in children(init, b.body, b.end)? {
                    if &m.ty == b"mehd" {
                        if init[m.body] == 1 {
                            put_u64(init, m.body + 4, 0)?;
                        } else {
                            put_u32(init, m.body + 4, 0)?;
                        }
                    }
                }
            }
            b"trak" => tracks.push(trak_info(init, &b)?),
            _ => {}
        }
    }
    Ok(tracks)
}

fn trak_info(data: &[u8], trak: &BoxRef) -> Result<Mp4Track, RemuxError> {
    let kids = children(data, trak.body, trak.end)?;
    let tkhd = kids
        .iter()
        .find(|b| &b.ty == b"tkhd")
        .ok_or(RemuxError::Output("trak without tkhd"))?;
    // tkhd: version/flags, creation and modification times (4 or 8 bytes each), track_ID.
    let id_at = tkhd.body + if data[tkhd.body] == 1 { 20 } else { 12 };
    let id = get_u32(data, id_at)?;
    let mdia = kids
        .iter()
        .find(|b| &b.ty == b"mdia")
        .ok_or(RemuxError::Output("trak without mdia"))?;
    let mut timescale = None;
    let mut kind = None;
    for b in children(data, mdia.body, mdia.end)? {
        match &b.ty {
            b"mdhd" => {
                let at = b.body + if data[b.body] == 1 { 20 } else { 12 };
                timescale = Some(get_u32(data, at)?);
            }
            b"hdlr" => {
                kind = match data.get(b.body + 8..b.body + 12) {
                    Some(b"vide") => Some(TrackKind::Video),
                    Some(b"soun") => Some(TrackKind::Audio),
                    _ => None,
                }
            }
            _ => {}
        }
    }
    Ok(Mp4Track {
        id,
        kind: kind.ok_or(RemuxError::Output("track of unknown kind"))?,
        timescale: timescale.ok_or(RemuxError::Output("trak without mdhd"))?,
    })
}

fn get_u32(data: &[u8], at: usize) -> Result<u32, RemuxError> {
    data.get(at..at + 4)
        .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
        .ok_or(RemuxError::Output("truncated box"))
}

fn get_u64(data: &[u8], at: usize) -> Result<u64, RemuxError> {
    data.get(at..at + 8)
        .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
        .ok_or(RemuxError::Output("truncated box"))
}

fn put_u32(data: &mut [u8], at: usize, v: u32) -> Result<(), RemuxError> {
    data.get_mut(at..at + 4)
        .ok_or(RemuxError::Output("truncated box"))?
        .copy_from_slice(&v.to_be_bytes());
    Ok(())
}

fn put_u64(data: &mut [u8], at: usize, v: u64) -> Result<(), RemuxError> {
    data.get_mut(at..at + 8)
        .ok_or(RemuxError::Output("truncated box"))?
        .copy_from_slice(&v.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_walks_sizes_and_rejects_overruns() {
        let mut d = Vec::new();
        d.extend_from_slice(&12u32.to_be_bytes());
        d.extend_from_slice(b"free");
        d.extend_from_slice(&[0; 4]);
        d.extend_from_slice(&8u32.to_be_bytes());
        d.extend_from_slice(b"mdat");
        let b = children(&d, 0, d.len()).unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(&b[1].ty, b"mdat");
        assert_eq!((b[1].start, b[1].end), (12, 20));
        d[3] = 40;
        assert!(children(&d, 0, d.len()).is_err());
    }
}
