//! Helpers of the `media_*` integration tests: reading the
//! KVS-SDK test files, parsing Matroska with independent readers (`webm-iterable` for element
//! structure, `matroska-demuxer` for frames), and turning muxer output into a file.
#![allow(dead_code)]

use std::io::Cursor;
use std::path::PathBuf;

use gstkvssink::media::fragmenter::Fragment;
use gstkvssink::media::muxer::{StreamMuxer, write_fragment};
use webm_iterable::WebmIterator;
use webm_iterable::matroska_spec::{EbmlTag, Master, MatroskaSpec};

/// `tests/data/<name>`: the test vectors kept in the repository (provenance in its README).
pub fn test_data(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    assert!(p.exists(), "{} is missing", p.display());
    p
}

/// An element and its children (masters only have children).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub id: u64,
    pub children: Vec<Node>,
}

/// The element tree of a Matroska byte stream (ids and nesting only).
pub fn structure(data: &[u8]) -> Vec<Node> {
    let mut stack: Vec<Node> = vec![Node {
        id: 0,
        children: Vec::new(),
    }];
    for tag in WebmIterator::new(Cursor::new(data), &[]) {
        let tag: MatroskaSpec = tag.expect("webm-iterable parses the stream");
        let id = tag.get_id();
        match tag.as_master() {
            Some(Master::Start) => stack.push(Node {
                id,
                children: Vec::new(),
            }),
            Some(Master::End) => {
                let done = stack.pop().expect("balanced");
                assert_eq!(done.id, id, "master end matches its start");
                stack.last_mut().unwrap().children.push(done);
            }
            Some(Master::Full(_)) => unreachable!("nothing is buffered"),
            None => stack.last_mut().unwrap().children.push(Node {
                id,
                children: Vec::new(),
            }),
        }
    }
    assert_eq!(stack.len(), 1, "every master closed");
    stack.pop().unwrap().children
}

/// A shape summary of a tree: consecutive siblings with the same id and structure collapse into
/// one (so 30 SimpleBlocks and 3 SimpleBlocks compare equal).
pub fn shape(nodes: &[Node]) -> Vec<(u64, Vec<(u64, String)>)> {
    fn render(n: &Node) -> String {
        let mut s = format!("{:X}", n.id);
        if !n.children.is_empty() {
            s.push('[');
            let mut last: Option<String> = None;
            for c in &n.children {
                let r = render(c);
                if last.as_ref() != Some(&r) {
                    s.push_str(&r);
                    s.push(' ');
                }
                last = Some(r);
            }
            s.push(']');
        }
        s
    }
    nodes
        .iter()
        .map(|n| (n.id, n.children.iter().map(|c| (c.id, render(c))).collect()))
        .collect()
}

/// One demuxed frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemuxedFrame {
    pub track: u64,
    pub timestamp: u64,
    pub key: bool,
    pub data: Vec<u8>,
}

/// Frames (and the demuxer, for track info) of a Matroska byte stream.
pub fn demux(
    data: &[u8],
) -> (
    matroska_demuxer::MatroskaFile<Cursor<Vec<u8>>>,
    Vec<DemuxedFrame>,
) {
    let mut mkv = matroska_demuxer::MatroskaFile::open(Cursor::new(data.to_vec()))
        .expect("matroska-demuxer opens the stream");
    let mut frames = Vec::new();
    let mut f = matroska_demuxer::Frame::default();
    while mkv.next_frame(&mut f).expect("frame parses") {
        frames.push(DemuxedFrame {
            track: f.track,
            timestamp: f.timestamp,
            key: f.is_keyframe.unwrap_or(false),
            data: f.data.clone(),
        });
    }
    (mkv, frames)
}

/// Takes every completed fragment out of the muxer.
pub fn take_fragments(m: &mut StreamMuxer) -> Vec<Fragment> {
    std::iter::from_fn(|| m.pop_fragment()).collect()
}

/// Fragments as the byte stream of one session (header first, again on every change).
pub fn to_stream(frags: &[Fragment]) -> Vec<u8> {
    let mut v = Vec::new();
    for (i, f) in frags.iter().enumerate() {
        write_fragment(&mut v, f, i == 0).unwrap();
    }
    v
}

/// Whether a program is installed.
pub fn have(tool: &str) -> bool {
    ["--version", "-version"].iter().any(|flag| {
        std::process::Command::new(tool)
            .arg(flag)
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// One SimpleBlock as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedBlock {
    pub track: u64,
    pub relative: i16,
    pub flags: u8,
    pub data: Vec<u8>,
}

/// One KVS fragment as found in a Matroska stream: the tags before its Cluster, the Cluster
/// Timecode and its blocks, and tags after it (only the last one: end of stream).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedFragment {
    pub tags: Vec<(String, String)>,
    pub timecode: u64,
    pub blocks: Vec<ParsedBlock>,
    pub trailing_tags: Vec<(String, String)>,
}

fn parse_block(b: &[u8]) -> ParsedBlock {
    let len = b[0].leading_zeros() as usize + 1;
    let mut track = u64::from(b[0]) & (0xFF >> len);
    for x in &b[1..len] {
        track = (track << 8) | u64::from(*x);
    }
    ParsedBlock {
        track,
        relative: i16::from_be_bytes([b[len], b[len + 1]]),
        flags: b[len + 2],
        data: b[len + 3..].to_vec(),
    }
}

/// Splits a Matroska stream into KVS fragments with `webm-iterable`. Reading stops at the first
/// element that cannot be read (a truncated last block, as in the Java SDK's test file).
pub fn kvs_fragments(data: &[u8]) -> Vec<ParsedFragment> {
    let mut out: Vec<ParsedFragment> = Vec::new();
    let mut pending_tags = Vec::new();
    let mut name = None;
    for tag in WebmIterator::new(Cursor::new(data), &[]) {
        let Ok(tag) = tag else { break };
        match tag {
            MatroskaSpec::Cluster(Master::Start) => out.push(ParsedFragment {
                tags: std::mem::take(&mut pending_tags),
                ..Default::default()
            }),
            MatroskaSpec::Timestamp(t) => out.last_mut().unwrap().timecode = t,
            MatroskaSpec::SimpleBlock(b) => out.last_mut().unwrap().blocks.push(parse_block(&b)),
            MatroskaSpec::TagName(n) => name = Some(n),
            MatroskaSpec::TagString(v) => pending_tags.push((name.take().unwrap_or_default(), v)),
            _ => {}
        }
    }
    if let Some(last) = out.last_mut() {
        last.trailing_tags = pending_tags;
    }
    out
}
