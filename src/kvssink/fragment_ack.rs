//! The payload of the `fragment-ack` signal, laid out exactly as the reference's C struct
//! `FragmentAck` (PIC `client/include/com/amazonaws/kinesis/video/client/Include.h`), so existing
//! C/C++ handlers that cast the `gpointer` keep working:
//!
//! ```c
//! typedef struct {
//!     UINT32 version;                      // 0
//!     FRAGMENT_ACK_TYPE ackType;           // C enum (int): 0 undefined .. 5 idle
//!     UINT64 timestamp;                    // FragmentTimecode, in timecode-scale units
//!     CHAR sequenceNumber[128 + 1];        // FragmentNumber, NUL-terminated
//!     SERVICE_CALL_RESULT result;          // ErrorId, or 200 when OK
//! } FragmentAck;
//! ```
//!
//! The pointer is valid only during the emission.

/// `MAX_FRAGMENT_SEQUENCE_NUMBER` + 1 for the NUL.
pub const SEQUENCE_NUMBER_LEN: usize = 129;
/// `FRAGMENT_ACK_CURRENT_VERSION`.
pub const FRAGMENT_ACK_VERSION: u32 = 0;
/// `SERVICE_CALL_RESULT_OK`.
pub const RESULT_OK: u32 = 200;

/// `FRAGMENT_ACK_TYPE`.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckType {
    Undefined = 0,
    Buffering = 1,
    Received = 2,
    Persisted = 3,
    Error = 4,
    Idle = 5,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct FragmentAck {
    pub version: u32,
    pub ack_type: AckType,
    pub timestamp: u64,
    pub sequence_number: [u8; SEQUENCE_NUMBER_LEN],
    pub result: u32,
}

impl FragmentAck {
    /// Builds the C payload. A fragment number longer than 128 bytes is truncated (the service's
    /// are ~47 digits).
    pub fn new(ack_type: AckType, timestamp: u64, fragment_number: &str, result: u32) -> Self {
        let mut sequence_number = [0u8; SEQUENCE_NUMBER_LEN];
        let bytes = fragment_number.as_bytes();
        let n = bytes.len().min(SEQUENCE_NUMBER_LEN - 1);
        sequence_number[..n].copy_from_slice(&bytes[..n]);
        Self {
            version: FRAGMENT_ACK_VERSION,
            ack_type,
            timestamp,
            sequence_number,
            result,
        }
    }

    /// The fragment number as text (up to the first NUL).
    pub fn fragment_number(&self) -> &str {
        let end = self
            .sequence_number
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(SEQUENCE_NUMBER_LEN);
        std::str::from_utf8(&self.sequence_number[..end]).unwrap_or("")
    }
}

impl std::fmt::Debug for FragmentAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FragmentAck")
            .field("version", &self.version)
            .field("ack_type", &self.ack_type)
            .field("timestamp", &self.timestamp)
            .field("sequence_number", &self.fragment_number())
            .field("result", &self.result)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{align_of, offset_of, size_of};

    #[test]
    fn layout_matches_the_c_struct() {
        // x86_64 / aarch64 / armv7 (gnueabihf: u64 is 8-aligned) all give these offsets.
        assert_eq!(offset_of!(FragmentAck, version), 0);
        assert_eq!(offset_of!(FragmentAck, ack_type), 4);
        assert_eq!(offset_of!(FragmentAck, timestamp), 8);
        assert_eq!(offset_of!(FragmentAck, sequence_number), 16);
        assert_eq!(offset_of!(FragmentAck, result), 148);
        assert_eq!(size_of::<FragmentAck>(), 152);
        assert_eq!(align_of::<FragmentAck>(), 8);
        assert_eq!(size_of::<AckType>(), 4);
    }

    #[test]
    fn sequence_number_round_trip_and_truncation() {
        let n = "91343852333181704754345985890710005834298701132";
        let ack = FragmentAck::new(AckType::Persisted, 1_615_717_079_836, n, RESULT_OK);
        assert_eq!(ack.fragment_number(), n);
        assert_eq!(ack.sequence_number[n.len()], 0);
        let long = "9".repeat(200);
        let ack = FragmentAck::new(AckType::Error, 0, &long, 4011);
        assert_eq!(ack.fragment_number().len(), 128);
        assert_eq!(ack.sequence_number[128], 0);
    }
}
