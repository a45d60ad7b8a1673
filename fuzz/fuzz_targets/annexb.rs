//! Annex-B → length-prefixed conversion with SPS/PPS/VPS parsing (`gstkvssink::media::codec::annexb`,
//! `h264`, `h265`).
//! Input: a flags byte (bit 0: H.265, bit 1: caps size 1280x720), then access units framed as
//! `[len u16 LE][bytes]`.
//! Checks: no panic; the output is exactly the NAL units of the input (AUDs dropped), each with
//! a 4-byte length, within `max_converted_len`; a CodecPrivate built from in-band parameter sets
//! is accepted by the caps path (avcC/hvcC parser) with the same picture size and reads back as
//! itself.
#![no_main]

use gst_plugin_kvssink_fuzz::frames;
use gstkvssink::media::codec::annexb::{max_converted_len, nal_units};
use gstkvssink::media::codec::{AnnexBConverter, CodecError, TrackConfig, VideoCodec, h264, h265};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let codec = if flags & 1 == 0 {
        VideoCodec::H264
    } else {
        VideoCodec::H265
    };
    let (w, h) = if flags & 2 != 0 {
        (Some(1280), Some(720))
    } else {
        (None, None)
    };
    let mut conv = AnnexBConverter::new(codec, w, h);
    for au in frames(rest) {
        let expected: Vec<&[u8]> = nal_units(au)
            .filter(|n| match codec {
                VideoCodec::H264 => h264::nal_type(n) != h264::NAL_AUD,
                VideoCodec::H265 => h265::nal_type(n) != h265::NAL_AUD,
            })
            .collect();
        for nal in nal_units(au) {
            assert!(!nal.is_empty());
            if let Ok(sps) = h264::Sps::parse(nal) {
                assert!(
                    sps.width > 0 && sps.height > 0 && sps.width <= 65535 && sps.height <= 65535
                );
            }
            if let Ok(sps) = h265::Sps::parse(nal) {
                assert!(
                    sps.width > 0 && sps.height > 0 && sps.width <= 65535 && sps.height <= 65535
                );
            }
        }
        let mut out = Vec::with_capacity(max_converted_len(au));
        match conv.convert(au, &mut out) {
            Ok(res) => {
                assert_eq!(res.len, out.len());
                assert!(
                    out.len() <= max_converted_len(au),
                    "output longer than announced"
                );
                let mut p = &out[..];
                let mut got = Vec::new();
                while !p.is_empty() {
                    let len = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize;
                    got.push(&p[4..4 + len]);
                    p = &p[4 + len..];
                }
                assert_eq!(got, expected);
            }
            Err(CodecError::NoNalUnits) => assert!(nal_units(au).next().is_none()),
            Err(e) => panic!("unexpected conversion error: {e}"),
        }
        if let Some(cfg) = conv.config() {
            let again = match codec {
                VideoCodec::H264 => TrackConfig::h264(&cfg.codec_private, w, h),
                VideoCodec::H265 => TrackConfig::h265(&cfg.codec_private, w, h),
            }
            .expect("the caps path refuses a CodecPrivate built from in-band parameter sets");
            assert_eq!(again.video, cfg.video);
            assert_eq!(again.codec_private, cfg.codec_private);
            // The record reads back as itself: no count or length field wrapped.
            let cpd = &cfg.codec_private[..];
            let rebuilt = match codec {
                VideoCodec::H264 => {
                    let a = h264::Avcc::parse(cpd).unwrap();
                    h264::build_avcc(&h264::Sps::parse(a.sps[0]).unwrap(), &a.sps, &a.pps)
                }
                VideoCodec::H265 => {
                    let h = h265::Hvcc::parse(cpd).unwrap();
                    let of = |t| h.nals_of_type(t).collect::<Vec<_>>();
                    let (v, s, p) = (of(h265::NAL_VPS), of(h265::NAL_SPS), of(h265::NAL_PPS));
                    h265::build_hvcc(&h265::Sps::parse(s[0]).unwrap(), &v, &s, &p)
                }
            };
            assert_eq!(
                rebuilt, cpd,
                "the CodecPrivate does not read back as itself"
            );
        }
    }
});
