//! PutMedia acknowledgements as the service writes them.
//!
//! Owns: the ACK JSON object (`EventType`, `FragmentTimecode`, `FragmentNumber`, and for ERROR
//! `ErrorId` + `ErrorCode`), its wire form (one object per HTTP chunk, ended by a newline, well
//! under the 1024-byte chunk limit of the C producer's parser), and the names of the service's
//! error codes.

use serde::{Deserialize, Serialize};

/// `EventType` of an ACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AckEventType {
    Buffering,
    Received,
    Persisted,
    Error,
    Idle,
}

/// One acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    #[serde(rename = "EventType")]
    pub event_type: AckEventType,
    #[serde(
        rename = "FragmentTimecode",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub fragment_timecode: Option<u64>,
    #[serde(
        rename = "FragmentNumber",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub fragment_number: Option<String>,
    #[serde(rename = "ErrorId", default, skip_serializing_if = "Option::is_none")]
    pub error_id: Option<u32>,
    #[serde(rename = "ErrorCode", default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
}

impl Ack {
    pub fn idle() -> Self {
        Ack {
            event_type: AckEventType::Idle,
            fragment_timecode: None,
            fragment_number: None,
            error_id: None,
            error_code: None,
        }
    }

    pub fn fragment(event_type: AckEventType, timecode: u64, number: &str) -> Self {
        Ack {
            event_type,
            fragment_timecode: Some(timecode),
            fragment_number: Some(number.to_owned()),
            error_id: None,
            error_code: None,
        }
    }

    /// An ERROR ACK; the fragment is omitted when the error concerns no fragment.
    pub fn error(error_id: u32, fragment: Option<(u64, &str)>) -> Self {
        Ack {
            event_type: AckEventType::Error,
            fragment_timecode: fragment.map(|f| f.0),
            fragment_number: fragment.map(|f| f.1.to_owned()),
            error_id: Some(error_id),
            error_code: Some(error_code_name(error_id).to_owned()),
        }
    }

    /// The bytes of one response chunk.
    pub fn to_wire(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).expect("an Ack always serializes");
        v.push(b'\n');
        v
    }
}

/// The service's `ErrorCode` for an `ErrorId`.
pub fn error_code_name(error_id: u32) -> &'static str {
    kvs_facts::ack_error_name(u64::from(error_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_matches_the_service() {
        let a = Ack::fragment(AckEventType::Persisted, 1_584_462_424_721, "913438");
        assert_eq!(
            String::from_utf8(a.to_wire()).unwrap(),
            "{\"EventType\":\"PERSISTED\",\"FragmentTimecode\":1584462424721,\"FragmentNumber\":\"913438\"}\n"
        );
        assert_eq!(
            String::from_utf8(Ack::error(4006, None).to_wire()).unwrap(),
            "{\"EventType\":\"ERROR\",\"ErrorId\":4006,\"ErrorCode\":\"INVALID_MKV_DATA\"}\n"
        );
        assert_eq!(Ack::idle().to_wire(), b"{\"EventType\":\"IDLE\"}\n");
    }
}
