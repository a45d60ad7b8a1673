//! Caps-level configuration → CodecPrivate (`gstkvssink::media::codec`): avcC, hvcC, AAC
//! AudioSpecificConfig (given or synthesized from rate/channels) and the G.711 WAVEFORMATEX.
//! Input: a selector byte, two u32 caps values (rate/width, channels/height), then codec_data.
//! Checks: no panic; codec_data is kept verbatim; a synthesized AudioSpecificConfig reads back
//! as the caps' rate and channels; the WAVEFORMATEX reads back as the caps.
#![no_main]

use gst_plugin_kvssink_fuzz::u32_at;
use gstkvssink::media::codec::{G711Law, TrackConfig, aac};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(&sel) = data.first() else {
        return;
    };
    let a = u32_at(data, 1);
    let b = u32_at(data, 5);
    let cd = data.get(9..).unwrap_or_default();
    // Bit 3: the caps carry the two values; else they are absent.
    let (ca, cb) = if sel & 8 != 0 {
        (Some(a), Some(b))
    } else {
        (None, None)
    };
    match sel % 5 {
        0 => {
            if let Ok(t) = TrackConfig::h264(cd, ca, cb) {
                assert_eq!(&t.codec_private[..], cd);
                let _ = h264_reparse(cd);
            }
        }
        1 => {
            if let Ok(t) = TrackConfig::h265(cd, ca, cb) {
                assert_eq!(&t.codec_private[..], cd);
            }
        }
        2 => {
            if let Ok(t) = TrackConfig::aac(Some(cd), ca, cb) {
                assert_eq!(&t.codec_private[..], cd);
                if let Some(au) = t.audio {
                    assert!(au.sampling_frequency > 0.0);
                }
            }
        }
        3 => {
            // No codec_data: an AAC-LC config is synthesized from the caps.
            if let Ok(t) = TrackConfig::aac(None, ca, cb) {
                let asc = aac::AudioSpecificConfig::parse(&t.codec_private)
                    .expect("synthesized AudioSpecificConfig does not parse");
                assert_eq!(asc.object_type, 2);
                assert_eq!(asc.sampling_frequency, ca);
                assert_eq!(asc.channels.map(u32::from), cb);
                let au = t.audio.expect("audio params");
                assert_eq!(au.sampling_frequency, f64::from(ca.unwrap()));
            }
        }
        _ => {
            let law = if sel & 0x10 != 0 {
                G711Law::ALaw
            } else {
                G711Law::MuLaw
            };
            if let Ok(t) = TrackConfig::g711(law, a, b) {
                let w = &t.codec_private[..];
                assert_eq!(w.len(), 18);
                let u16_at = |i: usize| u16::from_le_bytes([w[i], w[i + 1]]);
                let u32_at = |i: usize| u32::from_le_bytes([w[i], w[i + 1], w[i + 2], w[i + 3]]);
                assert_eq!(u16_at(0), law.format_tag());
                assert_eq!(u32::from(u16_at(2)), b);
                assert_eq!(u32_at(4), a);
                assert_eq!(u64::from(u32_at(8)), u64::from(a) * u64::from(b));
                assert_eq!(u32::from(u16_at(12)), b);
                assert_eq!(u16_at(14), 8);
                assert_eq!(u16_at(16), 0);
            }
        }
    }
});

fn h264_reparse(cd: &[u8]) -> Option<()> {
    let avcc = gstkvssink::media::codec::h264::Avcc::parse(cd).ok()?;
    for s in &avcc.sps {
        let _ = gstkvssink::media::codec::h264::Sps::parse(s);
    }
    for p in &avcc.pps {
        let _ = gstkvssink::media::codec::h264::pps_id(p);
    }
    Some(())
}
