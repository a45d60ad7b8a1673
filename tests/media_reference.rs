//! The two Matroska files written by the official KVS SDKs (`tests/data/`) are read into
//! fragments by the same reader as our output, and our output for the C++ file's input (its
//! frames, timestamps, key flags, codec private data and metadata) has the same element
//! structure, byte-identical payloads and the same timecodes.

mod common;
use common::media as util;

use gstkvssink::media::codec::{TrackConfig, TrackType};
use gstkvssink::media::fragmenter::FragmenterConfig;
use gstkvssink::media::muxer::{FrameIn, MuxerConfig, StreamMuxer, TrackInput};
use gstkvssink::media::timeline::{SystemClock, TimelineConfig};
use util::*;

const CPP: &str = "kvs-cpp-test-stream-1_0.mkv";
const JAVA: &str = "kvs-java-clusters.mkv";

#[test]
fn cpp_sdk_file_reads_as_37_fragments_with_metadata() {
    let data = std::fs::read(test_data(CPP)).unwrap();
    let frags = kvs_fragments(&data);
    assert_eq!(frags.len(), 37);
    assert_eq!(frags.iter().map(|f| f.blocks.len()).sum::<usize>(), 1640);
    assert_eq!(frags[0].timecode, 1_703_120_790_149);
    for w in frags.windows(2) {
        assert!(w[0].timecode < w[1].timecode);
    }
    for f in &frags {
        assert_eq!(
            f.blocks[0].flags, 0x80,
            "each fragment starts with a key frame"
        );
        assert!(f.blocks[1..].iter().all(|b| b.flags == 0));
        assert!(f.blocks.iter().all(|b| b.track == 1 && b.relative >= 0));
    }
    assert_eq!(
        frags[1].tags,
        vec![("metadata_key_1".to_owned(), "metadata_value_1".to_owned())]
    );
    assert_eq!(
        frags[36].trailing_tags,
        vec![("AWS_KINESISVIDEO_END_OF_FRAGMENT".to_owned(), String::new())]
    );
    // The independent frame reader agrees.
    let (_, frames) = demux(&data);
    assert_eq!(frames.len(), 1640);
}

#[test]
fn java_sdk_file_reads_as_8_fragments() {
    let data = std::fs::read(test_data(JAVA)).unwrap();
    let frags = kvs_fragments(&data);
    assert_eq!(frags.len(), 8);
    assert_eq!(
        frags.iter().map(|f| f.timecode).take(3).collect::<Vec<_>>(),
        vec![0, 1999, 3999]
    );
    // ffprobe counts 444 packets; the file's last block is truncated, so the reader stops there.
    let blocks: usize = frags.iter().map(|f| f.blocks.len()).sum();
    assert!((443..=444).contains(&blocks), "{blocks} blocks");
    for f in &frags {
        assert_eq!(
            f.blocks[0].flags & 0x80,
            0x80,
            "each cluster starts with a key frame"
        );
    }
    // Lavf wrote Tags before the first cluster.
    assert_eq!(frags[0].tags.len(), 4);
}

#[test]
fn our_output_for_the_cpp_input_has_the_cpp_structure() {
    let data = std::fs::read(test_data(CPP)).unwrap();
    let reference = kvs_fragments(&data);
    let (mkv, _) = demux(&data);
    let track = &mkv.tracks()[0];
    let cpd = track.codec_private().unwrap().to_vec();

    let cfg = MuxerConfig {
        timeline: TimelineConfig {
            use_original_pts: true,
            ..Default::default()
        },
        fragmenter: FragmenterConfig::default(),
        ..Default::default()
    };
    let mut m = StreamMuxer::new(cfg, Box::new(SystemClock));
    let v = m.add_track(TrackType::Video, "kinesis_video").unwrap();
    m.set_input(
        v,
        TrackInput::Configured(TrackConfig::h264(&cpd, Some(640), Some(480)).unwrap()),
    )
    .unwrap();
    for f in &reference {
        for (name, value) in &f.tags {
            m.add_metadata(name, value, false).unwrap();
        }
        for b in &f.blocks {
            let ts = (f.timecode + b.relative as u64) * 1_000_000;
            m.push(
                v,
                FrameIn {
                    pts: Some(ts),
                    dts: Some(ts),
                    duration: None,
                    key: b.flags & 0x80 != 0,
                    data: &b.data,
                },
            )
            .unwrap();
        }
    }
    assert!(m.end_of_stream(v).unwrap());
    let ours = to_stream(&take_fragments(&mut m));

    // Same element tree: ids and nesting, element for element (EBML header, Info, Tracks,
    // TrackEntry with Video and CodecPrivate, Tags chains, Clusters with Timecode, Position and
    // the same number of SimpleBlocks).
    assert_eq!(structure(&ours), structure(&data));
    // Same fragments: metadata, cluster timecodes, blocks byte for byte.
    assert_eq!(kvs_fragments(&ours), reference);
    // Same track entry (our CodecPrivate is the file's).
    let (ours_mkv, _) = demux(&ours);
    let t = &ours_mkv.tracks()[0];
    assert_eq!(t.codec_id(), "V_MPEG4/ISO/AVC");
    assert_eq!(t.name(), Some("kinesis_video"));
    assert_eq!(t.codec_private(), Some(&cpd[..]));
    let vid = t.video().unwrap();
    assert_eq!(
        (vid.pixel_width().get(), vid.pixel_height().get()),
        (640, 480)
    );
    assert_eq!(ours_mkv.info().timestamp_scale().get(), 1_000_000);
    assert!(ours_mkv.info().muxing_app().starts_with("kvssink-rs "));
    // Byte-identical header up to Info's 2-byte size (whose value differs: our product
    // strings), then the SegmentUID element header and the TimecodeScale element.
    assert_eq!(&ours[..0x32], &data[..0x32]);
    assert_eq!(&ours[0x33..0x36], &data[0x33..0x36]);
    assert_ne!(
        &ours[0x36..0x46],
        &data[0x36..0x46],
        "our own random SegmentUID"
    );
    assert_eq!(&ours[0x46..0x52], &data[0x46..0x52]);
}
