//! AAC AudioSpecificConfig (ISO 14496-3 §1.6.2.1): the sample rate and channel count for the
//! Matroska Audio element, and an AAC-LC config for caps without `codec_data`.

use super::CodecError;
use super::bits::BitReader;

/// `samplingFrequencyIndex` values 0..=12.
pub const SAMPLING_FREQUENCIES: [u32; 13] = [
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
];

/// The fields of an AudioSpecificConfig the track entry needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioSpecificConfig {
    pub object_type: u8,
    /// None for a reserved index.
    pub sampling_frequency: Option<u32>,
    /// None when the channel configuration is in a program config element (0) or reserved.
    pub channels: Option<u8>,
}

impl AudioSpecificConfig {
    pub fn parse(data: &[u8]) -> Result<Self, CodecError> {
        const WHAT: &str = "AudioSpecificConfig";
        if data.len() < 2 {
            return Err(CodecError::Truncated { what: WHAT });
        }
        let mut r = BitReader::new(data, WHAT);
        let mut object_type = r.bits(5)? as u8;
        if object_type == 31 {
            object_type = 32 + r.bits(6)? as u8;
        }
        if object_type == 0 {
            return Err(CodecError::Invalid {
                what: WHAT,
                reason: "audio object type 0".into(),
            });
        }
        let index = r.bits(4)? as usize;
        let sampling_frequency = if index == 15 {
            Some(r.bits(24)? as u32).filter(|&f| f != 0)
        } else {
            SAMPLING_FREQUENCIES.get(index).copied()
        };
        let channels = match r.bits(4)? {
            c @ 1..=6 => Some(c as u8),
            7 => Some(8),
            _ => None,
        };
        Ok(Self {
            object_type,
            sampling_frequency,
            channels,
        })
    }
}

/// A 2-byte (or 5-byte for non-standard rates) AAC-LC AudioSpecificConfig.
pub fn lc_config(rate: u32, channels: u32) -> Result<Vec<u8>, CodecError> {
    let channel_config = match channels {
        1..=6 => channels,
        8 => 7,
        _ => {
            return Err(CodecError::Unsupported {
                what: "AAC caps",
                reason: format!("{channels} channels need codec_data (a program config element)"),
            });
        }
    };
    if rate == 0 || rate >= 1 << 24 {
        return Err(CodecError::Invalid {
            what: "AAC caps",
            reason: format!("sample rate {rate}"),
        });
    }
    Ok(match SAMPLING_FREQUENCIES.iter().position(|&f| f == rate) {
        Some(index) => {
            let v = (2u16 << 11) | ((index as u16) << 7) | ((channel_config as u16) << 3);
            v.to_be_bytes().to_vec()
        }
        None => {
            // object type 2 (5 bits), index 15 (4), 24-bit rate, channel config (4), 3 zero bits.
            let v: u64 = (2u64 << 35)
                | (15 << 31)
                | (u64::from(rate) << 7)
                | (u64::from(channel_config) << 3);
            v.to_be_bytes()[3..].to_vec()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_configs() {
        let c = AudioSpecificConfig::parse(&[0x12, 0x10]).unwrap();
        assert_eq!(
            c,
            AudioSpecificConfig {
                object_type: 2,
                sampling_frequency: Some(44100),
                channels: Some(2)
            }
        );
        // HE-AAC (SBR, 5) at 24 kHz core, mono.
        let c = AudioSpecificConfig::parse(&[0x2B, 0x08]).unwrap();
        assert_eq!(
            (c.object_type, c.sampling_frequency, c.channels),
            (5, Some(24000), Some(1))
        );
        // Escaped object type 31 → 32 + 6 bits.
        let c = AudioSpecificConfig::parse(&[0xF8, 0x08, 0x40]).unwrap();
        assert_eq!(c.object_type, 32);
        assert_eq!(c.sampling_frequency, Some(44100));
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(
            AudioSpecificConfig::parse(&[0x12]),
            Err(CodecError::Truncated { .. })
        ));
        assert!(matches!(
            AudioSpecificConfig::parse(&[0x00, 0x10]),
            Err(CodecError::Invalid { .. })
        ));
    }

    #[test]
    fn lc_config_round_trips() {
        for (rate, ch) in [(8000, 1), (44100, 2), (48000, 6), (22050, 8), (37800, 2)] {
            let data = lc_config(rate, ch).unwrap();
            let c = AudioSpecificConfig::parse(&data).unwrap();
            assert_eq!(c.object_type, 2);
            assert_eq!(c.sampling_frequency, Some(rate));
            assert_eq!(u32::from(c.channels.unwrap()), ch);
        }
        assert!(lc_config(44100, 7).is_err());
    }
}
