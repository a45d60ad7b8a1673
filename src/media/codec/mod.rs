//! Track configuration from caps-level inputs: CodecID, CodecPrivate and the Video/Audio fields of
//! the Matroska track entry, for every input the sink takes. No GStreamer types: the element
//! reads caps fields and calls the constructors here.
//!
//! | caps | constructor | CodecID | CodecPrivate |
//! |---|---|---|---|
//! | `video/x-h264, stream-format=avc/avc3` | [`TrackConfig::h264`] | `V_MPEG4/ISO/AVC` | `codec_data` (avcC), verbatim |
//! | `video/x-h265, stream-format=hvc1/hev1` | [`TrackConfig::h265`] | `V_MPEGH/ISO/HEVC` | `codec_data` (hvcC), verbatim |
//! | `video/x-h264/x-h265, stream-format=byte-stream` | [`annexb::AnnexBConverter`] | as above | built from in-band SPS/PPS(/VPS) |
//! | `audio/mpeg, mpegversion=2/4, stream-format=raw` | [`TrackConfig::aac`] | `A_AAC` | `codec_data` (AudioSpecificConfig) |
//! | `audio/x-alaw`, `audio/x-mulaw` | [`TrackConfig::g711`] | `A_MS/ACM` | 18-byte WAVEFORMATEX |
//!
//! Width/height come from the SPS when it parses (it is what decoders use), else from the caps;
//! sample rate/channels from the AudioSpecificConfig, else from the caps. Where the reference
//! writes wrong values we do not copy them: the G.711 WAVEFORMATEX has
//! `nAvgBytesPerSec = rate × channels` and `wBitsPerSample = 8` (the reference writes
//! `rate × channels / 8` and 0).
//!
//! ## Why no parsing crates
//! Only a few fields of the SPS (profile, level, chroma format, bit depth, coded size and
//! cropping) and the start-code splitter are needed. `h264-reader` and `scuffle-h265` would each
//! bring a bit-reader stack for ~250 lines of straightforward, fuzzable code (`bits`, `h264`,
//! `h265`); the splitter uses `memchr` (already in the dependency tree) to find start codes fast.

pub mod aac;
pub mod annexb;
pub mod bits;
pub mod g711;
pub mod h264;
pub mod h265;

use bytes::Bytes;

pub use annexb::{AnnexBConverter, ConvertedAu};
pub use g711::G711Law;

/// CodecIDs the reference uses (PIC `mkvgen` Include.h).
pub const CODEC_ID_H264: &str = "V_MPEG4/ISO/AVC";
pub const CODEC_ID_H265: &str = "V_MPEGH/ISO/HEVC";
pub const CODEC_ID_AAC: &str = "A_AAC";
pub const CODEC_ID_MS_ACM: &str = "A_MS/ACM";

/// The service's (PIC's) largest CodecPrivate.
pub const MAX_CODEC_PRIVATE_LEN: usize = 1024 * 1024;

/// Matroska TrackType.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrackType {
    Video,
    Audio,
}

/// Video codecs the sink takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VideoCodec {
    H264,
    H265,
}

impl VideoCodec {
    pub fn codec_id(self) -> &'static str {
        match self {
            Self::H264 => CODEC_ID_H264,
            Self::H265 => CODEC_ID_H265,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::H264 => "H.264",
            Self::H265 => "H.265",
        }
    }
}

/// Matroska `Video` fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoParams {
    pub width: u16,
    pub height: u16,
}

/// Matroska `Audio` fields. `bit_depth` 0 = not written.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AudioParams {
    pub sampling_frequency: f64,
    pub channels: u8,
    pub bit_depth: u8,
}

/// Everything the track entry of the session header says about one track.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackConfig {
    pub track_type: TrackType,
    pub codec_id: String,
    pub codec_private: Bytes,
    pub video: Option<VideoParams>,
    pub audio: Option<AudioParams>,
}

/// Why caps or in-band data cannot configure a track. Each message names the structure and the
/// rule, so the element can post it as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("{what} is truncated")]
    Truncated { what: &'static str },
    #[error("{what} is invalid: {reason}")]
    Invalid { what: &'static str, reason: String },
    #[error("{what} is not supported: {reason}")]
    Unsupported { what: &'static str, reason: String },
    #[error(
        "{codec} caps have no codec_data; use stream-format=byte-stream or put a parser (e.g. h264parse, aacparse) in front"
    )]
    MissingCodecData { codec: &'static str },
    #[error("the frame contains no NAL unit (not an Annex-B byte stream)")]
    NoNalUnits,
}

fn video_params(
    parsed: Option<(u32, u32)>,
    caps_width: Option<u32>,
    caps_height: Option<u32>,
    what: &'static str,
) -> Result<Option<VideoParams>, CodecError> {
    let (w, h) = match (parsed, caps_width, caps_height) {
        (Some((w, h)), cw, ch) => {
            if (cw.is_some_and(|cw| cw != w)) || (ch.is_some_and(|ch| ch != h)) {
                tracing::warn!(
                    "{what}: the SPS says {w}x{h} but the caps say {}x{}; using the SPS",
                    cw.unwrap_or(0),
                    ch.unwrap_or(0)
                );
            }
            (w, h)
        }
        (None, Some(w), Some(h)) => (w, h),
        _ => return Ok(None),
    };
    let to16 = |v: u32| {
        u16::try_from(v).map_err(|_| CodecError::Unsupported {
            what,
            reason: format!("{w}x{h} is larger than 65535 pixels"),
        })
    };
    Ok(Some(VideoParams {
        width: to16(w)?,
        height: to16(h)?,
    }))
}

/// The checks an avcC and an hvcC share: `configurationVersion` in `versions` (anything else,
/// e.g. an Annex-B start code, means the caps lie about the stream format) and the NAL length
/// size (1, 2 or 4 bytes) from the low bits of `length_byte`.
pub(crate) fn check_config_record(
    what: &'static str,
    version: u8,
    versions: std::ops::RangeInclusive<u8>,
    length_byte: u8,
) -> Result<u8, CodecError> {
    if !versions.contains(&version) {
        return Err(CodecError::Invalid {
            what,
            reason: format!(
                "configurationVersion {version} (an Annex-B byte stream needs stream-format=byte-stream)"
            ),
        });
    }
    let length_size = (length_byte & 3) + 1;
    if length_size == 3 {
        return Err(CodecError::Invalid {
            what,
            reason: "NAL length size 3".into(),
        });
    }
    Ok(length_size)
}

fn check_cpd_len(what: &'static str, data: &[u8]) -> Result<(), CodecError> {
    if data.len() > MAX_CODEC_PRIVATE_LEN {
        return Err(CodecError::Unsupported {
            what,
            reason: format!(
                "{} bytes is more than the service's {MAX_CODEC_PRIVATE_LEN}",
                data.len()
            ),
        });
    }
    Ok(())
}

impl TrackConfig {
    /// H.264 from `codec_data` (avcC, `stream-format=avc`/`avc3`). Width/height: the SPS, else
    /// the caps.
    pub fn h264(
        codec_data: &[u8],
        caps_width: Option<u32>,
        caps_height: Option<u32>,
    ) -> Result<Self, CodecError> {
        check_cpd_len("avcC", codec_data)?;
        let avcc = h264::Avcc::parse(codec_data)?;
        let parsed = match avcc.sps.first().map(|s| h264::Sps::parse(s)) {
            Some(Ok(sps)) => Some((sps.width, sps.height)),
            Some(Err(e)) => {
                tracing::warn!("cannot read the SPS in the avcC ({e}); using the caps' size");
                None
            }
            None => None,
        };
        Ok(Self {
            track_type: TrackType::Video,
            codec_id: CODEC_ID_H264.to_owned(),
            codec_private: Bytes::copy_from_slice(codec_data),
            video: video_params(parsed, caps_width, caps_height, "H.264 track")?,
            audio: None,
        })
    }

    /// H.265 from `codec_data` (hvcC, `stream-format=hvc1`/`hev1`).
    pub fn h265(
        codec_data: &[u8],
        caps_width: Option<u32>,
        caps_height: Option<u32>,
    ) -> Result<Self, CodecError> {
        check_cpd_len("hvcC", codec_data)?;
        let hvcc = h265::Hvcc::parse(codec_data)?;
        let parsed = match hvcc
            .nals_of_type(h265::NAL_SPS)
            .next()
            .map(h265::Sps::parse)
        {
            Some(Ok(sps)) => Some((sps.width, sps.height)),
            Some(Err(e)) => {
                tracing::warn!("cannot read the SPS in the hvcC ({e}); using the caps' size");
                None
            }
            None => None,
        };
        Ok(Self {
            track_type: TrackType::Video,
            codec_id: CODEC_ID_H265.to_owned(),
            codec_private: Bytes::copy_from_slice(codec_data),
            video: video_params(parsed, caps_width, caps_height, "H.265 track")?,
            audio: None,
        })
    }

    /// AAC from `codec_data` (AudioSpecificConfig). Without `codec_data` an AAC-LC
    /// AudioSpecificConfig is synthesized from the caps' rate and channels (with a warning), as
    /// raw AAC cannot be decoded without one.
    pub fn aac(
        codec_data: Option<&[u8]>,
        caps_rate: Option<u32>,
        caps_channels: Option<u32>,
    ) -> Result<Self, CodecError> {
        let (cpd, asc) = match codec_data {
            Some(data) => {
                check_cpd_len("AudioSpecificConfig", data)?;
                (
                    Bytes::copy_from_slice(data),
                    aac::AudioSpecificConfig::parse(data)?,
                )
            }
            None => {
                let (Some(rate), Some(channels)) = (caps_rate, caps_channels) else {
                    return Err(CodecError::MissingCodecData { codec: "AAC" });
                };
                tracing::warn!(
                    "AAC caps have no codec_data: assuming AAC-LC {rate} Hz {channels} ch"
                );
                let data = aac::lc_config(rate, channels)?;
                let asc = aac::AudioSpecificConfig::parse(&data)?;
                (Bytes::copy_from_slice(&data), asc)
            }
        };
        let rate = asc.sampling_frequency.or(caps_rate).unwrap_or(0);
        let channels = asc.channels.map(u32::from).or(caps_channels).unwrap_or(0);
        if let Some(cr) = caps_rate
            && asc.sampling_frequency.is_some_and(|r| r != cr)
        {
            tracing::debug!(
                "AAC: caps rate {cr} differs from the AudioSpecificConfig's {rate} (SBR?); using the latter"
            );
        }
        Ok(Self {
            track_type: TrackType::Audio,
            codec_id: CODEC_ID_AAC.to_owned(),
            codec_private: cpd,
            video: None,
            audio: (rate != 0).then(|| AudioParams {
                sampling_frequency: f64::from(rate),
                channels: u8::try_from(channels).unwrap_or(u8::MAX),
                bit_depth: 0,
            }),
        })
    }

    /// G.711 A-law/µ-law: `A_MS/ACM` with a correct 18-byte WAVEFORMATEX.
    pub fn g711(law: G711Law, rate: u32, channels: u32) -> Result<Self, CodecError> {
        let cpd = g711::waveformatex(law, rate, channels)?;
        Ok(Self {
            track_type: TrackType::Audio,
            codec_id: CODEC_ID_MS_ACM.to_owned(),
            codec_private: Bytes::copy_from_slice(&cpd),
            video: None,
            audio: Some(AudioParams {
                sampling_frequency: f64::from(rate),
                channels: channels as u8,
                bit_depth: 8,
            }),
        })
    }

    /// Replaces the CodecID (the `codec-id` property applies to H.264 video tracks).
    pub fn with_codec_id(mut self, codec_id: impl Into<String>) -> Self {
        self.codec_id = codec_id.into();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The avcC of the KVS C++ SDK test stream (Baseline 3.0, 640x480).
    pub const CPP_AVCC: &str =
        "0142001effe1001d2742001e898b60501ed80b50601063030005dc00017705ef7c1f08846e01000428ce1f20";

    pub fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn h264_from_codec_data() {
        let cfg = TrackConfig::h264(&hex(CPP_AVCC), None, None).unwrap();
        assert_eq!(cfg.codec_id, "V_MPEG4/ISO/AVC");
        assert_eq!(cfg.track_type, TrackType::Video);
        assert_eq!(&cfg.codec_private[..], &hex(CPP_AVCC)[..]);
        assert_eq!(
            cfg.video,
            Some(VideoParams {
                width: 640,
                height: 480
            })
        );
        // The SPS wins over contradicting caps.
        let cfg = TrackConfig::h264(&hex(CPP_AVCC), Some(320), Some(240)).unwrap();
        assert_eq!(cfg.video.unwrap().width, 640);
        assert_eq!(
            TrackConfig::h264(&[1, 2], None, None),
            Err(CodecError::Truncated { what: "avcC" })
        );
    }

    #[test]
    fn aac_from_codec_data_and_synthesized() {
        let cfg = TrackConfig::aac(Some(&[0x12, 0x10]), Some(44100), Some(2)).unwrap();
        assert_eq!(cfg.codec_id, "A_AAC");
        let a = cfg.audio.unwrap();
        assert_eq!(
            (a.sampling_frequency, a.channels, a.bit_depth),
            (44100.0, 2, 0)
        );
        let cfg = TrackConfig::aac(None, Some(48000), Some(1)).unwrap();
        assert_eq!(&cfg.codec_private[..], &[0x11, 0x88]);
        assert_eq!(
            TrackConfig::aac(None, None, Some(1)),
            Err(CodecError::MissingCodecData { codec: "AAC" })
        );
    }

    #[test]
    fn g711_track() {
        let cfg = TrackConfig::g711(G711Law::ALaw, 8000, 1).unwrap();
        assert_eq!(cfg.codec_id, "A_MS/ACM");
        assert_eq!(cfg.codec_private.len(), 18);
        assert_eq!(cfg.audio.unwrap().bit_depth, 8);
        assert!(TrackConfig::g711(G711Law::MuLaw, 8000, 3).is_err());
    }
}
