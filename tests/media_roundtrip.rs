//! Round trip: random frame sequences (tracks, sizes, timestamps, key flags) → the stream muxer
//! → Matroska bytes → read back by independent readers (`matroska-demuxer` for frames,
//! `webm-iterable` for the fragment structure) → identical payloads, order, flags and timecodes.

mod common;
use common::media as util;

use gstkvssink::media::codec::{G711Law, TrackConfig, TrackType};
use gstkvssink::media::fragmenter::FragmenterConfig;
use gstkvssink::media::muxer::{FrameIn, MuxerConfig, StreamMuxer, TrackInput};
use gstkvssink::media::timeline::{SystemClock, TimelineConfig};
use proptest::prelude::*;
use util::*;

const EPOCH_MS: u64 = 1_700_000_000_000;
const MS: u64 = 1_000_000;

/// avcC with a Baseline 320x240 SPS and a PPS.
const AVCC: [u8; 23] = [
    1, 66, 0, 30, 0xFF, 0xE1, 0, 8, 0x67, 66, 0, 30, 0xF4, 0x0A, 0x0F, 0xC8, 1, 0, 4, 0x68, 0xCE,
    0x38, 0x80,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Video,
    Audio,
    AudioVideo,
}

#[derive(Debug, Clone)]
struct InFrame {
    /// 0 = video, 1 = audio.
    kind: usize,
    dts_ms: u64,
    pts_ms: u64,
    key: bool,
    data: Vec<u8>,
}

fn frames_strategy() -> impl Strategy<Value = (Layout, Vec<InFrame>, bool, u64)> {
    let layout = prop_oneof![
        Just(Layout::Video),
        Just(Layout::Audio),
        Just(Layout::AudioVideo)
    ];
    let frame = (
        any::<bool>(),
        1u64..60,
        0u64..3,
        prop::bool::weighted(0.15),
        // Not empty: the muxer refuses empty frames (MuxError::Empty).
        prop::collection::vec(any::<u8>(), 1..3000),
    );
    (
        layout,
        prop::collection::vec(frame, 1..250),
        any::<bool>(),
        1000u64..5000,
    )
        .prop_map(|(layout, raw, kff, frag_ms)| {
            let mut t = EPOCH_MS;
            let frames = raw
                .into_iter()
                .map(|(pick, step, reorder, key, data)| {
                    t += step;
                    let kind = match layout {
                        Layout::Video => 0,
                        Layout::Audio => 1,
                        Layout::AudioVideo => usize::from(pick),
                    };
                    // Video non-key frames may be shown later than decoded (B-frame-like);
                    // key frames have PTS = DTS. Audio: PTS = DTS, always key.
                    let (pts, key) = if kind == 0 {
                        (if key { t } else { t + reorder * 40 }, key)
                    } else {
                        (t, true)
                    };
                    InFrame {
                        kind,
                        dts_ms: t,
                        pts_ms: pts,
                        key,
                        data,
                    }
                })
                .collect::<Vec<InFrame>>();
            // Closed GOPs, as encoders make them: no frame is shown after the next key frame
            // (else the service refuses the next fragment, 4004).
            let mut frames = frames;
            let mut next_key_pts = None;
            for f in frames.iter_mut().rev().filter(|f| f.kind == 0) {
                if f.key {
                    next_key_pts = Some(f.pts_ms);
                } else if let Some(k) = next_key_pts {
                    f.pts_ms = f.pts_ms.min(k - 1).max(f.dts_ms);
                }
            }
            (layout, frames, kff, frag_ms)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn frames_survive_the_round_trip((layout, frames, kff, frag_ms) in frames_strategy()) {
        let cfg = MuxerConfig {
            timeline: TimelineConfig { use_original_pts: true, ..Default::default() },
            fragmenter: FragmenterConfig {
                key_frame_fragmentation: kff,
                fragment_duration_ns: frag_ms * MS,
                // One header for the whole file: this checks the writer, not session changes.
                omit_silent_tracks: false,
                ..Default::default()
            },
            ..Default::default()
        };
        let mut m = StreamMuxer::new(cfg, Box::new(SystemClock));
        let mut ids = [None, None];
        if layout != Layout::Audio {
            let v = m.add_track(TrackType::Video, "kinesis_video").unwrap();
            m.set_input(v, TrackInput::Configured(TrackConfig::h264(&AVCC, None, None).unwrap())).unwrap();
            ids[0] = Some(v);
        }
        if layout != Layout::Video {
            let a = m.add_track(TrackType::Audio, "audio").unwrap();
            m.set_input(a, TrackInput::Configured(TrackConfig::g711(G711Law::ALaw, 8000, 1).unwrap())).unwrap();
            ids[1] = Some(a);
        }
        for f in &frames {
            m.push(ids[f.kind].unwrap(), FrameIn {
                pts: Some(f.pts_ms * MS),
                dts: Some(f.dts_ms * MS),
                duration: None,
                key: f.key,
                data: &f.data,
            }).unwrap();
        }
        for id in ids.into_iter().flatten() {
            m.end_of_stream(id).unwrap();
        }
        let fragments = take_fragments(&mut m);

        // What must come out: everything from the first video key frame on (all of it without
        // video), in arrival order (arrival is in DTS order); audio of up to 2 s before the
        // first video key frame goes into the first fragment, right after that key frame.
        let first = if layout == Layout::Audio {
            Some(0)
        } else {
            frames.iter().position(|f| f.kind == 0 && f.key)
        };
        let expected: Vec<&InFrame> = first.map_or(vec![], |i| {
            let mut lead: Vec<&InFrame> = Vec::new();
            if layout == Layout::AudioVideo {
                for f in frames[..i].iter().filter(|f| f.kind == 1) {
                    lead.push(f);
                    while lead.first().is_some_and(|a| f.pts_ms.saturating_sub(a.pts_ms) > 2000) {
                        lead.remove(0);
                    }
                }
            }
            let mut v = vec![&frames[i]];
            v.extend(lead);
            v.extend(frames[i + 1..].iter());
            v
        });
        prop_assert_eq!(m.stats().dropped() as usize, frames.len() - expected.len());
        if expected.is_empty() {
            prop_assert!(fragments.is_empty());
            return Ok(());
        }
        let number = |kind: usize| -> u64 {
            if layout == Layout::AudioVideo && kind == 1 { 2 } else { 1 }
        };

        let stream = to_stream(&fragments);
        let (mkv, got) = demux(&stream);
        prop_assert_eq!(mkv.tracks().len(), if layout == Layout::AudioVideo { 2 } else { 1 });
        prop_assert_eq!(got.len(), expected.len());
        for (g, e) in got.iter().zip(&expected) {
            prop_assert_eq!(g.track, number(e.kind));
            prop_assert_eq!(g.timestamp, e.pts_ms);
            prop_assert_eq!(&g.data, &e.data);
            let key = e.key && (e.kind == 0 || layout == Layout::Audio);
            prop_assert_eq!(g.key, key);
        }

        // Fragment structure: as many clusters as fragments, strictly increasing timecodes,
        // non-negative relative timecodes, EoFR only at the end, each video fragment starting
        // with a key frame.
        let parsed = kvs_fragments(&stream);
        prop_assert_eq!(parsed.len(), fragments.len());
        for (p, f) in parsed.iter().zip(&fragments) {
            prop_assert_eq!(p.timecode, f.timecode);
            prop_assert_eq!(p.blocks.len() as u32, f.frames());
            prop_assert!(p.blocks.iter().all(|b| b.relative >= 0));
            if layout != Layout::Audio {
                prop_assert_eq!(p.blocks[0].flags, 0x80);
            }
        }
        prop_assert!(parsed.windows(2).all(|w| w[0].timecode < w[1].timecode));
        prop_assert!(fragments.last().unwrap().end_of_stream);
        prop_assert_eq!(
            parsed.last().unwrap().trailing_tags.clone(),
            vec![("AWS_KINESISVIDEO_END_OF_FRAGMENT".to_owned(), String::new())]
        );
        prop_assert!(fragments[..fragments.len() - 1].iter().all(|f| !f.end_of_stream));
        prop_assert!(fragments[0].header_changed && fragments[1..].iter().all(|f| !f.header_changed));
        let st = m.stats().fragmenter;
        prop_assert_eq!((st.forced_splits, st.timecodes_raised, st.frames_clamped), (0, 0, 0));

        // Fragment boundaries follow the rules.
        if layout != Layout::Audio {
            let video_keys = expected.iter().filter(|e| e.kind == 0 && e.key).count();
            if kff {
                prop_assert_eq!(fragments.len(), video_keys);
            } else {
                prop_assert!(fragments.len() <= video_keys);
            }
        }
    }
}
