//! Real encoder output (GStreamer's x264enc, x265enc, avenc_aac, alawenc, mulawenc) through the
//! media core, and the resulting files checked by the tools users will use: `mkvmerge -J` (no
//! errors or warnings), `ffmpeg -v warning -xerror` (decodes without a message), `ffprobe`
//! (strictly increasing PTS per track, every frame present) and GStreamer's own demuxer and
//! decoders (no WARN/ERROR). Each test is skipped, with a message, when a tool is missing.

mod common;
use common::media as util;
use common::mkv_check;

use std::path::{Path, PathBuf};
use std::process::Command;

use gstkvssink::media::codec::{G711Law, TrackConfig, TrackType, VideoCodec};
use gstkvssink::media::muxer::{FrameIn, MuxerConfig, StreamMuxer, TrackInput};
use gstkvssink::media::timeline::SystemClock;
use mkv_check::check_file;
use util::*;

/// Encoded buffers of a gst-launch pipeline, one per buffer, and the `codec_data` of its caps.
struct Encoded {
    buffers: Vec<Vec<u8>>,
    codec_data: Option<Vec<u8>>,
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kvssink-media-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn encode(dir: &Path, pipeline: &str) -> Encoded {
    let location = dir.join("%05d.bin");
    let line = format!(
        "{pipeline} ! multifilesink location={} next-file=buffer",
        location.display()
    );
    let out = Command::new("gst-launch-1.0")
        .arg("-v")
        .args(line.split_whitespace())
        .output()
        .expect("gst-launch-1.0 runs");
    assert!(
        out.status.success(),
        "{line}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let codec_data = stdout
        .lines()
        .filter(|l| l.contains("GstMultiFileSink") && l.contains("codec_data=(buffer)"))
        .find_map(|l| {
            let hex = l.split("codec_data=(buffer)").nth(1)?;
            let hex: String = hex.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
            Some(
                (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                    .collect(),
            )
        });
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
        .collect();
    files.sort();
    let buffers = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
    for f in files {
        std::fs::remove_file(f).unwrap();
    }
    Encoded {
        buffers,
        codec_data,
    }
}

fn tools_present() -> bool {
    let ok = ["gst-launch-1.0", "mkvmerge", "ffmpeg", "ffprobe"]
        .iter()
        .all(|t| have(t));
    if !ok {
        eprintln!("skipped: gst-launch-1.0, mkvmerge, ffmpeg and ffprobe are needed");
    }
    ok
}

fn has_element(name: &str) -> bool {
    Command::new("gst-inspect-1.0")
        .arg(name)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// One track's frames: duration of a frame in ns; key flags come from the caller.
struct Track {
    input: TrackInput,
    kind: TrackType,
    name: &'static str,
    frame_ns: u64,
    buffers: Vec<Vec<u8>>,
    /// Key flag per buffer (None: every buffer is a key frame).
    keys: Option<Vec<bool>>,
}

/// Pushes the tracks' buffers in timestamp order (as a live A/V pipeline delivers them), ends
/// the stream and returns the file.
fn mux(tracks: Vec<Track>) -> Vec<u8> {
    let mut m = StreamMuxer::new(MuxerConfig::default(), Box::new(SystemClock));
    let ids: Vec<usize> = tracks
        .iter()
        .map(|t| {
            let id = m.add_track(t.kind, t.name).unwrap();
            m.set_input(id, t.input.clone()).unwrap();
            id
        })
        .collect();
    let mut next = vec![0usize; tracks.len()];
    loop {
        let pick = (0..tracks.len())
            .filter(|&i| next[i] < tracks[i].buffers.len())
            .min_by_key(|&i| next[i] as u64 * tracks[i].frame_ns);
        let Some(i) = pick else { break };
        let t = &tracks[i];
        let n = next[i];
        let ts = n as u64 * t.frame_ns;
        m.push(
            ids[i],
            FrameIn {
                pts: Some(ts),
                dts: Some(ts),
                duration: Some(t.frame_ns),
                key: t.keys.as_ref().is_none_or(|k| k[n]),
                data: &t.buffers[n],
            },
        )
        .unwrap();
        next[i] += 1;
    }
    for id in &ids {
        m.end_of_stream(*id).unwrap();
    }
    let frags = take_fragments(&mut m);
    assert_eq!(m.stats().dropped(), 0, "{:?}", m.stats());
    to_stream(&frags)
}

/// The four checks of docs/kvs-protocol.md §9, and the frame count of each track.
const FRAME_30FPS: u64 = 1_000_000_000 / 30;

fn video_keys(encoded: &Encoded, codec: VideoCodec) -> Vec<bool> {
    // Key frames of an encoder's output: the buffers with an IDR/IRAP NAL unit.
    encoded
        .buffers
        .iter()
        .map(|b| {
            let nals: Vec<&[u8]> = if b.starts_with(&[0, 0, 0, 1]) || b.starts_with(&[0, 0, 1]) {
                gstkvssink::media::codec::annexb::nal_units(b).collect()
            } else {
                let mut v = Vec::new();
                let mut i = 0;
                while i + 4 <= b.len() {
                    let n = u32::from_be_bytes(b[i..i + 4].try_into().unwrap()) as usize;
                    v.push(&b[i + 4..i + 4 + n]);
                    i += 4 + n;
                }
                v
            };
            nals.iter().any(|n| match codec {
                VideoCodec::H264 => n[0] & 0x1F == 5,
                VideoCodec::H265 => (16..=23).contains(&((n[0] >> 1) & 0x3F)),
            })
        })
        .collect()
}

const X264: &str = "videotestsrc num-buffers=60 ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 ! x264enc key-int-max=15 bframes=0 speed-preset=ultrafast";
const X265: &str = "videotestsrc num-buffers=60 ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 ! x265enc key-int-max=15 tune=zerolatency speed-preset=ultrafast";

#[test]
fn h264_byte_stream_from_the_encoder_with_aac() {
    if !tools_present() || !has_element("x264enc") || !has_element("avenc_aac") {
        return;
    }
    let dir = tmpdir("h264-bs");
    let video = encode(
        &dir,
        &format!("{X264} ! video/x-h264,stream-format=byte-stream,alignment=au"),
    );
    let audio = encode(
        &dir,
        "audiotestsrc num-buffers=86 samplesperbuffer=1024 ! audio/x-raw,rate=44100,channels=2 ! avenc_aac ! aacparse ! audio/mpeg,mpegversion=4,stream-format=raw",
    );
    assert_eq!(video.buffers.len(), 60);
    let keys = video_keys(&video, VideoCodec::H264);
    assert_eq!(keys.iter().filter(|k| **k).count(), 4);
    let asc = audio
        .codec_data
        .clone()
        .expect("aacparse caps have codec_data");
    let data = mux(vec![
        Track {
            input: TrackInput::AnnexB {
                codec: VideoCodec::H264,
                width: Some(320),
                height: Some(240),
            },
            kind: TrackType::Video,
            name: "kinesis_video",
            frame_ns: FRAME_30FPS,
            buffers: video.buffers,
            keys: Some(keys),
        },
        Track {
            input: TrackInput::Configured(
                TrackConfig::aac(Some(&asc), Some(44100), Some(2)).unwrap(),
            ),
            kind: TrackType::Audio,
            name: "audio",
            frame_ns: 1024 * 1_000_000_000 / 44100,
            buffers: audio.buffers.clone(),
            keys: None,
        },
    ]);
    std::fs::remove_dir_all(dir).unwrap();
    check_file(
        "h264-bs-aac",
        &data,
        &[60, audio.buffers.len()],
        &[
            ("video_0", "h264parse ! avdec_h264"),
            ("audio_0", "aacparse ! avdec_aac"),
        ],
    );
}

#[test]
fn h264_avc_with_alaw_and_mulaw() {
    if !tools_present() || !has_element("x264enc") || !has_element("alawenc") {
        return;
    }
    let dir = tmpdir("h264-avc");
    let video = encode(
        &dir,
        &format!("{X264} ! h264parse ! video/x-h264,stream-format=avc,alignment=au"),
    );
    let avcc = video
        .codec_data
        .clone()
        .expect("h264parse caps have codec_data");
    let keys = video_keys(&video, VideoCodec::H264);
    for (law, enc, dec) in [
        (G711Law::ALaw, "alawenc", "alawdec"),
        (G711Law::MuLaw, "mulawenc", "mulawdec"),
    ] {
        let audio = encode(
            &dir,
            &format!(
                "audiotestsrc num-buffers=100 samplesperbuffer=160 ! audio/x-raw,rate=8000,channels=1 ! {enc}"
            ),
        );
        assert!(audio.buffers.iter().all(|b| b.len() == 160));
        let data = mux(vec![
            Track {
                input: TrackInput::Configured(
                    TrackConfig::h264(&avcc, Some(320), Some(240)).unwrap(),
                ),
                kind: TrackType::Video,
                name: "kinesis_video",
                frame_ns: FRAME_30FPS,
                buffers: video.buffers.clone(),
                keys: Some(keys.clone()),
            },
            Track {
                input: TrackInput::Configured(TrackConfig::g711(law, 8000, 1).unwrap()),
                kind: TrackType::Audio,
                name: "audio",
                frame_ns: 20_000_000,
                buffers: audio.buffers,
                keys: None,
            },
        ]);
        check_file(
            enc,
            &data,
            &[60, 100],
            &[("video_0", "h264parse ! avdec_h264"), ("audio_0", dec)],
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn h265_byte_stream_and_hvc1() {
    if !tools_present() || !has_element("x265enc") {
        return;
    }
    let dir = tmpdir("h265");
    let bs = encode(
        &dir,
        &format!("{X265} ! video/x-h265,stream-format=byte-stream,alignment=au"),
    );
    let hvc1 = encode(
        &dir,
        &format!("{X265} ! h265parse ! video/x-h265,stream-format=hvc1,alignment=au"),
    );
    std::fs::remove_dir_all(dir).unwrap();
    let hvcc = hvc1
        .codec_data
        .clone()
        .expect("h265parse caps have codec_data");
    for (name, input, enc) in [
        (
            "h265-bs",
            TrackInput::AnnexB {
                codec: VideoCodec::H265,
                width: None,
                height: None,
            },
            &bs,
        ),
        (
            "h265-hvc1",
            TrackInput::Configured(TrackConfig::h265(&hvcc, Some(320), Some(240)).unwrap()),
            &hvc1,
        ),
    ] {
        let keys = video_keys(enc, VideoCodec::H265);
        assert!(
            keys[0] && keys.iter().filter(|k| **k).count() >= 4,
            "{keys:?}"
        );
        let data = mux(vec![Track {
            input,
            kind: TrackType::Video,
            name: "kinesis_video",
            frame_ns: FRAME_30FPS,
            buffers: enc.buffers.clone(),
            keys: Some(keys),
        }]);
        let (mkv, _) = demux(&data);
        assert_eq!(mkv.tracks()[0].codec_id(), "V_MPEGH/ISO/HEVC");
        check_file(name, &data, &[60], &[("video_0", "h265parse ! avdec_h265")]);
    }
}
