//! Hot path: the per-fragment and per-frame Matroska structures, as fixed byte patterns written
//! straight into a buffer (no allocation, no intermediate copies).
//!
//! ```text
//! Cluster      1F43B675 FF                      unknown size
//! Timecode     E7 88 <u64 BE>                   the fragment timecode
//! Position     A7 81 00
//! SimpleBlock  A3 01 <7-byte size> 8N <i16 BE> <flags> <payload>
//! Tags chain   1254C367 01<7B> 7373 01<7B> 67C8 01<7B> 45A3 01<7B> name 4487 01<7B> value
//! ```

use bytes::BufMut;

use super::{UNKNOWN_SIZE_1, id, put_id};

/// Cluster id + unknown size + Timecode + Position.
pub const CLUSTER_START_LEN: usize = 5 + 10 + 3;

/// `A3`, an 8-byte size, the 1-byte track number, the i16 timecode and the flags.
pub const SIMPLE_BLOCK_HEADER_LEN: usize = 1 + 8 + 1 + 2 + 1;

/// Writes Cluster (unknown size), its Timecode and Position 0.
#[inline]
pub fn put_cluster_start(buf: &mut impl BufMut, timecode: u64) {
    put_id(buf, id::CLUSTER);
    buf.put_u8(UNKNOWN_SIZE_1);
    buf.put_u8(0xE7);
    buf.put_u8(0x88);
    buf.put_u64(timecode);
    buf.put_slice(&[0xA7, 0x81, 0x00]);
}

/// The 13 header bytes of a SimpleBlock carrying `payload_len` bytes.
///
/// `track_number` must be 1..=126 (a 1-byte track vint); kvssink streams have at most 3 tracks.
#[inline]
pub fn simple_block_header(
    track_number: u8,
    relative_timecode: i16,
    flags: u8,
    payload_len: usize,
) -> [u8; SIMPLE_BLOCK_HEADER_LEN] {
    debug_assert!((1..=126).contains(&track_number));
    let size = (payload_len as u64 + 4) | (1u64 << 56);
    let mut h = [0u8; SIMPLE_BLOCK_HEADER_LEN];
    h[0] = 0xA3;
    h[1..9].copy_from_slice(&size.to_be_bytes());
    h[9] = 0x80 | track_number;
    h[10..12].copy_from_slice(&relative_timecode.to_be_bytes());
    h[12] = flags;
    h
}

/// The relative timecode of a SimpleBlock that starts with a [`simple_block_header`]; `None`
/// for other bytes.
pub fn simple_block_timecode(block: &[u8]) -> Option<i16> {
    match block {
        [0xA3, _, _, _, _, _, _, _, _, _, hi, lo, _, ..] => Some(i16::from_be_bytes([*hi, *lo])),
        _ => None,
    }
}

/// Size of one Tags→Tag→SimpleTag→(TagName, TagString) chain.
pub fn tag_chain_len(name: &str, value: &str) -> usize {
    let simple_tag_body = (2 + 8 + name.len()) + (2 + 8 + value.len());
    let tag_body = 2 + 8 + simple_tag_body;
    let tags_body = 2 + 8 + tag_body;
    4 + 8 + tags_body
}

#[inline]
fn put_size8(buf: &mut impl BufMut, size: usize) {
    buf.put_u64(size as u64 | (1u64 << 56));
}

/// Writes one metadata item as its own Tags→Tag→SimpleTag chain, all sizes 8 bytes wide
/// (the reference's `mkvgenGenerateTagsChain`).
pub fn put_tag_chain(buf: &mut impl BufMut, name: &str, value: &str) {
    let simple_tag_body = (2 + 8 + name.len()) + (2 + 8 + value.len());
    let tag_body = 2 + 8 + simple_tag_body;
    let tags_body = 2 + 8 + tag_body;
    put_id(buf, id::TAGS);
    put_size8(buf, tags_body);
    put_id(buf, id::TAG);
    put_size8(buf, tag_body);
    put_id(buf, id::SIMPLE_TAG);
    put_size8(buf, simple_tag_body);
    put_id(buf, id::TAG_NAME);
    put_size8(buf, name.len());
    buf.put_slice(name.as_bytes());
    put_id(buf, id::TAG_STRING);
    put_size8(buf, value.len());
    buf.put_slice(value.as_bytes());
}

/// The `AWS_KINESISVIDEO_END_OF_FRAGMENT` tag chain that closes a fragment: the service persists
/// a fragment when it reads it instead of when the next fragment starts.
pub fn end_of_fragment_tags() -> bytes::Bytes {
    let mut b = bytes::BytesMut::with_capacity(tag_chain_len(super::END_OF_FRAGMENT_TAG, ""));
    put_tag_chain(&mut b, super::END_OF_FRAGMENT_TAG, "");
    b.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_block_timecode_reads_the_header() {
        let h = simple_block_header(2, -7, 0x80, 3);
        assert_eq!(simple_block_timecode(&h), Some(-7));
        assert_eq!(simple_block_timecode(&h[..12]), None);
        let mut c = Vec::new();
        put_cluster_start(&mut c, 5);
        assert_eq!(simple_block_timecode(&c), None);
    }

    #[test]
    fn cluster_start_bytes() {
        let mut v = Vec::new();
        put_cluster_start(&mut v, 0x0000_018c_89e8_e285);
        assert_eq!(
            v,
            [
                0x1F, 0x43, 0xB6, 0x75, 0xFF, 0xE7, 0x88, 0x00, 0x00, 0x01, 0x8c, 0x89, 0xe8, 0xe2,
                0x85, 0xA7, 0x81, 0x00
            ]
        );
        assert_eq!(v.len(), CLUSTER_START_LEN);
    }

    #[test]
    fn simple_block_header_bytes() {
        // The first block of the KVS C++ SDK test stream: 9801 payload bytes, key, track 1.
        let h = simple_block_header(1, 0, 0x80, 9801);
        assert_eq!(
            h,
            [
                0xA3, 0x01, 0, 0, 0, 0, 0, 0x26, 0x4d, 0x81, 0x00, 0x00, 0x80
            ]
        );
        let h = simple_block_header(2, -2, 0, 0);
        assert_eq!(&h[7..], &[0, 4, 0x82, 0xFF, 0xFE, 0]);
    }

    #[test]
    fn tag_chain_bytes() {
        let mut v = Vec::new();
        put_tag_chain(&mut v, "AWS_KINESISVIDEO_END_OF_FRAGMENT", "");
        assert_eq!(
            v.len(),
            tag_chain_len("AWS_KINESISVIDEO_END_OF_FRAGMENT", "")
        );
        assert_eq!(&v[..4], &[0x12, 0x54, 0xC3, 0x67]);
        assert_eq!(&v[4..12], &((v.len() as u64 - 12) | 1 << 56).to_be_bytes());
        assert_eq!(&v[12..14], &[0x73, 0x73]);
        assert_eq!(&v[22..24], &[0x67, 0xC8]);
        assert_eq!(&v[32..34], &[0x45, 0xA3]);
        assert_eq!(&v[34..42], &[0x01, 0, 0, 0, 0, 0, 0, 32]);
        assert_eq!(&v[42..74], b"AWS_KINESISVIDEO_END_OF_FRAGMENT");
        assert_eq!(&v[74..], &[0x44, 0x87, 0x01, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn end_of_fragment_tags_layout() {
        let b = end_of_fragment_tags();
        assert_eq!(&b[..4], &[0x12, 0x54, 0xC3, 0x67]);
        assert_eq!(b[4], 0x01);
        let name = b"AWS_KINESISVIDEO_END_OF_FRAGMENT";
        assert!(b.windows(name.len()).any(|w| w == name));
        // Tags + Tag + SimpleTag headers (4+2+2 id bytes, 8-byte sizes) + TagName + TagString.
        assert_eq!(
            b.len(),
            (4 + 8) + (2 + 8) + (2 + 8) + (2 + 8 + name.len()) + (2 + 8)
        );
    }
}
