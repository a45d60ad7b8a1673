//! Bit-level reading of H.264/H.265 parameter sets: emulation-prevention removal (NAL payload →
//! RBSP) and an MSB-first bit reader with Exp-Golomb codes.
//!
//! Only parameter sets are parsed, and only when their bytes change, so this is cold code; it is
//! still bounds-checked everywhere because the input comes from the network (RTSP cameras).

use super::CodecError;

/// Removes emulation-prevention bytes (`00 00 03` → `00 00`) from a NAL unit payload.
pub fn rbsp(nal: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(nal.len());
    let mut zeros = 0usize;
    for &b in nal {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

/// MSB-first bit reader over an RBSP.
pub struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> BitReader<'a> {
    /// `what` names the structure in errors ("H.264 SPS").
    pub fn new(data: &'a [u8], what: &'static str) -> Self {
        Self { data, pos: 0, what }
    }

    fn truncated(&self) -> CodecError {
        CodecError::Truncated { what: self.what }
    }

    pub fn bit(&mut self) -> Result<bool, CodecError> {
        let byte = *self
            .data
            .get(self.pos / 8)
            .ok_or_else(|| self.truncated())?;
        let b = (byte >> (7 - (self.pos % 8))) & 1;
        self.pos += 1;
        Ok(b == 1)
    }

    pub fn bits(&mut self, n: u32) -> Result<u64, CodecError> {
        debug_assert!(n <= 64);
        let mut v = 0u64;
        for _ in 0..n {
            v = (v << 1) | u64::from(self.bit()?);
        }
        Ok(v)
    }

    pub fn skip(&mut self, n: usize) -> Result<(), CodecError> {
        if self.pos + n > self.data.len() * 8 {
            return Err(self.truncated());
        }
        self.pos += n;
        Ok(())
    }

    /// ue(v).
    pub fn ue(&mut self) -> Result<u32, CodecError> {
        let mut zeros = 0u32;
        while !self.bit()? {
            zeros += 1;
            if zeros > 31 {
                return Err(CodecError::Invalid {
                    what: self.what,
                    reason: "Exp-Golomb code longer than 32 bits".into(),
                });
            }
        }
        let rest = self.bits(zeros)?;
        Ok(((1u64 << zeros) - 1 + rest) as u32)
    }

    /// se(v).
    pub fn se(&mut self) -> Result<i32, CodecError> {
        let k = i64::from(self.ue()?);
        Ok(if k % 2 == 1 {
            ((k + 1) / 2) as i32
        } else {
            (-(k / 2)) as i32
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emulation_prevention_is_removed() {
        assert_eq!(rbsp(&[0, 0, 3, 1, 0, 0, 3, 0, 3]), [0, 0, 1, 0, 0, 0, 3]);
        assert_eq!(rbsp(&[0, 3, 0]), [0, 3, 0]);
    }

    #[test]
    fn exp_golomb() {
        // 1 | 010 | 011 | 00100 | 00101 → ue 0,1,2,3,4 ; then se of 00110 (k=5 → 3).
        let data = [0b1010_0110, 0b0100_0010, 0b1001_1000];
        let mut r = BitReader::new(&data, "test");
        assert_eq!(r.ue().unwrap(), 0);
        assert_eq!(r.ue().unwrap(), 1);
        assert_eq!(r.ue().unwrap(), 2);
        assert_eq!(r.ue().unwrap(), 3);
        assert_eq!(r.ue().unwrap(), 4);
        assert_eq!(r.se().unwrap(), 3);
        assert!(matches!(r.bits(8), Err(CodecError::Truncated { .. })));
    }
}
