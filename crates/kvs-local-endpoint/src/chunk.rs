//! The Matroska "chunks" the playback APIs return: one per fragment.
//!
//! Owns: writing a chunk — the EBML header, an unknown-size Segment, the Info and Tracks of the
//! session that carried the fragment (for a stored fragment, those its stored file begins with:
//! the store keeps one Tracks per file), a Tags element with the fragment's number and timestamps,
//! an unknown-size Cluster with the fragment's Timecode and its blocks exactly as received, and
//! for GetMedia a closing Tags element with `AWS_KINESISVIDEO_MILLIS_BEHIND_NOW` and
//! `AWS_KINESISVIDEO_CONTINUATION_TOKEN` — and reading the Timecode and block elements back out of
//! a stored fragment. Unknown sizes let a chunk go out while its fragment is still arriving: the
//! Cluster ends at the Tags after it, the Segment at the next chunk's EBML header (the shape the
//! AWS parser library reads: Segment, Tags, Cluster, Tags).
//!
//! The producer's own Tags (fragment metadata, the end-of-fragment tag) are not repeated: a chunk
//! carries only the service's tags.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};

use super::live::{FragmentStart, SessionElements};

const EBML: u32 = 0x1A45_DFA3;
const SEGMENT: u32 = 0x1853_8067;
const INFO: u32 = 0x1549_A966;
const TRACKS: u32 = 0x1654_AE6B;
const CLUSTER: u32 = 0x1F43_B675;
const TIMECODE: u32 = 0xE7;
const SIMPLE_BLOCK: u32 = 0xA3;
const BLOCK_GROUP: u32 = 0xA0;
const TAGS: u32 = 0x1254_C367;
const TAG: u32 = 0x7373;
const SIMPLE_TAG: u32 = 0x67C8;
const TAG_NAME: u32 = 0x45A3;
const TAG_STRING: u32 = 0x4487;

const FRAGMENT_NUMBER: &str = "AWS_KINESISVIDEO_FRAGMENT_NUMBER";
const SERVER_TIMESTAMP: &str = "AWS_KINESISVIDEO_SERVER_TIMESTAMP";
const PRODUCER_TIMESTAMP: &str = "AWS_KINESISVIDEO_PRODUCER_TIMESTAMP";
const MILLIS_BEHIND_NOW: &str = "AWS_KINESISVIDEO_MILLIS_BEHIND_NOW";
const CONTINUATION_TOKEN: &str = "AWS_KINESISVIDEO_CONTINUATION_TOKEN";
/// The names the GetMediaForFragmentList reference gives its timestamps.
const SERVER_SIDE_TIMESTAMP: &str = "AWS_KINESISVIDEO_SERVER_SIDE_TIMESTAMP";
const PRODUCER_SIDE_TIMESTAMP: &str = "AWS_KINESISVIDEO_PRODUCER_SIDE_TIMESTAMP";

/// Which API a chunk is for: GetMediaForFragmentList's reference names its timestamp tags
/// `…_SIDE_TIMESTAMP`; its chunks carry both spellings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    GetMedia,
    FragmentList,
}

fn put_id(out: &mut BytesMut, id: u32) {
    let bytes = id.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    out.put_slice(&bytes[skip..]);
}

fn put_size(out: &mut BytesMut, size: u64) {
    let len = (1..=8).find(|l| size < (1u64 << (7 * l)) - 1).unwrap_or(8);
    let marked = size | 1u64 << (7 * len);
    out.put_slice(&marked.to_be_bytes()[8 - len..]);
}

fn put_element(out: &mut BytesMut, id: u32, body: &[u8]) {
    put_id(out, id);
    put_size(out, body.len() as u64);
    out.put_slice(body);
}

fn put_unknown_size(out: &mut BytesMut, id: u32) {
    put_id(out, id);
    out.put_u8(0x01);
    out.put_slice(&[0xFF; 7]);
}

fn tags(pairs: &[(&str, &str)]) -> BytesMut {
    let mut tag = BytesMut::new();
    for (name, value) in pairs {
        let mut simple = BytesMut::new();
        put_element(&mut simple, TAG_NAME, name.as_bytes());
        put_element(&mut simple, TAG_STRING, value.as_bytes());
        put_element(&mut tag, SIMPLE_TAG, &simple);
    }
    let mut tags = BytesMut::new();
    put_element(&mut tags, TAG, &tag);
    let mut out = BytesMut::new();
    put_element(&mut out, TAGS, &tags);
    out
}

/// Seconds since the epoch with milliseconds, as the service writes timestamps in tags.
pub(crate) fn seconds(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// The chunk up to the Cluster's Timecode; its blocks follow as they are.
pub(crate) fn start(fragment: &FragmentStart, flavor: Flavor) -> Bytes {
    let h: &SessionElements = &fragment.header;
    let mut out = BytesMut::with_capacity(h.ebml.len() + h.info.len() + h.tracks.len() + 256);
    out.put_slice(&h.ebml);
    put_unknown_size(&mut out, SEGMENT);
    out.put_slice(&h.info);
    out.put_slice(&h.tracks);
    let server = seconds(unix_ms(fragment.server_timestamp));
    let producer = seconds(fragment.producer_timestamp_ms);
    let mut pairs = vec![
        (FRAGMENT_NUMBER, &*fragment.number),
        (SERVER_TIMESTAMP, &server),
        (PRODUCER_TIMESTAMP, &producer),
    ];
    if flavor == Flavor::FragmentList {
        pairs.extend([
            (SERVER_SIDE_TIMESTAMP, &*server),
            (PRODUCER_SIDE_TIMESTAMP, &producer),
        ]);
    }
    out.put_slice(&tags(&pairs));
    put_unknown_size(&mut out, CLUSTER);
    let tc = fragment.timecode.to_be_bytes();
    let skip = tc.iter().take(7).take_while(|b| **b == 0).count();
    put_element(&mut out, TIMECODE, &tc[skip..]);
    out.freeze()
}

/// The Tags that close a GetMedia chunk.
pub(crate) fn end(millis_behind_now: u64, continuation_token: &str) -> Bytes {
    tags(&[
        (MILLIS_BEHIND_NOW, &millis_behind_now.to_string()),
        (CONTINUATION_TOKEN, continuation_token),
    ])
    .freeze()
}

/// Largest stored header read back (the splitter takes Info and Tracks of up to 4 MiB each).
const MAX_STORED_HEADER: usize = 16 << 20;

/// The EBML header, Info and Tracks at the start of a stored `.mkv` (`super::store`): the
/// session header of every fragment in that file (a file holds one Tracks only).
pub(crate) fn read_stored_header(r: &mut impl std::io::Read) -> Result<SessionElements, String> {
    /// Reads until `buf` holds `n` bytes.
    fn fill(r: &mut impl std::io::Read, buf: &mut Vec<u8>, n: usize) -> Result<(), String> {
        if buf.len() < n {
            let have = buf.len();
            buf.resize(n, 0);
            r.read_exact(&mut buf[have..])
                .map_err(|e| format!("reading the stored header: {e}"))?;
        }
        Ok(())
    }
    /// The element header at `pos` (at most 12 bytes; the file goes on after any of these).
    fn next(
        r: &mut impl std::io::Read,
        buf: &mut Vec<u8>,
        pos: usize,
    ) -> Result<(u32, usize, Option<u64>), String> {
        fill(r, buf, pos + 12)?;
        header(&buf[pos..]).ok_or_else(|| "bad element header in the stored file".to_owned())
    }
    let mut buf = Vec::new();
    let (id, hl, size) = next(r, &mut buf, 0)?;
    if id != EBML {
        return Err("the stored file does not start with an EBML header".into());
    }
    let mut pos = hl + size.ok_or("EBML header of unknown size")? as usize;
    if pos > MAX_STORED_HEADER {
        return Err("EBML header too large".into());
    }
    fill(r, &mut buf, pos)?;
    let ebml = Bytes::copy_from_slice(&buf[..pos]);
    let (id, hl, _) = next(r, &mut buf, pos)?;
    if id != SEGMENT {
        return Err("no Segment after the EBML header".into());
    }
    pos += hl;
    let mut info = Bytes::new();
    loop {
        let (id, hl, size) = next(r, &mut buf, pos)?;
        let end = pos + hl + size.ok_or("header element of unknown size")? as usize;
        if end > MAX_STORED_HEADER {
            return Err("stored header too large".into());
        }
        fill(r, &mut buf, end)?;
        match id {
            INFO => info = Bytes::copy_from_slice(&buf[pos..end]),
            TRACKS => {
                let tracks = Bytes::copy_from_slice(&buf[pos..end]);
                return Ok(SessionElements { ebml, info, tracks });
            }
            _ => return Err(format!("element {id:#x} before Tracks in the stored file")),
        }
        pos = end;
    }
}

/// An element header: ID, header length, size (`None`: unknown).
fn header(b: &[u8]) -> Option<(u32, usize, Option<u64>)> {
    let first = *b.first()?;
    let id_len = first.leading_zeros() as usize + 1;
    if id_len > 4 || b.len() <= id_len {
        return None;
    }
    let id = b[..id_len].iter().fold(0u32, |a, &x| a << 8 | x as u32);
    let s0 = b[id_len];
    let size_len = s0.leading_zeros() as usize + 1;
    if size_len > 8 || b.len() < id_len + size_len {
        return None;
    }
    let mask = if size_len == 8 { 0 } else { 0xFFu8 >> size_len };
    let mut value = (s0 & mask) as u64;
    let mut all_ones = s0 & mask == mask;
    for &x in &b[id_len + 1..id_len + size_len] {
        value = value << 8 | x as u64;
        all_ones &= x == 0xFF;
    }
    Some((id, id_len + size_len, (!all_ones).then_some(value)))
}

/// The Cluster Timecode and the block elements (SimpleBlock, BlockGroup) of a stored fragment:
/// metadata Tags, one Cluster (known or unknown size), Tags.
pub(crate) fn stored_blocks(fragment: &Bytes) -> Result<(u64, Vec<Bytes>), String> {
    let mut pos = 0;
    while pos < fragment.len() {
        let (id, hl, size) = header(&fragment[pos..]).ok_or("bad element header")?;
        if id != CLUSTER {
            let size = size.ok_or("top-level element of unknown size")? as usize;
            pos += hl + size;
            continue;
        }
        let end = match size {
            Some(s) => (pos + hl + s as usize).min(fragment.len()),
            None => fragment.len(),
        };
        let mut p = pos + hl;
        let mut timecode = None;
        let mut blocks = Vec::new();
        while p < end {
            let (id, hl, size) = header(&fragment[p..end]).ok_or("bad Cluster child")?;
            if id > 0x00FF_FFFF {
                // A top-level element ends an unknown-size Cluster.
                break;
            }
            let total = hl + size.ok_or("Cluster child of unknown size")? as usize;
            if p + total > end {
                return Err("Cluster child overruns the fragment".into());
            }
            match id {
                TIMECODE => {
                    timecode = Some(
                        fragment[p + hl..p + total]
                            .iter()
                            .fold(0u64, |a, &x| a << 8 | x as u64),
                    )
                }
                SIMPLE_BLOCK | BLOCK_GROUP => blocks.push(fragment.slice(p..p + total)),
                _ => {}
            }
            p += total;
        }
        return Ok((timecode.ok_or("Cluster without Timecode")?, blocks));
    }
    Err("no Cluster in the fragment".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_header_is_read_back() {
        let mut ebml = BytesMut::new();
        put_element(
            &mut ebml,
            EBML,
            &[
                0x42, 0x82, 0x88, b'm', b'a', b't', b'r', b'o', b's', b'k', b'a',
            ],
        );
        let mut info = BytesMut::new();
        put_element(&mut info, INFO, &[0x2A, 0xD7, 0xB1, 0x83, 0x0F, 0x42, 0x40]);
        let mut tracks = BytesMut::new();
        put_element(&mut tracks, TRACKS, &[0xAE, 0x83, 0xD7, 0x81, 0x01]);
        let mut file = ebml.clone();
        put_unknown_size(&mut file, SEGMENT);
        file.put_slice(&info);
        file.put_slice(&tracks);
        file.put_slice(&tags(&[("a", "b")]));
        let h = read_stored_header(&mut &file[..]).unwrap();
        assert_eq!(
            (h.ebml, h.info, h.tracks),
            (ebml.freeze(), info.freeze(), tracks.freeze())
        );
        assert!(read_stored_header(&mut &file[..20]).is_err());
    }

    #[test]
    fn sizes_round_trip_through_the_reader() {
        for size in [0u64, 1, 126, 127, 128, 16_382, 16_383, 1 << 20, 1 << 40] {
            let mut out = BytesMut::new();
            put_id(&mut out, TAGS);
            put_size(&mut out, size);
            let (id, hl, s) = header(&out).unwrap();
            assert_eq!((id, hl, s), (TAGS, out.len(), Some(size)), "size {size}");
        }
        let mut out = BytesMut::new();
        put_unknown_size(&mut out, CLUSTER);
        assert_eq!(header(&out).unwrap(), (CLUSTER, 12, None));
    }

    #[test]
    fn blocks_of_known_and_unknown_size_clusters() {
        let mut block = BytesMut::new();
        put_element(&mut block, SIMPLE_BLOCK, &[0x81, 0, 5, 0x80, 1, 2, 3]);
        let mut body = BytesMut::new();
        put_element(&mut body, TIMECODE, &[0x12, 0x34]);
        body.put_slice(&block);
        body.put_slice(&block);
        let trailing = tags(&[("AWS_KINESISVIDEO_END_OF_FRAGMENT", "1")]);

        let mut known = tags(&[("x", "y")]);
        put_element(&mut known, CLUSTER, &body);
        known.put_slice(&trailing);
        let mut unknown = BytesMut::new();
        put_unknown_size(&mut unknown, CLUSTER);
        unknown.put_slice(&body);
        unknown.put_slice(&trailing);
        for f in [known.freeze(), unknown.freeze()] {
            let (tc, blocks) = stored_blocks(&f).unwrap();
            assert_eq!(tc, 0x1234);
            assert_eq!(blocks, vec![block.clone().freeze(), block.clone().freeze()]);
        }
    }
}
