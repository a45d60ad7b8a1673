//! H.265: the SPS fields the track entry and the hvcC need (ITU-T H.265 §7.3.2.2, including
//! `profile_tier_level`), and the hvcC record (ISO/IEC 14496-15 §8.3.3.1: a 23-byte header and
//! one array per parameter-set type) read from caps or built from in-band VPS/SPS/PPS.

use super::CodecError;
use super::bits::{BitReader, rbsp};

pub const NAL_VPS: u8 = 32;
pub const NAL_SPS: u8 = 33;
pub const NAL_PPS: u8 = 34;
pub const NAL_AUD: u8 = 35;

/// The NAL unit type of a NAL unit (2-byte header).
pub fn nal_type(nal: &[u8]) -> u8 {
    nal.first().map_or(0, |b| (b >> 1) & 0x3F)
}

/// IRAP pictures (BLA, IDR, CRA; 16..=23) are random access points.
pub fn is_irap(nal_type: u8) -> bool {
    (16..=23).contains(&nal_type)
}

/// Parsed sequence parameter set (the general profile/tier/level and the picture format).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sps {
    pub profile_space: u8,
    pub tier: bool,
    pub profile_idc: u8,
    pub profile_compatibility_flags: u32,
    /// The 48 general constraint indicator flags, in the low bits.
    pub constraint_indicator_flags: u64,
    pub level_idc: u8,
    pub max_sub_layers: u8,
    pub temporal_id_nesting: bool,
    pub id: u32,
    pub chroma_format_idc: u32,
    pub bit_depth_luma: u32,
    pub bit_depth_chroma: u32,
    /// Display size after the conformance window.
    pub width: u32,
    pub height: u32,
}

impl Sps {
    /// Parses an SPS NAL unit (with its 2-byte NAL header, emulation prevention included).
    pub fn parse(nal: &[u8]) -> Result<Self, CodecError> {
        const WHAT: &str = "H.265 SPS";
        if nal_type(nal) != NAL_SPS || nal.len() < 3 {
            return Err(CodecError::Invalid {
                what: WHAT,
                reason: format!("NAL unit type {} is not an SPS", nal_type(nal)),
            });
        }
        let data = rbsp(&nal[2..]);
        let mut r = BitReader::new(&data, WHAT);
        r.skip(4)?; // sps_video_parameter_set_id
        let max_sub_layers_minus1 = r.bits(3)? as u8;
        let temporal_id_nesting = r.bit()?;
        // profile_tier_level(1, max_sub_layers_minus1)
        let profile_space = r.bits(2)? as u8;
        let tier = r.bit()?;
        let profile_idc = r.bits(5)? as u8;
        let profile_compatibility_flags = r.bits(32)? as u32;
        let constraint_indicator_flags = r.bits(48)?;
        let level_idc = r.bits(8)? as u8;
        let mut sub_profile = [false; 8];
        let mut sub_level = [false; 8];
        for i in 0..usize::from(max_sub_layers_minus1) {
            sub_profile[i] = r.bit()?;
            sub_level[i] = r.bit()?;
        }
        if max_sub_layers_minus1 > 0 {
            for _ in max_sub_layers_minus1..8 {
                r.skip(2)?;
            }
        }
        for i in 0..usize::from(max_sub_layers_minus1) {
            if sub_profile[i] {
                r.skip(88)?;
            }
            if sub_level[i] {
                r.skip(8)?;
            }
        }
        let id = r.ue()?;
        if id > 15 {
            return Err(CodecError::Invalid {
                what: WHAT,
                reason: format!("sps_seq_parameter_set_id {id} > 15"),
            });
        }
        let chroma_format_idc = r.ue()?;
        if chroma_format_idc > 3 {
            return Err(CodecError::Invalid {
                what: WHAT,
                reason: format!("chroma_format_idc {chroma_format_idc}"),
            });
        }
        let separate_colour_plane = chroma_format_idc == 3 && r.bit()?;
        let coded_w = u64::from(r.ue()?);
        let coded_h = u64::from(r.ue()?);
        let (mut l, mut rt, mut t, mut b) = (0u64, 0u64, 0u64, 0u64);
        if r.bit()? {
            l = r.ue()?.into();
            rt = r.ue()?.into();
            t = r.ue()?.into();
            b = r.ue()?.into();
        }
        // bit_depth_*_minus8: 0..=8 (§7.4.3.2.1).
        let mut bit_depth = || match r.ue()? {
            m @ 0..=8 => Ok(8 + m),
            m => Err(CodecError::Invalid {
                what: WHAT,
                reason: format!("bit_depth_minus8 {m}"),
            }),
        };
        let bit_depth_luma = bit_depth()?;
        let bit_depth_chroma = bit_depth()?;
        let (sub_w, sub_h) = match (separate_colour_plane, chroma_format_idc) {
            (false, 1) => (2, 2),
            (false, 2) => (2, 1),
            _ => (1, 1),
        };
        let cut_w = sub_w * (l + rt);
        let cut_h = sub_h * (t + b);
        if coded_w == 0
            || coded_h == 0
            || cut_w >= coded_w
            || cut_h >= coded_h
            || coded_w > 65535
            || coded_h > 65535
        {
            return Err(CodecError::Invalid {
                what: WHAT,
                reason: format!(
                    "picture size {coded_w}x{coded_h} with conformance window {cut_w}x{cut_h}"
                ),
            });
        }
        Ok(Self {
            profile_space,
            tier,
            profile_idc,
            profile_compatibility_flags,
            constraint_indicator_flags,
            level_idc,
            max_sub_layers: max_sub_layers_minus1 + 1,
            temporal_id_nesting,
            id,
            chroma_format_idc,
            bit_depth_luma,
            bit_depth_chroma,
            width: (coded_w - cut_w) as u32,
            height: (coded_h - cut_h) as u32,
        })
    }
}

/// The id of a VPS NAL unit.
pub fn vps_id(nal: &[u8]) -> Result<u32, CodecError> {
    nal.get(2)
        .map(|b| u32::from(b >> 4))
        .ok_or(CodecError::Truncated { what: "H.265 VPS" })
}

/// The id of a PPS NAL unit (`pps_pic_parameter_set_id`, 0..=63).
pub fn pps_id(nal: &[u8]) -> Result<u32, CodecError> {
    let data = rbsp(nal.get(2..).unwrap_or_default());
    match BitReader::new(&data, "H.265 PPS").ue()? {
        id @ 0..=63 => Ok(id),
        id => Err(CodecError::Invalid {
            what: "H.265 PPS",
            reason: format!("pps_pic_parameter_set_id {id} > 63"),
        }),
    }
}

/// An hvcC record (HEVCDecoderConfigurationRecord), borrowing its NAL units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hvcc<'a> {
    pub profile_idc: u8,
    pub level_idc: u8,
    /// NAL length field size in bytes (1, 2 or 4).
    pub length_size: u8,
    /// `(nal_unit_type, NAL units)` per array.
    pub arrays: Vec<(u8, Vec<&'a [u8]>)>,
}

impl<'a> Hvcc<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Self, CodecError> {
        const WHAT: &str = "hvcC";
        let truncated = CodecError::Truncated { what: WHAT };
        if data.len() < 23 {
            return Err(truncated);
        }
        let length_size = super::check_config_record(WHAT, data[0], 0..=1, data[21])?;
        let mut pos = 23;
        let mut arrays = Vec::with_capacity(usize::from(data[22]));
        for _ in 0..data[22] {
            let head = data.get(pos..pos + 3).ok_or(truncated.clone())?;
            let ty = head[0] & 0x3F;
            let count = usize::from(u16::from_be_bytes([head[1], head[2]]));
            pos += 3;
            let mut nals = Vec::with_capacity(count);
            for _ in 0..count {
                let l = data.get(pos..pos + 2).ok_or(truncated.clone())?;
                let len = usize::from(u16::from_be_bytes([l[0], l[1]]));
                nals.push(data.get(pos + 2..pos + 2 + len).ok_or(truncated.clone())?);
                pos += 2 + len;
            }
            arrays.push((ty, nals));
        }
        Ok(Self {
            profile_idc: data[1] & 0x1F,
            level_idc: data[12],
            length_size,
            arrays,
        })
    }

    pub fn nals_of_type(&self, ty: u8) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.arrays
            .iter()
            .filter(move |(t, _)| *t == ty)
            .flat_map(|(_, n)| n.iter().copied())
    }
}

/// Builds an hvcC (4-byte NAL lengths, complete arrays of VPS, SPS and PPS) from in-band
/// parameter sets; the header fields come from `first` (the parsed first SPS). NAL units longer
/// than 65535 bytes (the length field) are left out (they still travel in-band).
pub fn build_hvcc(first: &Sps, vps: &[&[u8]], sps: &[&[u8]], pps: &[&[u8]]) -> Vec<u8> {
    let fits = |n: &&&[u8]| n.len() <= usize::from(u16::MAX);
    let vps: Vec<&[u8]> = vps.iter().filter(fits).copied().collect();
    let sps: Vec<&[u8]> = sps.iter().filter(fits).copied().collect();
    let pps: Vec<&[u8]> = pps.iter().filter(fits).copied().collect();
    let (vps, sps, pps) = (&vps[..], &sps[..], &pps[..]);
    let total: usize = vps.iter().chain(sps).chain(pps).map(|n| n.len() + 2).sum();
    let mut v = Vec::with_capacity(23 + 9 + total);
    v.push(1);
    v.push((first.profile_space << 6) | (u8::from(first.tier) << 5) | (first.profile_idc & 0x1F));
    v.extend_from_slice(&first.profile_compatibility_flags.to_be_bytes());
    v.extend_from_slice(&first.constraint_indicator_flags.to_be_bytes()[2..]);
    v.push(first.level_idc);
    v.extend_from_slice(&[0xF0, 0x00]); // min_spatial_segmentation_idc 0
    v.push(0xFC); // parallelismType 0 (unknown)
    v.push(0xFC | (first.chroma_format_idc as u8 & 3));
    v.push(0xF8 | (first.bit_depth_luma.saturating_sub(8) as u8 & 7));
    v.push(0xF8 | (first.bit_depth_chroma.saturating_sub(8) as u8 & 7));
    v.extend_from_slice(&[0, 0]); // avgFrameRate: unspecified
    v.push(((first.max_sub_layers & 7) << 3) | (u8::from(first.temporal_id_nesting) << 2) | 3);
    let arrays = [(NAL_VPS, vps), (NAL_SPS, sps), (NAL_PPS, pps)];
    v.push(arrays.iter().filter(|(_, n)| !n.is_empty()).count() as u8);
    for (ty, nals) in arrays {
        if nals.is_empty() {
            continue;
        }
        v.push(0x80 | ty); // array_completeness = 1
        v.extend_from_slice(&(nals.len() as u16).to_be_bytes());
        for n in nals {
            v.extend_from_slice(&(n.len() as u16).to_be_bytes());
            v.extend_from_slice(n);
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::super::tests::hex;
    use super::*;

    // x265enc, Main, 1920x1080 (coded 1920x1088 with a conformance window).
    const VPS: &str = "40010c01ffff016000000300900000030000030078959809";
    const SPS: &str = "420101016000000300900000030000030078a003c08010e596566924cafff000100016a020202080000003008000000f04";
    const PPS: &str = "4401c172b46240";

    #[test]
    fn parses_x265_sps() {
        let sps = Sps::parse(&hex(SPS)).unwrap();
        assert_eq!((sps.width, sps.height), (1920, 1080));
        assert_eq!((sps.profile_idc, sps.level_idc, sps.tier), (1, 120, false));
        assert_eq!(sps.profile_compatibility_flags, 0x6000_0000);
        assert_eq!(sps.constraint_indicator_flags, 0x9000_0000_0000);
        assert_eq!((sps.chroma_format_idc, sps.bit_depth_luma), (1, 8));
        assert_eq!((sps.max_sub_layers, sps.temporal_id_nesting), (1, true));
        assert_eq!(vps_id(&hex(VPS)).unwrap(), 0);
        assert_eq!(pps_id(&hex(PPS)).unwrap(), 0);
    }

    #[test]
    fn builds_a_23_byte_header_hvcc_that_parses_back() {
        let (v, s, p) = (hex(VPS), hex(SPS), hex(PPS));
        let sps = Sps::parse(&s).unwrap();
        let hvcc = build_hvcc(&sps, &[&v], &[&s], &[&p]);
        assert_eq!(hvcc[0], 1);
        assert_eq!(hvcc[1], 0x01);
        assert_eq!(&hvcc[2..6], &[0x60, 0, 0, 0]);
        assert_eq!(&hvcc[6..12], &[0x90, 0, 0, 0, 0, 0]);
        assert_eq!(hvcc[12], 120);
        assert_eq!(&hvcc[13..21], &[0xF0, 0, 0xFC, 0xFD, 0xF8, 0xF8, 0, 0]);
        assert_eq!(hvcc[21], 0x0F); // 1 temporal layer, nested, 4-byte lengths
        assert_eq!(hvcc[22], 3);
        assert_eq!(&hvcc[23..26], &[0xA0, 0, 1]);
        let back = Hvcc::parse(&hvcc).unwrap();
        assert_eq!(back.length_size, 4);
        assert_eq!(back.nals_of_type(NAL_VPS).collect::<Vec<_>>(), vec![&v[..]]);
        assert_eq!(back.nals_of_type(NAL_SPS).collect::<Vec<_>>(), vec![&s[..]]);
        assert_eq!(back.nals_of_type(NAL_PPS).collect::<Vec<_>>(), vec![&p[..]]);
        assert_eq!((back.profile_idc, back.level_idc), (1, 120));
    }

    #[test]
    fn rejects_garbage() {
        assert!(Hvcc::parse(&[1; 10]).is_err());
        let mut h = vec![1u8; 23];
        h[21] = 0xFF;
        h[22] = 1;
        assert!(matches!(Hvcc::parse(&h), Err(CodecError::Truncated { .. })));
        assert!(Sps::parse(&[0x42, 0x01]).is_err());
        assert!(Sps::parse(&hex(PPS)).is_err());
    }

    #[test]
    fn rejects_a_huge_bit_depth() {
        // Found by fuzzing (fuzz/fuzz_targets/annexb.rs): bit_depth_luma_minus8 = 2^32 - 2
        // overflowed `8 + ue` (a panic with overflow checks, a wrong depth without).
        let sps = hex("420101016000000300900000030000030078a003c08010e40000030003ffffffff");
        assert!(matches!(
            Sps::parse(&sps),
            Err(CodecError::Invalid { reason, .. }) if reason.contains("bit_depth")
        ));
    }
}
