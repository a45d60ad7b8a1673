//! The session header: EBML header · Segment (unknown size) · Info · Tracks, byte for byte as the
//! reference lays it out (docs/kvs-protocol.md §2.3), except for the product strings, which name us.
//!
//! A header is written at stream start, whenever the codec configuration changes (a new header
//! starts at the next key frame) and is re-sent in front of the first fragment of every PutMedia
//! connection. It is built once per configuration and shared as `Bytes`.

use bytes::{BufMut, Bytes, BytesMut};

use super::{
    UNKNOWN_SIZE_1, id, put_bytes_element, put_id, put_u8_element, put_u64_element, put_vint,
};
use crate::media::codec::{TrackConfig, TrackType};

/// The EBML header of the reference (Matroska, DocTypeVersion 2): 40 bytes.
pub const EBML_HEADER: [u8; 40] = [
    0x1A, 0x45, 0xDF, 0xA3, 0xA3, // EBML, size 35
    0x42, 0x86, 0x81, 0x01, // EBMLVersion 1
    0x42, 0xF7, 0x81, 0x01, // EBMLReadVersion 1
    0x42, 0xF2, 0x81, 0x04, // EBMLMaxIDLength 4
    0x42, 0xF3, 0x81, 0x08, // EBMLMaxSizeLength 8
    0x42, 0x82, 0x88, b'm', b'a', b't', b'r', b'o', b's', b'k', b'a', // DocType
    0x42, 0x87, 0x81, 0x02, // DocTypeVersion 2
    0x42, 0x85, 0x81, 0x02, // DocTypeReadVersion 2
];

/// Our product name in Info/Title.
pub const TITLE: &str = "kvssink-rs";

/// Muxing/WritingApp: product and version, like the reference's "Kinesis Video SDK 1.1.0".
pub fn app_string() -> String {
    format!("{TITLE} {}", env!("CARGO_PKG_VERSION"))
}

/// Segment Info fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Random per stream and per header version.
    pub segment_uid: [u8; 16],
    /// Nanoseconds per timecode unit (1 000 000 = 1 ms, the default).
    pub timecode_scale_ns: u64,
}

/// One track as it appears in the Tracks element.
#[derive(Debug, Clone, PartialEq)]
pub struct HeaderTrack<'a> {
    /// TrackNumber (1-based; the SimpleBlocks' track vint).
    pub number: u8,
    /// TrackUID (the reference uses its track id: 1 video, 2 audio).
    pub uid: u64,
    /// Name, omitted when empty.
    pub name: &'a str,
    pub config: &'a TrackConfig,
}

/// Writes EBML header, Segment start, Info and Tracks.
pub fn write_header(info: &SegmentInfo, tracks: &[HeaderTrack<'_>]) -> Bytes {
    let mut buf = BytesMut::with_capacity(512);
    buf.put_slice(&EBML_HEADER);
    put_id(&mut buf, id::SEGMENT);
    buf.put_u8(UNKNOWN_SIZE_1);
    write_info(&mut buf, info);
    write_tracks(&mut buf, tracks);
    buf.freeze()
}

fn write_info(buf: &mut BytesMut, info: &SegmentInfo) {
    let app = app_string();
    let mut body = Vec::with_capacity(128);
    put_bytes_element(&mut body, id::SEGMENT_UID, &info.segment_uid);
    put_u64_element(&mut body, id::TIMECODE_SCALE, info.timecode_scale_ns);
    put_bytes_element(&mut body, id::TITLE, TITLE.as_bytes());
    put_bytes_element(&mut body, id::MUXING_APP, app.as_bytes());
    put_bytes_element(&mut body, id::WRITING_APP, app.as_bytes());
    put_id(buf, id::INFO);
    put_vint(buf, body.len() as u64, 2);
    buf.put_slice(&body);
}

fn write_tracks(buf: &mut BytesMut, tracks: &[HeaderTrack<'_>]) {
    let mut body = Vec::with_capacity(256);
    for t in tracks {
        let entry = track_entry(t);
        put_id(&mut body, id::TRACK_ENTRY);
        put_vint(&mut body, entry.len() as u64, 4);
        body.put_slice(&entry);
    }
    put_id(buf, id::TRACKS);
    put_vint(buf, body.len() as u64, 4);
    buf.put_slice(&body);
}

fn track_entry(t: &HeaderTrack<'_>) -> Vec<u8> {
    let c = t.config;
    let mut e = Vec::with_capacity(64 + c.codec_private.len());
    put_u8_element(&mut e, id::TRACK_NUMBER, t.number);
    put_u64_element(&mut e, id::TRACK_UID, t.uid);
    put_u8_element(
        &mut e,
        id::TRACK_TYPE,
        match c.track_type {
            TrackType::Video => 1,
            TrackType::Audio => 2,
        },
    );
    if !t.name.is_empty() {
        put_bytes_element(&mut e, id::NAME, t.name.as_bytes());
    }
    put_bytes_element(&mut e, id::CODEC_ID, c.codec_id.as_bytes());
    if let Some(v) = &c.video
        && v.width != 0
    {
        put_id(&mut e, id::VIDEO);
        put_vint(&mut e, 8, 4);
        put_id(&mut e, id::PIXEL_WIDTH);
        e.put_u8(0x82);
        e.put_u16(v.width);
        put_id(&mut e, id::PIXEL_HEIGHT);
        e.put_u8(0x82);
        e.put_u16(v.height);
    }
    if let Some(a) = &c.audio
        && a.sampling_frequency > 0.0
    {
        put_id(&mut e, id::AUDIO);
        put_vint(&mut e, if a.bit_depth != 0 { 0x11 } else { 0x0D }, 4);
        put_id(&mut e, id::SAMPLING_FREQUENCY);
        e.put_u8(0x88);
        e.put_f64(a.sampling_frequency);
        put_u8_element(&mut e, id::CHANNELS, a.channels);
        if a.bit_depth != 0 {
            put_u8_element(&mut e, id::BIT_DEPTH, a.bit_depth);
        }
    }
    if !c.codec_private.is_empty() {
        put_bytes_element(&mut e, id::CODEC_PRIVATE, &c.codec_private);
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::codec::{AudioParams, VideoParams};

    fn video_config() -> TrackConfig {
        TrackConfig {
            track_type: TrackType::Video,
            codec_id: "V_MPEG4/ISO/AVC".into(),
            codec_private: Bytes::from_static(&[1, 0x42, 0, 0x1e, 0xff, 0xe1]),
            video: Some(VideoParams {
                width: 640,
                height: 480,
            }),
            audio: None,
        }
    }

    #[test]
    fn ebml_header_is_the_reference_one() {
        // 1A45DFA3 A3 and a 35-byte body: 40 bytes, as docs/kvs-protocol.md §2.3 says.
        assert_eq!(EBML_HEADER.len(), 40);
        assert_eq!((EBML_HEADER[4] & 0x7F) as usize, EBML_HEADER.len() - 5);
    }

    #[test]
    fn header_layout_matches_the_reference_widths() {
        let cfg = video_config();
        let info = SegmentInfo {
            segment_uid: [0x55; 16],
            timecode_scale_ns: 1_000_000,
        };
        let h = write_header(
            &info,
            &[HeaderTrack {
                number: 1,
                uid: 1,
                name: "kinesis_video",
                config: &cfg,
            }],
        );
        let b = &h[..];
        assert_eq!(&b[..40], &EBML_HEADER);
        assert_eq!(&b[40..45], &[0x18, 0x53, 0x80, 0x67, 0xFF]);
        // Info with a 2-byte size 0x40xx.
        assert_eq!(&b[45..49], &[0x15, 0x49, 0xA9, 0x66]);
        assert_eq!(b[49] & 0xC0, 0x40);
        let info_len = (usize::from(b[49] & 0x3F) << 8) | usize::from(b[50]);
        let info_body = &b[51..51 + info_len];
        assert_eq!(&info_body[..3], &[0x73, 0xA4, 0x90]);
        assert_eq!(&info_body[19..23], &[0x2A, 0xD7, 0xB1, 0x88]);
        assert_eq!(&info_body[23..31], &1_000_000u64.to_be_bytes());
        let rest = &b[51 + info_len..];
        // Tracks and TrackEntry with 4-byte sizes.
        assert_eq!(&rest[..5], &[0x16, 0x54, 0xAE, 0x6B, 0x10]);
        assert_eq!(rest[8], 0xAE);
        assert_eq!(rest[9], 0x10);
        let entry = &rest[13..];
        assert_eq!(&entry[..3], &[0xD7, 0x81, 0x01]);
        assert_eq!(&entry[3..6], &[0x73, 0xC5, 0x88]);
        assert_eq!(&entry[14..17], &[0x83, 0x81, 0x01]);
        let video_at = entry
            .windows(5)
            .position(|w| w == [0xE0, 0x10, 0, 0, 8])
            .expect("Video element");
        assert_eq!(
            &entry[video_at + 5..video_at + 13],
            &[0xB0, 0x82, 0x02, 0x80, 0xBA, 0x82, 0x01, 0xE0]
        );
        assert!(rest.ends_with(&[0x63, 0xA2, 0x86, 1, 0x42, 0, 0x1e, 0xff, 0xe1]));
    }

    #[test]
    fn audio_element_has_bit_depth_only_when_known() {
        let mut cfg = TrackConfig {
            track_type: TrackType::Audio,
            codec_id: "A_MS/ACM".into(),
            codec_private: Bytes::new(),
            video: None,
            audio: Some(AudioParams {
                sampling_frequency: 8000.0,
                channels: 1,
                bit_depth: 8,
            }),
        };
        let e = track_entry(&HeaderTrack {
            number: 2,
            uid: 2,
            name: "audio",
            config: &cfg,
        });
        let at = e.iter().position(|&x| x == 0xE1).unwrap();
        assert_eq!(&e[at..at + 5], &[0xE1, 0x10, 0, 0, 0x11]);
        assert_eq!(&e[at + 5..at + 7], &[0xB5, 0x88]);
        assert_eq!(&e[at + 7..at + 15], &8000.0f64.to_be_bytes());
        assert_eq!(&e[at + 15..], &[0x9F, 0x81, 1, 0x62, 0x64, 0x81, 8]);
        cfg.audio.as_mut().unwrap().bit_depth = 0;
        let e = track_entry(&HeaderTrack {
            number: 2,
            uid: 2,
            name: "",
            config: &cfg,
        });
        assert!(!e.windows(2).any(|w| w == [0x53, 0x6E]), "no Name");
        let at = e.iter().position(|&x| x == 0xE1).unwrap();
        assert_eq!(&e[at..at + 5], &[0xE1, 0x10, 0, 0, 0x0D]);
        assert_eq!(e.len(), at + 5 + 0x0D);
    }
}
