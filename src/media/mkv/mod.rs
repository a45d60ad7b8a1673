//! The Matroska bytes KVS ingests, written by hand with the reference's exact layout
//! (docs/kvs-protocol.md §2): what this module owns is *how* elements are encoded, not *when* they
//! are written (that is [`crate::media::fragmenter`]).
//!
//! - [`header`]: the session header (EBML header, Segment of unknown size, Info, Tracks), written
//!   once per stream, per codec change and per (re)connect. Cold path.
//! - [`cluster`]: Cluster, Timecode, Position, SimpleBlock headers and the metadata `Tags`
//!   chains. Hot path: fixed-width fields written straight into `bytes::BytesMut`.
//!
//! ## Why hand-written
//! `ebml-iterable`/`webm-iterable` copy every payload two to three times and validate element paths
//! against one writer that must live for the whole Segment, which fights fragments that are encoded
//! independently and a header that is re-sent on every reconnect (measured before this module was written). The
//! reference's layout is a handful of fixed byte patterns, so writing them directly is shorter than
//! driving a generic writer, and it lets the size fields have the reference's fixed widths:
//! Segment and Cluster use the 1-byte unknown size `FF`; Info a 2-byte size; Tracks, TrackEntry,
//! Video and Audio 4-byte sizes; SimpleBlock and every Tags element 8-byte sizes; strings and
//! CodecPrivate minimal sizes. `webm-iterable` and `matroska-demuxer` are used as *readers* in the
//! tests to prove the output parses.

pub mod cluster;
pub mod header;

use bytes::BufMut;

/// Element ids used by the writer (Matroska / EBML specifications).
pub mod id {
    pub const EBML: u32 = 0x1A45_DFA3;
    pub const EBML_VERSION: u32 = 0x4286;
    pub const EBML_READ_VERSION: u32 = 0x42F7;
    pub const EBML_MAX_ID_LENGTH: u32 = 0x42F2;
    pub const EBML_MAX_SIZE_LENGTH: u32 = 0x42F3;
    pub const DOC_TYPE: u32 = 0x4282;
    pub const DOC_TYPE_VERSION: u32 = 0x4287;
    pub const DOC_TYPE_READ_VERSION: u32 = 0x4285;
    pub const SEGMENT: u32 = 0x1853_8067;
    pub const INFO: u32 = 0x1549_A966;
    pub const SEGMENT_UID: u32 = 0x73A4;
    pub const TIMECODE_SCALE: u32 = 0x2A_D7B1;
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
    pub const BIT_DEPTH: u32 = 0x6264;
    pub const CLUSTER: u32 = 0x1F43_B675;
    pub const TIMECODE: u32 = 0xE7;
    pub const POSITION: u32 = 0xA7;
    pub const SIMPLE_BLOCK: u32 = 0xA3;
    pub const TAGS: u32 = 0x1254_C367;
    pub const TAG: u32 = 0x7373;
    pub const SIMPLE_TAG: u32 = 0x67C8;
    pub const TAG_NAME: u32 = 0x45A3;
    pub const TAG_STRING: u32 = 0x4487;
}

/// SimpleBlock flag: key frame.
pub const FLAG_KEY: u8 = 0x80;

/// The tag that closes a fragment (EoFR) and, at the end of a session, the stream (EoS).
pub const END_OF_FRAGMENT_TAG: &str = "AWS_KINESISVIDEO_END_OF_FRAGMENT";

/// The 1-byte "unknown size" of Segment and Cluster.
pub const UNKNOWN_SIZE_1: u8 = 0xFF;

/// Writes an element id (its bytes are already vint-marked, so only leading zero bytes are cut).
#[inline]
pub fn put_id(buf: &mut impl BufMut, id: u32) {
    let bytes = id.to_be_bytes();
    let skip = (id.leading_zeros() / 8) as usize;
    buf.put_slice(&bytes[skip.min(3)..]);
}

/// Number of bytes of the minimal size vint for `value` (the reference's
/// `mkvgenEbmlEncodeNumber`: 1 byte below 127, 2 below 16383, …; all-ones values are reserved).
pub fn minimal_vint_len(value: u64) -> usize {
    let mut len = 1;
    while len < 8 && value >= (1u64 << (7 * len)) - 1 {
        len += 1;
    }
    len
}

/// Writes `value` as a size vint of exactly `len` bytes (1..=8).
///
/// # Panics
/// If `value` does not fit (a programming error: callers size the field first).
#[inline]
pub fn put_vint(buf: &mut impl BufMut, value: u64, len: usize) {
    assert!((1..=8).contains(&len), "vint length {len}");
    assert!(
        value < (1u64 << (7 * len)) - 1,
        "{value} does not fit a {len}-byte vint"
    );
    let marked = value | (1u64 << (7 * len));
    buf.put_slice(&marked.to_be_bytes()[8 - len..]);
}

/// Writes `value` as a minimal size vint.
#[inline]
pub fn put_vint_minimal(buf: &mut impl BufMut, value: u64) {
    put_vint(buf, value, minimal_vint_len(value));
}

/// Writes a binary/string element with a minimal size.
pub fn put_bytes_element(buf: &mut impl BufMut, id: u32, data: &[u8]) {
    put_id(buf, id);
    put_vint_minimal(buf, data.len() as u64);
    buf.put_slice(data);
}

/// Writes an unsigned integer element as the reference does: 1 byte for values < 256 with size
/// `81` (TrackNumber, TrackType, Channels, …).
pub fn put_u8_element(buf: &mut impl BufMut, id: u32, value: u8) {
    put_id(buf, id);
    buf.put_u8(0x81);
    buf.put_u8(value);
}

/// Writes an 8-byte big-endian unsigned element (TrackUID, TimecodeScale, Cluster Timecode).
pub fn put_u64_element(buf: &mut impl BufMut, id: u32, value: u64) {
    put_id(buf, id);
    buf.put_u8(0x88);
    buf.put_u64(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_written_without_leading_zeros() {
        let mut v = Vec::new();
        put_id(&mut v, id::SIMPLE_BLOCK);
        put_id(&mut v, id::TAG);
        put_id(&mut v, id::TIMECODE_SCALE);
        put_id(&mut v, id::CLUSTER);
        assert_eq!(
            v,
            [0xA3, 0x73, 0x73, 0x2A, 0xD7, 0xB1, 0x1F, 0x43, 0xB6, 0x75]
        );
    }

    #[test]
    fn minimal_vints_match_the_reference_thresholds() {
        assert_eq!(minimal_vint_len(0), 1);
        assert_eq!(minimal_vint_len(126), 1);
        assert_eq!(minimal_vint_len(127), 2);
        assert_eq!(minimal_vint_len(16382), 2);
        assert_eq!(minimal_vint_len(16383), 3);
        let mut v = Vec::new();
        put_vint_minimal(&mut v, 44);
        put_vint_minimal(&mut v, 300);
        assert_eq!(v, [0xAC, 0x41, 0x2C]);
    }

    #[test]
    fn fixed_width_vints() {
        let mut v = Vec::new();
        put_vint(&mut v, 0x6e, 4);
        put_vint(&mut v, 0x26_4d, 8);
        assert_eq!(v, [0x10, 0, 0, 0x6e, 0x01, 0, 0, 0, 0, 0, 0x26, 0x4d]);
    }

    #[test]
    #[should_panic(expected = "does not fit")]
    fn oversized_vint_panics() {
        put_vint(&mut Vec::new(), 127, 1);
    }
}
