//! Caps: the pad templates (the reference element's, plus Annex-B H.264, so encoders can be
//! linked without a parser) and what a pad's caps mean for its track.

use crate::media::codec::{G711Law, TrackConfig, VideoCodec};
use crate::media::muxer::TrackInput;

/// What a pad's caps say: the track input for the muxer and the content type for CreateStream.
pub struct CapsInfo {
    pub input: TrackInput,
    pub content_type: &'static str,
}

fn int(s: &gst::StructureRef, field: &str) -> Option<u32> {
    s.get::<i32>(field).ok().and_then(|v| u32::try_from(v).ok())
}

fn codec_data(s: &gst::StructureRef) -> Option<gst::Buffer> {
    s.get::<gst::Buffer>("codec_data").ok()
}

/// Interprets the caps of a pad. `codec_id` is the `codec-id` property (H.264 only).
pub fn caps_info(caps: &gst::CapsRef, codec_id: &str) -> Result<CapsInfo, String> {
    let s = caps.structure(0).ok_or_else(|| "empty caps".to_owned())?;
    let (width, height) = (int(s, "width"), int(s, "height"));
    let format = s.get::<&str>("stream-format").ok();
    let map_err = |e: crate::media::codec::CodecError| format!("{caps}: {e}");
    let with_data = |f: &dyn Fn(&[u8]) -> Result<TrackConfig, crate::media::codec::CodecError>| {
        let data = codec_data(s).ok_or_else(|| format!("{caps}: no codec_data"))?;
        let map = data
            .map_readable()
            .map_err(|_| "codec_data is not readable".to_owned())?;
        f(map.as_slice()).map_err(map_err)
    };
    match s.name().as_str() {
        "video/x-h264" => match format {
            Some("byte-stream") => Ok(CapsInfo {
                input: TrackInput::AnnexB {
                    codec: VideoCodec::H264,
                    width,
                    height,
                },
                content_type: "video/h264",
            }),
            _ => {
                let cfg = with_data(&|d| TrackConfig::h264(d, width, height))?;
                Ok(CapsInfo {
                    input: TrackInput::Configured(cfg.with_codec_id(codec_id)),
                    content_type: "video/h264",
                })
            }
        },
        "video/x-h265" => {
            if format == Some("byte-stream") || codec_data(s).is_none() {
                Ok(CapsInfo {
                    input: TrackInput::AnnexB {
                        codec: VideoCodec::H265,
                        width,
                        height,
                    },
                    content_type: "video/h265",
                })
            } else {
                let cfg = with_data(&|d| TrackConfig::h265(d, width, height))?;
                Ok(CapsInfo {
                    input: TrackInput::Configured(cfg),
                    content_type: "video/h265",
                })
            }
        }
        "audio/mpeg" => {
            let data = codec_data(s);
            let map = data.as_ref().and_then(|b| b.map_readable().ok());
            let cfg = TrackConfig::aac(
                map.as_ref().map(|m| m.as_slice()),
                int(s, "rate"),
                int(s, "channels"),
            )
            .map_err(map_err)?;
            Ok(CapsInfo {
                input: TrackInput::Configured(cfg),
                content_type: "audio/aac",
            })
        }
        name @ ("audio/x-alaw" | "audio/x-mulaw") => {
            let (law, content_type) = if name == "audio/x-alaw" {
                (G711Law::ALaw, "audio/alaw")
            } else {
                (G711Law::MuLaw, "audio/mulaw")
            };
            let rate = int(s, "rate").ok_or_else(|| format!("{caps}: no rate"))?;
            let channels = int(s, "channels").unwrap_or(1);
            let cfg = TrackConfig::g711(law, rate, channels).map_err(map_err)?;
            Ok(CapsInfo {
                input: TrackInput::Configured(cfg),
                content_type,
            })
        }
        other => Err(format!("unsupported caps {other}")),
    }
}

/// `video_%u`: H.264 avc or byte-stream (Annex-B, converted here), H.265 in any stream format,
/// access units, at least 16x16.
pub fn video_template_caps() -> gst::Caps {
    let mut caps = gst::Caps::builder("video/x-h264")
        .field("stream-format", gst::List::new(["avc", "byte-stream"]))
        .field("alignment", "au")
        .field("width", gst::IntRange::new(16, i32::MAX))
        .field("height", gst::IntRange::new(16, i32::MAX))
        .build();
    caps.merge(
        gst::Caps::builder("video/x-h265")
            .field("alignment", "au")
            .field("width", gst::IntRange::new(16, i32::MAX))
            .field("height", gst::IntRange::new(16, i32::MAX))
            .build(),
    );
    caps
}

/// `audio_%u`: raw AAC (MPEG-2/4), A-law and µ-law.
pub fn audio_template_caps() -> gst::Caps {
    let mut caps = gst::Caps::builder("audio/mpeg")
        .field("mpegversion", gst::List::new([2i32, 4]))
        .field("stream-format", "raw")
        .field("channels", gst::IntRange::new(1, i32::MAX))
        .field("rate", gst::IntRange::new(1, i32::MAX))
        .build();
    for name in ["audio/x-alaw", "audio/x-mulaw"] {
        caps.merge(
            gst::Caps::builder(name)
                .field("channels", gst::List::new([1i32, 2]))
                .field("rate", gst::IntRange::new(8000, 192_000))
                .build(),
        );
    }
    caps
}
