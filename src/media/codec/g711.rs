//! G.711 A-law/µ-law as Matroska `A_MS/ACM`: the CodecPrivate is an 18-byte WAVEFORMATEX.
//!
//! Unlike the reference (`mkvgenGeneratePcmCpd`), the average byte rate is `rate × channels`
//! (one byte per sample per channel) and `wBitsPerSample` is 8; the reference writes
//! `rate × channels / 8` and 0, which players then have to ignore.

use super::CodecError;

/// Which G.711 companding law.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum G711Law {
    /// `audio/x-alaw`, WAVE_FORMAT_ALAW (6).
    ALaw,
    /// `audio/x-mulaw`, WAVE_FORMAT_MULAW (7).
    MuLaw,
}

impl G711Law {
    pub fn format_tag(self) -> u16 {
        match self {
            Self::ALaw => 6,
            Self::MuLaw => 7,
        }
    }
}

/// The pad template's limits (the reference's): 1–2 channels, 8–192 kHz.
pub const RATES: std::ops::RangeInclusive<u32> = 8000..=192_000;
pub const CHANNELS: std::ops::RangeInclusive<u32> = 1..=2;

/// WAVEFORMATEX, little-endian: format tag, channels, rate, average bytes/s, block align,
/// bits/sample, cbSize = 0.
pub fn waveformatex(law: G711Law, rate: u32, channels: u32) -> Result<[u8; 18], CodecError> {
    const WHAT: &str = "G.711 caps";
    if !RATES.contains(&rate) {
        return Err(CodecError::Unsupported {
            what: WHAT,
            reason: format!("rate {rate} Hz is outside 8000..=192000"),
        });
    }
    if !CHANNELS.contains(&channels) {
        return Err(CodecError::Unsupported {
            what: WHAT,
            reason: format!("{channels} channels (1 or 2 are allowed)"),
        });
    }
    let mut w = [0u8; 18];
    w[0..2].copy_from_slice(&law.format_tag().to_le_bytes());
    w[2..4].copy_from_slice(&(channels as u16).to_le_bytes());
    w[4..8].copy_from_slice(&rate.to_le_bytes());
    w[8..12].copy_from_slice(&(rate * channels).to_le_bytes());
    w[12..14].copy_from_slice(&(channels as u16).to_le_bytes());
    w[14..16].copy_from_slice(&8u16.to_le_bytes());
    // cbSize = 0
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alaw_mono_8k() {
        assert_eq!(
            waveformatex(G711Law::ALaw, 8000, 1).unwrap(),
            [
                6, 0, 1, 0, 0x40, 0x1F, 0, 0, 0x40, 0x1F, 0, 0, 1, 0, 8, 0, 0, 0
            ]
        );
    }

    #[test]
    fn mulaw_stereo_16k_has_correct_byte_rate() {
        let w = waveformatex(G711Law::MuLaw, 16000, 2).unwrap();
        assert_eq!(u16::from_le_bytes([w[0], w[1]]), 7);
        assert_eq!(u16::from_le_bytes([w[2], w[3]]), 2);
        assert_eq!(u32::from_le_bytes(w[4..8].try_into().unwrap()), 16000);
        assert_eq!(u32::from_le_bytes(w[8..12].try_into().unwrap()), 32000);
        assert_eq!(u16::from_le_bytes([w[12], w[13]]), 2);
        assert_eq!(u16::from_le_bytes([w[14], w[15]]), 8);
        assert_eq!(u16::from_le_bytes([w[16], w[17]]), 0);
    }

    #[test]
    fn out_of_range() {
        assert!(waveformatex(G711Law::ALaw, 7999, 1).is_err());
        assert!(waveformatex(G711Law::ALaw, 8000, 0).is_err());
    }
}
