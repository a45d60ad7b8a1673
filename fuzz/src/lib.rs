//! Helpers shared by the fuzz targets: deterministic chunking of one input and a simple framing
//! of several inputs in one, so that seeds stay readable and libFuzzer can still mutate them.

/// Splits `data` into chunks whose sizes are derived from `seed` (a few styles: byte by byte,
/// tiny, mixed, large), the way network reads split a body.
pub fn chunks(seed: u8, data: &[u8]) -> Vec<&[u8]> {
    let max = match seed & 3 {
        0 => 1,
        1 => 7,
        2 => 300,
        _ => 4096,
    };
    let mut state = u32::from(seed) | 0x9E37_0000;
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        // xorshift32
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = (state as usize % max + 1).min(rest.len());
        let (c, r) = rest.split_at(n);
        out.push(c);
        rest = r;
    }
    out
}

/// Splits `data` into frames `[len: u16 LE][len bytes]`; a truncated last frame keeps what there is.
pub fn frames(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while data.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([data[0], data[1]]));
        let end = (2 + len).min(data.len());
        out.push(&data[2..end]);
        data = &data[end..];
    }
    out
}

/// A `u32` from up to four bytes at `at` (little-endian, missing bytes are 0).
pub fn u32_at(data: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    for (i, x) in b.iter_mut().enumerate() {
        *x = data.get(at + i).copied().unwrap_or(0);
    }
    u32::from_le_bytes(b)
}
