//! H.264: the SPS fields the track entry and the avcC need (ITU-T H.264 §7.3.2.1.1), and the
//! avcC record (ISO/IEC 14496-15 §5.3.3.1) read from caps or built from in-band parameter sets.

use super::CodecError;
use super::bits::{BitReader, rbsp};

pub const NAL_SLICE: u8 = 1;
pub const NAL_IDR: u8 = 5;
pub const NAL_SEI: u8 = 6;
pub const NAL_SPS: u8 = 7;
pub const NAL_PPS: u8 = 8;
pub const NAL_AUD: u8 = 9;

/// The NAL unit type of a NAL unit (first byte).
pub fn nal_type(nal: &[u8]) -> u8 {
    nal.first().map_or(0, |b| b & 0x1F)
}

/// Parsed sequence parameter set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sps {
    pub profile_idc: u8,
    pub constraint_flags: u8,
    pub level_idc: u8,
    pub id: u32,
    pub chroma_format_idc: u32,
    pub bit_depth_luma: u32,
    pub bit_depth_chroma: u32,
    /// Display size after frame cropping.
    pub width: u32,
    pub height: u32,
}

/// Profiles whose SPS carries chroma format and bit depth (and whose avcC has the extension).
fn is_high_profile(profile_idc: u8) -> bool {
    matches!(
        profile_idc,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    )
}

fn skip_scaling_list(r: &mut BitReader<'_>, size: usize) -> Result<(), CodecError> {
    let mut last = 8i32;
    let mut next = 8i32;
    for _ in 0..size {
        if next != 0 {
            // delta_scale: -128..=127 (§7.4.2.1.1.1).
            let delta = r.se()?;
            if !(-128..=127).contains(&delta) {
                return Err(CodecError::Invalid {
                    what: "H.264 SPS",
                    reason: format!("delta_scale {delta}"),
                });
            }
            next = (last + delta + 256).rem_euclid(256);
        }
        if next != 0 {
            last = next;
        }
    }
    Ok(())
}

/// `bit_depth_*_minus8` (0..=6, §7.4.2.1.1) + 8.
fn bit_depth(r: &mut BitReader<'_>) -> Result<u32, CodecError> {
    match r.ue()? {
        m @ 0..=6 => Ok(8 + m),
        m => Err(CodecError::Invalid {
            what: "H.264 SPS",
            reason: format!("bit_depth_minus8 {m}"),
        }),
    }
}

impl Sps {
    /// Parses an SPS NAL unit (with its 1-byte NAL header, emulation prevention included).
    pub fn parse(nal: &[u8]) -> Result<Self, CodecError> {
        const WHAT: &str = "H.264 SPS";
        if nal_type(nal) != NAL_SPS {
            return Err(CodecError::Invalid {
                what: WHAT,
                reason: format!("NAL unit type {} is not an SPS", nal_type(nal)),
            });
        }
        let data = rbsp(&nal[1..]);
        let mut r = BitReader::new(&data, WHAT);
        let profile_idc = r.bits(8)? as u8;
        let constraint_flags = r.bits(8)? as u8;
        let level_idc = r.bits(8)? as u8;
        let id = r.ue()?;
        if id > 31 {
            return Err(CodecError::Invalid {
                what: WHAT,
                reason: format!("seq_parameter_set_id {id} > 31"),
            });
        }
        let mut chroma_format_idc = 1;
        let mut separate_colour_plane = false;
        let mut bit_depth_luma = 8;
        let mut bit_depth_chroma = 8;
        if is_high_profile(profile_idc) {
            chroma_format_idc = r.ue()?;
            if chroma_format_idc > 3 {
                return Err(CodecError::Invalid {
                    what: WHAT,
                    reason: format!("chroma_format_idc {chroma_format_idc}"),
                });
            }
            if chroma_format_idc == 3 {
                separate_colour_plane = r.bit()?;
            }
            bit_depth_luma = bit_depth(&mut r)?;
            bit_depth_chroma = bit_depth(&mut r)?;
            r.skip(1)?; // qpprime_y_zero_transform_bypass_flag
            if r.bit()? {
                let lists = if chroma_format_idc == 3 { 12 } else { 8 };
                for i in 0..lists {
                    if r.bit()? {
                        skip_scaling_list(&mut r, if i < 6 { 16 } else { 64 })?;
                    }
                }
            }
        }
        r.ue()?; // log2_max_frame_num_minus4
        match r.ue()? {
            0 => {
                r.ue()?; // log2_max_pic_order_cnt_lsb_minus4
            }
            1 => {
                r.skip(1)?;
                r.se()?;
                r.se()?;
                let n = r.ue()?;
                if n > 255 {
                    return Err(CodecError::Invalid {
                        what: WHAT,
                        reason: format!("num_ref_frames_in_pic_order_cnt_cycle {n}"),
                    });
                }
                for _ in 0..n {
                    r.se()?;
                }
            }
            _ => {}
        }
        r.ue()?; // max_num_ref_frames
        r.skip(1)?; // gaps_in_frame_num_value_allowed_flag
        let width_mbs = u64::from(r.ue()?) + 1;
        let height_map_units = u64::from(r.ue()?) + 1;
        let frame_mbs_only = r.bit()?;
        if !frame_mbs_only {
            r.skip(1)?; // mb_adaptive_frame_field_flag
        }
        r.skip(1)?; // direct_8x8_inference_flag
        let (mut crop_l, mut crop_r, mut crop_t, mut crop_b) = (0u64, 0u64, 0u64, 0u64);
        if r.bit()? {
            crop_l = r.ue()?.into();
            crop_r = r.ue()?.into();
            crop_t = r.ue()?.into();
            crop_b = r.ue()?.into();
        }
        let field_factor = if frame_mbs_only { 1 } else { 2 };
        let chroma_array_type = if separate_colour_plane {
            0
        } else {
            chroma_format_idc
        };
        let (crop_x, crop_y) = match chroma_array_type {
            0 => (1, field_factor),
            1 => (2, 2 * field_factor),
            2 => (2, field_factor),
            _ => (1, field_factor),
        };
        let coded_w = width_mbs * 16;
        let coded_h = height_map_units * 16 * field_factor;
        let cut_w = crop_x * (crop_l + crop_r);
        let cut_h = crop_y * (crop_t + crop_b);
        if cut_w >= coded_w || cut_h >= coded_h || coded_w > 65535 || coded_h > 65535 {
            return Err(CodecError::Invalid {
                what: WHAT,
                reason: format!("frame size {coded_w}x{coded_h} with cropping {cut_w}x{cut_h}"),
            });
        }
        Ok(Self {
            profile_idc,
            constraint_flags,
            level_idc,
            id,
            chroma_format_idc,
            bit_depth_luma,
            bit_depth_chroma,
            width: (coded_w - cut_w) as u32,
            height: (coded_h - cut_h) as u32,
        })
    }
}

/// The id of a PPS NAL unit (`pic_parameter_set_id`, 0..=255).
pub fn pps_id(nal: &[u8]) -> Result<u32, CodecError> {
    let data = rbsp(nal.get(1..).unwrap_or_default());
    match BitReader::new(&data, "H.264 PPS").ue()? {
        id @ 0..=255 => Ok(id),
        id => Err(CodecError::Invalid {
            what: "H.264 PPS",
            reason: format!("pic_parameter_set_id {id} > 255"),
        }),
    }
}

/// An avcC record (AVCDecoderConfigurationRecord), borrowing its parameter sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Avcc<'a> {
    pub profile_idc: u8,
    pub constraint_flags: u8,
    pub level_idc: u8,
    /// NAL length field size in bytes (1, 2 or 4).
    pub length_size: u8,
    pub sps: Vec<&'a [u8]>,
    pub pps: Vec<&'a [u8]>,
}

impl<'a> Avcc<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Self, CodecError> {
        const WHAT: &str = "avcC";
        let truncated = CodecError::Truncated { what: WHAT };
        if data.len() < 7 {
            return Err(truncated);
        }
        let length_size = super::check_config_record(WHAT, data[0], 1..=1, data[4])?;
        let mut pos = 5;
        let read_sets = |count: usize, pos: &mut usize| -> Result<Vec<&'a [u8]>, CodecError> {
            let mut v = Vec::with_capacity(count);
            for _ in 0..count {
                let len_bytes = data.get(*pos..*pos + 2).ok_or(truncated.clone())?;
                let len = usize::from(u16::from_be_bytes([len_bytes[0], len_bytes[1]]));
                let nal = data
                    .get(*pos + 2..*pos + 2 + len)
                    .ok_or(truncated.clone())?;
                v.push(nal);
                *pos += 2 + len;
            }
            Ok(v)
        };
        let sps_count = usize::from(data[pos] & 0x1F);
        pos += 1;
        let sps = read_sets(sps_count, &mut pos)?;
        let pps_count = usize::from(*data.get(pos).ok_or(truncated.clone())?);
        pos += 1;
        let pps = read_sets(pps_count, &mut pos)?;
        Ok(Self {
            profile_idc: data[1],
            constraint_flags: data[2],
            level_idc: data[3],
            length_size,
            sps,
            pps,
        })
    }
}

/// Builds an avcC (4-byte NAL lengths) from SPS and PPS NAL units; profile and level come from
/// `first` (the parsed first SPS). High profiles get the chroma/bit-depth extension. The record
/// holds at most 31 SPS and 255 PPS of at most 65535 bytes each (its count and length fields);
/// further ones are left out (they still travel in-band).
pub fn build_avcc(first: &Sps, sps: &[&[u8]], pps: &[&[u8]]) -> Vec<u8> {
    let fits = |n: &&&[u8]| n.len() <= usize::from(u16::MAX);
    let sps: Vec<&[u8]> = sps.iter().filter(fits).take(31).copied().collect();
    let pps: Vec<&[u8]> = pps.iter().filter(fits).take(255).copied().collect();
    let total: usize = sps.iter().chain(&pps).map(|n| n.len() + 2).sum();
    let mut v = Vec::with_capacity(11 + total);
    v.extend_from_slice(&[
        1,
        first.profile_idc,
        first.constraint_flags,
        first.level_idc,
        0xFC | 3,
        0xE0 | (sps.len() as u8 & 0x1F),
    ]);
    for s in &sps {
        v.extend_from_slice(&(s.len() as u16).to_be_bytes());
        v.extend_from_slice(s);
    }
    v.push(pps.len() as u8);
    for p in &pps {
        v.extend_from_slice(&(p.len() as u16).to_be_bytes());
        v.extend_from_slice(p);
    }
    if is_high_profile(first.profile_idc) && matches!(first.profile_idc, 100 | 110 | 122 | 144) {
        v.push(0xFC | (first.chroma_format_idc as u8 & 3));
        v.push(0xF8 | ((first.bit_depth_luma.saturating_sub(8)) as u8 & 7));
        v.push(0xF8 | ((first.bit_depth_chroma.saturating_sub(8)) as u8 & 7));
        v.push(0); // numOfSequenceParameterSetExt
    }
    v
}

#[cfg(test)]
mod tests {
    use super::super::tests::{CPP_AVCC, hex};
    use super::*;

    #[test]
    fn parses_the_kvs_cpp_avcc_and_sps() {
        let data = hex(CPP_AVCC);
        let avcc = Avcc::parse(&data).unwrap();
        assert_eq!(
            (avcc.profile_idc, avcc.level_idc, avcc.length_size),
            (66, 30, 4)
        );
        assert_eq!((avcc.sps.len(), avcc.pps.len()), (1, 1));
        let sps = Sps::parse(avcc.sps[0]).unwrap();
        assert_eq!((sps.width, sps.height), (640, 480));
        assert_eq!((sps.profile_idc, sps.level_idc, sps.id), (66, 30, 0));
        assert_eq!(pps_id(avcc.pps[0]).unwrap(), 0);
        // Rebuilding from its parameter sets gives the same record (Baseline: no extension).
        assert_eq!(build_avcc(&sps, &avcc.sps, &avcc.pps), data);
    }

    #[test]
    fn high_profile_1080p_with_cropping() {
        // x264enc High 4:2:0 1920x1080 (coded 1920x1088, cropped by 8 lines).
        let sps = hex("67640028acd940780227e5c05a808080a0000003002000000791e30632c0");
        let p = Sps::parse(&sps).unwrap();
        assert_eq!((p.profile_idc, p.level_idc), (100, 40));
        assert_eq!((p.width, p.height), (1920, 1080));
        assert_eq!((p.chroma_format_idc, p.bit_depth_luma), (1, 8));
        let avcc = build_avcc(&p, &[&sps], &[&[0x68, 0xeb, 0xec, 0xb2, 0x2c]]);
        assert_eq!(&avcc[avcc.len() - 4..], &[0xFD, 0xF8, 0xF8, 0]);
        let back = Avcc::parse(&avcc).unwrap();
        assert_eq!(back.sps, vec![&sps[..]]);
        assert_eq!(back.pps.len(), 1);
    }

    #[test]
    fn rejects_garbage() {
        assert!(Avcc::parse(&[0, 0, 0, 1, 0x67, 0, 0]).is_err());
        assert!(Avcc::parse(&[1, 66, 0, 30, 0xff, 0xe1, 0, 10, 0x67]).is_err());
        assert!(Sps::parse(&[0x68, 0]).is_err());
        assert!(Sps::parse(&[0x67, 66]).is_err());
    }

    #[test]
    fn rejects_a_huge_bit_depth() {
        // Fuzzing found this in the H.265 SPS (fuzz/fuzz_targets/annexb.rs); the same `8 + ue`
        // was here: bit_depth_luma_minus8 = 2^32 - 2 overflowed (a panic with overflow checks,
        // a wrong depth without).
        let sps = hex("67640028a0000003001ffffffff3a014016e80");
        assert!(matches!(
            Sps::parse(&sps),
            Err(CodecError::Invalid { reason, .. }) if reason.contains("bit_depth")
        ));
    }

    #[test]
    fn avcc_count_fields_do_not_wrap() {
        // Found by a crafted input (32 SPS ids) through the fuzz target annexb's checks: 32 SPS
        // ids made the 5-bit SPS count 0 and 256 PPS ids the 8-bit PPS count 0 (a corrupt avcC); PPS ids were unbounded.
        let sps_nal = hex("67640028acd940780227e5c05a808080a0000003002000000791e30632c0");
        let sps = Sps::parse(&sps_nal).unwrap();
        let pps_nal = [0x68, 0xeb, 0xec, 0xb2, 0x2c];
        let big = vec![0x68; 70_000];
        let many_sps = vec![&sps_nal[..]; 32];
        let mut many_pps = vec![&pps_nal[..]; 256];
        many_pps.insert(0, &big);
        let avcc = build_avcc(&sps, &many_sps, &many_pps);
        let back = Avcc::parse(&avcc).unwrap();
        assert_eq!((back.sps.len(), back.pps.len()), (31, 255));
        assert_eq!(build_avcc(&sps, &back.sps, &back.pps), avcc);
        // ue(256) = 00000000 100000001, then the stop bit.
        assert!(pps_id(&[0x68, 0x00, 0x80, 0xC0]).is_err());
        assert_eq!(pps_id(&[0x68, 0x00, 0x80, 0x40]).unwrap(), 255);
        assert_eq!(pps_id(&[0x68, 0x80]).unwrap(), 0);
    }

    #[test]
    fn rejects_a_huge_scaling_list_delta() {
        // Found by fuzzing (fuzz targets annexb and codec_config): delta_scale = 2^31 - 1 overflowed
        // `last + delta + 256`.
        let sps = hex("67640028ad8000000300fffffffec0");
        assert!(matches!(
            Sps::parse(&sps),
            Err(CodecError::Invalid { reason, .. }) if reason.contains("delta_scale")
        ));
    }
}
