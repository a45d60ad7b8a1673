//! Annex-B (`stream-format=byte-stream`) H.264/H.265 input: split each access unit into NAL
//! units on start codes, write them with 4-byte big-endian length prefixes (what
//! `V_MPEG4/ISO/AVC` and `V_MPEGH/ISO/HEVC` blocks carry), and build the avcC/hvcC from the
//! in-band SPS/PPS(/VPS). This is what lets `v4l2h264enc ! kvssink` and `rtph265depay ! kvssink`
//! work without a parser in between (the reference passes such streams through unplayable).
//!
//! Choices:
//! - Input buffers must be whole access units (`alignment=au`, which the pad template requires;
//!   GStreamer's parsers turn `alignment=nal` into `au`).
//! - Access unit delimiters are dropped (length-prefixed streams do not use them); everything else
//!   is kept, including in-band parameter sets, so a decoder that joins mid-stream still finds
//!   them.
//! - A frame is a key frame if upstream says so *or* it contains an IDR (H.264) / IRAP (H.265)
//!   slice: some depayloaders do not flag key frames reliably.
//! - Parameter sets are remembered per id. Unchanged sets are recognised by a byte comparison
//!   (no parsing, no allocation); a new or changed set is parsed and the CodecPrivate rebuilt.
//!   When it differs (new resolution/profile), [`ConvertedAu::config_changed`] tells the caller,
//!   which starts a new Matroska header at the next key frame.
//! - Conversion writes straight into the caller's buffer (the fragment arena): this is the one
//!   copy of the payload.

use bytes::BufMut;

use super::{CodecError, TrackConfig, TrackType, VideoCodec, h264, h265, video_params};

/// Finds the next start code (`00 00 01`) at or after `from`: returns the index of its first
/// zero byte.
fn find_start_code(data: &[u8], from: usize) -> Option<usize> {
    let mut i = from + 2;
    while i < data.len() {
        let one = i + memchr::memchr(1, &data[i..])?;
        if data[one - 1] == 0 && data[one - 2] == 0 {
            return Some(one - 2);
        }
        i = one + 1;
    }
    None
}

/// The NAL units of an Annex-B buffer (start codes and trailing zero bytes removed). Bytes
/// before the first start code are ignored.
pub struct NalUnits<'a> {
    data: &'a [u8],
    next: Option<usize>,
}

/// Iterates over the NAL units of `data`.
pub fn nal_units(data: &[u8]) -> NalUnits<'_> {
    NalUnits {
        data,
        next: find_start_code(data, 0).map(|i| i + 3),
    }
}

impl<'a> Iterator for NalUnits<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        loop {
            let start = self.next?;
            let end = match find_start_code(self.data, start) {
                Some(sc) => {
                    self.next = Some(sc + 3);
                    sc
                }
                None => {
                    self.next = None;
                    self.data.len()
                }
            };
            let mut nal = &self.data[start.min(end)..end];
            while let [rest @ .., 0] = nal {
                nal = rest;
            }
            if !nal.is_empty() {
                return Some(nal);
            }
        }
    }
}

/// The most bytes the length-prefixed form of `au` can take: every NAL unit gains at most one
/// byte (a 3-byte start code becomes a 4-byte length).
pub fn max_converted_len(au: &[u8]) -> usize {
    au.len() + au.len() / 4 + 4
}

/// What converting one access unit found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvertedAu {
    /// Bytes written.
    pub len: usize,
    /// The access unit has an IDR/IRAP slice.
    pub has_random_access: bool,
    /// The parameter sets of this access unit changed the track configuration (see
    /// [`AnnexBConverter::config`]).
    pub config_changed: bool,
}

/// Parameter sets of one kind, by id.
#[derive(Debug, Default)]
struct ParamSets(Vec<(u32, Vec<u8>)>);

impl ParamSets {
    fn contains_bytes(&self, nal: &[u8]) -> bool {
        self.0.iter().any(|(_, n)| n == nal)
    }

    fn put(&mut self, id: u32, nal: &[u8]) {
        match self.0.binary_search_by_key(&id, |(i, _)| *i) {
            Ok(at) => self.0[at].1 = nal.to_vec(),
            Err(at) => self.0.insert(at, (id, nal.to_vec())),
        }
    }

    fn slices(&self) -> Vec<&[u8]> {
        self.0.iter().map(|(_, n)| n.as_slice()).collect()
    }
}

/// Stateful Annex-B → length-prefixed converter for one video track.
#[derive(Debug)]
pub struct AnnexBConverter {
    codec: VideoCodec,
    caps_width: Option<u32>,
    caps_height: Option<u32>,
    vps: ParamSets,
    sps: ParamSets,
    pps: ParamSets,
    config: Option<TrackConfig>,
}

impl AnnexBConverter {
    /// `caps_width`/`caps_height` are only compared with the SPS (a mismatch is logged): the
    /// SPS is what decoders use.
    pub fn new(codec: VideoCodec, caps_width: Option<u32>, caps_height: Option<u32>) -> Self {
        Self {
            codec,
            caps_width,
            caps_height,
            vps: ParamSets::default(),
            sps: ParamSets::default(),
            pps: ParamSets::default(),
            config: None,
        }
    }

    pub fn codec(&self) -> VideoCodec {
        self.codec
    }

    /// The configuration built from the parameter sets seen so far (None until an SPS and a PPS,
    /// and for H.265 a VPS, have been seen).
    pub fn config(&self) -> Option<&TrackConfig> {
        self.config.as_ref()
    }

    /// Converts one access unit into `out` (which should have [`max_converted_len`] bytes of
    /// room so it does not reallocate).
    pub fn convert(&mut self, au: &[u8], out: &mut impl BufMut) -> Result<ConvertedAu, CodecError> {
        let mut res = ConvertedAu {
            len: 0,
            has_random_access: false,
            config_changed: false,
        };
        let mut sets_changed = false;
        let mut any = false;
        for nal in nal_units(au) {
            any = true;
            let (skip, random_access) = match self.codec {
                VideoCodec::H264 => {
                    let t = h264::nal_type(nal);
                    match t {
                        h264::NAL_SPS | h264::NAL_PPS => sets_changed |= self.remember(t, nal),
                        _ => {}
                    }
                    (t == h264::NAL_AUD, t == h264::NAL_IDR)
                }
                VideoCodec::H265 => {
                    let t = h265::nal_type(nal);
                    match t {
                        h265::NAL_VPS | h265::NAL_SPS | h265::NAL_PPS => {
                            sets_changed |= self.remember(t, nal)
                        }
                        _ => {}
                    }
                    (t == h265::NAL_AUD, h265::is_irap(t))
                }
            };
            res.has_random_access |= random_access;
            if skip {
                continue;
            }
            out.put_u32(nal.len() as u32);
            out.put_slice(nal);
            res.len += 4 + nal.len();
        }
        if !any {
            return Err(CodecError::NoNalUnits);
        }
        if sets_changed {
            res.config_changed = self.rebuild_config();
        }
        Ok(res)
    }

    /// Stores a parameter set; true if it is new or changed.
    fn remember(&mut self, ty: u8, nal: &[u8]) -> bool {
        let (sets, id) = match (self.codec, ty) {
            (VideoCodec::H264, h264::NAL_SPS) => {
                if self.sps.contains_bytes(nal) {
                    return false;
                }
                (&mut self.sps, h264::Sps::parse(nal).map(|s| s.id))
            }
            (VideoCodec::H264, _) => {
                if self.pps.contains_bytes(nal) {
                    return false;
                }
                (&mut self.pps, h264::pps_id(nal))
            }
            (VideoCodec::H265, h265::NAL_VPS) => {
                if self.vps.contains_bytes(nal) {
                    return false;
                }
                (&mut self.vps, h265::vps_id(nal))
            }
            (VideoCodec::H265, h265::NAL_SPS) => {
                if self.sps.contains_bytes(nal) {
                    return false;
                }
                (&mut self.sps, h265::Sps::parse(nal).map(|s| s.id))
            }
            (VideoCodec::H265, _) => {
                if self.pps.contains_bytes(nal) {
                    return false;
                }
                (&mut self.pps, h265::pps_id(nal))
            }
        };
        match id {
            Ok(id) => {
                tracing::debug!(
                    "{}: new parameter set (NAL type {ty}, id {id}, {} bytes)",
                    self.codec.name(),
                    nal.len()
                );
                sets.put(id, nal);
                true
            }
            Err(e) => {
                tracing::warn!(
                    "{}: ignoring an unreadable parameter set (NAL type {ty}): {e}",
                    self.codec.name()
                );
                false
            }
        }
    }

    /// Rebuilds the configuration from the stored sets; true if it changed.
    fn rebuild_config(&mut self) -> bool {
        let built = match self.codec {
            VideoCodec::H264 => self.build_h264(),
            VideoCodec::H265 => self.build_h265(),
        };
        match built {
            Ok(Some(cfg)) if self.config.as_ref() != Some(&cfg) => {
                if let Some(v) = &cfg.video {
                    tracing::info!(
                        "{}: codec configuration from the stream: {}x{}, {} bytes of codec private data",
                        self.codec.name(),
                        v.width,
                        v.height,
                        cfg.codec_private.len()
                    );
                }
                self.config = Some(cfg);
                true
            }
            Ok(_) => false,
            Err(e) => {
                tracing::warn!(
                    "{}: cannot build the codec configuration: {e}",
                    self.codec.name()
                );
                false
            }
        }
    }

    fn build_h264(&self) -> Result<Option<TrackConfig>, CodecError> {
        let (Some((_, first)), false) = (self.sps.0.first(), self.pps.0.is_empty()) else {
            return Ok(None);
        };
        let sps = h264::Sps::parse(first)?;
        let avcc = h264::build_avcc(&sps, &self.sps.slices(), &self.pps.slices());
        self.finish(avcc, sps.width, sps.height)
    }

    fn build_h265(&self) -> Result<Option<TrackConfig>, CodecError> {
        let (Some((_, first)), false, false) = (
            self.sps.0.first(),
            self.pps.0.is_empty(),
            self.vps.0.is_empty(),
        ) else {
            return Ok(None);
        };
        let sps = h265::Sps::parse(first)?;
        let hvcc = h265::build_hvcc(
            &sps,
            &self.vps.slices(),
            &self.sps.slices(),
            &self.pps.slices(),
        );
        self.finish(hvcc, sps.width, sps.height)
    }

    fn finish(&self, cpd: Vec<u8>, w: u32, h: u32) -> Result<Option<TrackConfig>, CodecError> {
        Ok(Some(TrackConfig {
            track_type: TrackType::Video,
            codec_id: self.codec.codec_id().to_owned(),
            codec_private: cpd.into(),
            video: video_params(
                Some((w, h)),
                self.caps_width,
                self.caps_height,
                self.codec.name(),
            )?,
            audio: None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{CPP_AVCC, hex};
    use super::*;

    #[test]
    fn splits_on_3_and_4_byte_start_codes() {
        let data = [
            0xFF, 0, 0, 0, 1, 0x09, 0x10, 0, 0, 1, 0x67, 1, 2, 0, 0, 0, 0, 1, 0x68, 3, 0, 0, 1,
            0x65, 0, 0, 3, 1, 0, 0,
        ];
        let nals: Vec<&[u8]> = nal_units(&data).collect();
        assert_eq!(
            nals,
            vec![
                &[0x09, 0x10][..],
                &[0x67, 1, 2],
                &[0x68, 3],
                &[0x65, 0, 0, 3, 1]
            ]
        );
        assert_eq!(nal_units(&[1, 2, 3, 0, 0]).count(), 0);
        assert_eq!(nal_units(&[0, 0, 1]).count(), 0);
    }

    fn annexb(nals: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        for n in nals {
            v.extend_from_slice(&[0, 0, 0, 1]);
            v.extend_from_slice(n);
        }
        v
    }

    #[test]
    fn h264_converts_and_builds_the_avcc() {
        let cpd = hex(CPP_AVCC);
        let avcc = h264::Avcc::parse(&cpd).unwrap();
        let (sps, pps) = (avcc.sps[0], avcc.pps[0]);
        let idr = [0x65, 0x88, 0x84, 0x00, 0x21];
        let au = annexb(&[&[0x09, 0xF0], sps, pps, &idr]);
        let mut c = AnnexBConverter::new(VideoCodec::H264, Some(640), Some(480));
        let mut out = Vec::new();
        let r = c.convert(&au, &mut out).unwrap();
        assert!(r.has_random_access && r.config_changed);
        assert_eq!(r.len, out.len());
        assert!(out.len() <= max_converted_len(&au));
        let mut expect = Vec::new();
        for n in [sps, pps, &idr[..]] {
            expect.extend_from_slice(&(n.len() as u32).to_be_bytes());
            expect.extend_from_slice(n);
        }
        assert_eq!(out, expect);
        // Same avcC as the KVS C++ SDK file (which h264parse made from the same SPS/PPS).
        assert_eq!(&c.config().unwrap().codec_private[..], &cpd[..]);
        assert_eq!(c.config().unwrap().video.unwrap().width, 640);

        // The same parameter sets again: no change; a delta frame: no random access.
        let mut out = Vec::new();
        let r = c
            .convert(&annexb(&[sps, pps, &[0x41, 0x9a]]), &mut out)
            .unwrap();
        assert!(!r.config_changed && !r.has_random_access);
        assert_eq!(out.len(), 4 + sps.len() + 4 + pps.len() + 4 + 2);
    }

    #[test]
    fn h264_resolution_change_is_signalled() {
        let cpd = hex(CPP_AVCC);
        let avcc = h264::Avcc::parse(&cpd).unwrap();
        let sps_1080 = hex("67640028acd940780227e5c05a808080a0000003002000000791e30632c0");
        let mut c = AnnexBConverter::new(VideoCodec::H264, None, None);
        c.convert(
            &annexb(&[avcc.sps[0], avcc.pps[0], &[0x65, 1]]),
            &mut Vec::new(),
        )
        .unwrap();
        let r = c
            .convert(
                &annexb(&[&sps_1080, avcc.pps[0], &[0x65, 1]]),
                &mut Vec::new(),
            )
            .unwrap();
        assert!(r.config_changed);
        let v = c.config().unwrap().video.unwrap();
        assert_eq!((v.width, v.height), (1920, 1080));
        assert_eq!(c.config().unwrap().codec_private[1], 100);
    }

    #[test]
    fn h264_without_parameter_sets_has_no_config() {
        let mut c = AnnexBConverter::new(VideoCodec::H264, None, None);
        let r = c
            .convert(&annexb(&[&[0x41, 0x9a, 1]]), &mut Vec::new())
            .unwrap();
        assert!(!r.config_changed);
        assert!(c.config().is_none());
        assert_eq!(
            c.convert(&[1, 2, 3], &mut Vec::new()),
            Err(CodecError::NoNalUnits)
        );
    }

    #[test]
    fn h265_builds_the_hvcc() {
        let vps = hex("40010c01ffff016000000300900000030000030078959809");
        let sps = hex(
            "420101016000000300900000030000030078a003c08010e596566924cafff000100016a020202080000003008000000f04",
        );
        let pps = hex("4401c172b46240");
        let idr = [0x26, 0x01, 0xAF, 0x80];
        let mut c = AnnexBConverter::new(VideoCodec::H265, None, None);
        let mut out = Vec::new();
        let r = c
            .convert(
                &annexb(&[&[0x46, 0x01, 0x50], &vps, &sps, &pps, &idr]),
                &mut out,
            )
            .unwrap();
        assert!(r.has_random_access && r.config_changed);
        let cfg = c.config().unwrap();
        assert_eq!(cfg.codec_id, "V_MPEGH/ISO/HEVC");
        assert_eq!(cfg.video.unwrap().height, 1080);
        let h = h265::Hvcc::parse(&cfg.codec_private).unwrap();
        assert_eq!(h.arrays.len(), 3);
        // AUD dropped, 4 NAL units kept.
        assert_eq!(
            out.len(),
            16 + vps.len() + sps.len() + pps.len() + idr.len()
        );
        // A trailing (non-IRAP) picture.
        let r = c
            .convert(&annexb(&[&[0x02, 0x01, 0xD0]]), &mut Vec::new())
            .unwrap();
        assert!(!r.has_random_access && !r.config_changed);
    }
}
