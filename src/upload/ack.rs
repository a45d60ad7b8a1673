//! PutMedia acknowledgements: the incremental parser of the ACK stream and the classification of
//! error ACKs.
//!
//! The service answers a PutMedia request with a stream of JSON objects, one per event, normally
//! newline-separated (docs/kvs-protocol.md §6.1):
//! `{"EventType":"PERSISTED","FragmentTimecode":1615717079836,"FragmentNumber":"9134…"}`.
//! Bytes arrive in arbitrary chunks, so [`AckParser`] keeps the unparsed tail between calls
//! (serde_json's `StreamDeserializer`, which handles any whitespace between objects). Unlike the
//! reference parser there is no 1024-byte chunk limit. Garbage is skipped up to the next `{`
//! and reported, so one bad object does not lose the ones after it.

use bytes::{Buf, BytesMut};
use serde::Deserialize;

/// Bytes of a single unfinished object we are willing to hold before declaring it garbage.
pub const MAX_PENDING_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AckEvent {
    Buffering,
    Received,
    Persisted,
    Error,
    Idle,
}

impl AckEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            AckEvent::Buffering => "BUFFERING",
            AckEvent::Received => "RECEIVED",
            AckEvent::Persisted => "PERSISTED",
            AckEvent::Error => "ERROR",
            AckEvent::Idle => "IDLE",
        }
    }
}

/// One acknowledgement from the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub event: AckEvent,
    /// `FragmentTimecode`, in the stream's timecode-scale units; absent on some IDLE and ERROR ACKs.
    pub timecode: Option<u64>,
    /// `FragmentNumber`, a ~47-digit decimal string.
    pub fragment_number: Option<String>,
    /// `ErrorId`, present on ERROR ACKs.
    pub error_id: Option<u64>,
    /// `ErrorCode`, the service's name for the error (e.g. `INVALID_MKV_DATA`).
    pub error_code: Option<String>,
}

#[derive(Deserialize)]
struct RawAck {
    #[serde(rename = "EventType")]
    event_type: Option<String>,
    #[serde(rename = "FragmentTimecode")]
    fragment_timecode: Option<u64>,
    #[serde(rename = "FragmentNumber")]
    fragment_number: Option<String>,
    #[serde(rename = "ErrorId")]
    error_id: Option<u64>,
    #[serde(rename = "ErrorCode")]
    error_code: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    #[error("malformed ACK JSON ({0}); skipped to the next object")]
    Malformed(String),
    #[error("ACK without EventType")]
    MissingEventType,
    #[error("ACK with unknown EventType '{0}'")]
    UnknownEventType(String),
    #[error("ERROR ACK without ErrorId")]
    ErrorWithoutId,
    #[error("ACK object longer than {MAX_PENDING_BYTES} bytes; dropped")]
    TooLong,
}

impl TryFrom<RawAck> for Ack {
    type Error = AckError;

    fn try_from(raw: RawAck) -> Result<Self, AckError> {
        let event = match raw.event_type.as_deref() {
            None => return Err(AckError::MissingEventType),
            Some("BUFFERING") => AckEvent::Buffering,
            Some("RECEIVED") => AckEvent::Received,
            Some("PERSISTED") => AckEvent::Persisted,
            Some("ERROR") => AckEvent::Error,
            Some("IDLE") => AckEvent::Idle,
            Some(other) => return Err(AckError::UnknownEventType(other.to_owned())),
        };
        if event == AckEvent::Error && raw.error_id.is_none() {
            return Err(AckError::ErrorWithoutId);
        }
        Ok(Ack {
            event,
            timecode: raw.fragment_timecode,
            fragment_number: raw.fragment_number,
            error_id: raw.error_id,
            error_code: raw.error_code,
        })
    }
}

/// Incremental parser: feed it the response body chunks as they come.
#[derive(Debug, Default)]
pub struct AckParser {
    pending: BytesMut,
}

impl AckParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes received but not yet part of a complete object.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Appends `chunk` and returns every complete ACK (or problem) in arrival order.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Result<Ack, AckError>> {
        self.pending.extend_from_slice(chunk);
        let mut out = Vec::new();
        loop {
            let mut stream =
                serde_json::Deserializer::from_slice(&self.pending).into_iter::<RawAck>();
            match stream.next() {
                Some(Ok(raw)) => {
                    let consumed = stream.byte_offset();
                    self.pending.advance(consumed);
                    out.push(Ack::try_from(raw));
                }
                // serde_json reports a number cut after its `.` or `e` (`4.`, `1e`) at the end
                // of the input as an invalid number, not as EOF: an error at the very end may
                // still be an unfinished object, so wait for more bytes as for EOF.
                Some(Err(e))
                    if e.is_eof() || error_offset(&self.pending, &e) + 1 >= self.pending.len() =>
                {
                    if self.pending.len() > MAX_PENDING_BYTES {
                        self.pending.clear();
                        out.push(Err(AckError::TooLong));
                    }
                    break;
                }
                Some(Err(e)) => {
                    out.push(Err(AckError::Malformed(e.to_string())));
                    // Resynchronise on the next object start after the current one.
                    let start = self
                        .pending
                        .iter()
                        .position(|b| !b.is_ascii_whitespace())
                        .unwrap_or(0);
                    match self.pending[start + 1..].iter().position(|&b| b == b'{') {
                        Some(next) => self.pending.advance(start + 1 + next),
                        None => {
                            self.pending.clear();
                            break;
                        }
                    }
                }
                None => {
                    // Only whitespace left.
                    self.pending.clear();
                    break;
                }
            }
        }
        out
    }
}

/// The byte offset in `buf` of the position `e` names (line and column are 1-based).
fn error_offset(buf: &[u8], e: &serde_json::Error) -> usize {
    let mut line = 1;
    let mut start = 0;
    for (i, &b) in buf.iter().enumerate() {
        if line == e.line() {
            break;
        }
        if b == b'\n' {
            line += 1;
            start = i + 1;
        }
    }
    start + e.column().saturating_sub(1)
}

/// How an ERROR ACK is handled, by `ErrorId` (docs/kvs-protocol.md §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorClass {
    /// The fragment can be sent again; otherwise it is skipped (reported as dropped).
    pub retriable: bool,
    /// The stream can go on; otherwise the element reports a fatal error.
    pub recoverable: bool,
    /// The service has the data up to the last RECEIVED ACK: replay may start after it.
    pub host_alive: bool,
    /// The reference SDK's STATUS code for this error, as carried by `stream-error`.
    pub status: u32,
}

/// The classification of `error_id`; unknown ids are treated like the reference's 7000
/// (retriable, recoverable).
pub fn classify_error(error_id: u64) -> ErrorClass {
    let c = |retriable, recoverable, host_alive, status| ErrorClass {
        retriable,
        recoverable,
        host_alive,
        status,
    };
    match error_id {
        4000 => c(true, true, true, 0x5200_005c),
        4001 => c(false, true, false, 0x5200_005d),
        4002 => c(false, true, false, 0x5200_005e),
        4003 => c(true, true, true, 0x5200_005f),
        4004 => c(false, true, false, 0x5200_0060),
        4005 => c(false, false, false, 0x5200_0061),
        4006 => c(false, true, false, 0x5200_0062),
        4007 => c(false, false, false, 0x5200_0063),
        4008 => c(false, false, true, 0x5200_0064),
        4009 => c(false, true, false, 0x5200_0075),
        4010 => c(false, false, false, 0x5200_007c),
        4011 => c(false, true, false, 0x5200_007d),
        4012 => c(false, false, false, 0x5200_007e),
        id @ 4500..=4506 => c(false, false, true, 0x5200_0065 + (id as u32 - 4500)),
        4507 => c(false, false, true, 0x5200_006c),
        5000 => c(true, true, true, 0x5200_006d),
        5001 => c(true, true, true, 0x5200_006e),
        _ => c(true, true, false, 0x5200_006f),
    }
}

/// The service's `ErrorCode` name for an `ErrorId` (docs/kvs-protocol.md §6.3).
pub fn error_code_name(error_id: u64) -> &'static str {
    kvs_facts::ack_error_name(error_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_number_cut_after_its_dot_waits_for_more_bytes() {
        // Found by fuzzing (fuzz/fuzz_targets/ack_parser.rs): fed byte by byte, an ACK with a
        // fractional number in a field we do not read (`"X":4.04`) was dropped as malformed when
        // a chunk ended right after the `.` (serde_json: invalid number, not EOF).
        let ack = br#"{"EventType":"PERSISTED","X":4.04,"Y":1e3,"FragmentTimecode":5}"#;
        let mut p = AckParser::new();
        let mut out = Vec::new();
        for b in ack {
            out.extend(p.push(&[*b]));
        }
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].as_ref().unwrap().timecode, Some(5));
        // A real error at the end is still reported once more bytes show it.
        let mut p = AckParser::new();
        assert!(p.push(br#"{"EventType":"IDLE","X":4."#).is_empty());
        let r = p.push(br#"x} {"EventType":"IDLE"}"#);
        assert!(matches!(r[0], Err(AckError::Malformed(_))), "{r:?}");
        assert_eq!(r[1].as_ref().unwrap().event, AckEvent::Idle);
    }
    use proptest::prelude::*;

    const STREAM: &str = concat!(
        "{\"EventType\":\"BUFFERING\",\"FragmentTimecode\":1615717079876,\"FragmentNumber\":\"91343852333181704754345985890710005834298701132\"}\n",
        "{\"EventType\":\"RECEIVED\",\"FragmentTimecode\":1615717079836,\"FragmentNumber\":\"91343852333181704749394225733568484734841826784\"}\n",
        "{\"EventType\":\"IDLE\"}\n",
        "{\"EventType\":\"PERSISTED\",\"FragmentTimecode\":1584462424721,\"FragmentNumber\":\"91343852333189949529091069500639873442556776862\"}\n",
        "{\"EventType\":\"ERROR\",\"FragmentTimecode\":5000,\"FragmentNumber\":\"9134\",\"ErrorId\":4011,\"ErrorCode\":\"FRAMES_MISSING_FOR_TRACK\"}\n",
        "{\"EventType\":\"ERROR\",\"ErrorCode\":\"INVALID_MKV_DATA\",\"ErrorId\":4006}\n",
    );

    fn parse_all(chunks: &[&[u8]]) -> Vec<Result<Ack, AckError>> {
        let mut p = AckParser::new();
        chunks.iter().flat_map(|c| p.push(c)).collect()
    }

    #[test]
    fn parses_the_service_examples() {
        let acks: Vec<Ack> = parse_all(&[STREAM.as_bytes()])
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let events: Vec<_> = acks.iter().map(|a| a.event).collect();
        use AckEvent::*;
        assert_eq!(
            events,
            vec![Buffering, Received, Idle, Persisted, Error, Error]
        );
        assert_eq!(acks[0].timecode, Some(1_615_717_079_876));
        assert_eq!(
            acks[3].fragment_number.as_deref(),
            Some("91343852333189949529091069500639873442556776862")
        );
        assert_eq!(acks[4].error_id, Some(4011));
        assert_eq!(acks[5].timecode, None);
        assert_eq!(acks[5].error_code.as_deref(), Some("INVALID_MKV_DATA"));
    }

    #[test]
    fn invalid_objects_are_reported_and_skipped() {
        let input = b"{\"EventType\":\"PERSISTED\",\"FragmentTimecode\":1}{\"EventType\":\"ERROR\"}\n{\"Foo\":1}{\"EventType\":\"NOPE\"} garbage {\"EventType\":\"RECEIVED\",\"FragmentTimecode\":2}";
        let out = parse_all(&[input]);
        assert_eq!(out.len(), 6, "{out:?}");
        assert_eq!(out[0].as_ref().unwrap().event, AckEvent::Persisted);
        assert_eq!(out[1], Err(AckError::ErrorWithoutId));
        assert_eq!(out[2], Err(AckError::MissingEventType));
        assert_eq!(out[3], Err(AckError::UnknownEventType("NOPE".into())));
        assert!(matches!(out[4], Err(AckError::Malformed(_))));
        assert_eq!(out[5].as_ref().unwrap().timecode, Some(2));
    }

    #[test]
    fn oversized_partial_object_is_dropped() {
        let mut p = AckParser::new();
        let mut big = b"{\"EventType\":\"".to_vec();
        big.extend(std::iter::repeat_n(b'A', MAX_PENDING_BYTES + 1));
        assert_eq!(p.push(&big), vec![Err(AckError::TooLong)]);
        assert_eq!(p.pending_len(), 0);
        let ok = p.push(b"{\"EventType\":\"IDLE\"}");
        assert_eq!(ok.len(), 1);
    }

    #[test]
    fn error_classes_follow_the_reference() {
        assert!(classify_error(4000).retriable && classify_error(4000).recoverable);
        assert!(!classify_error(4001).retriable && classify_error(4001).recoverable);
        assert!(!classify_error(4005).recoverable);
        assert!(!classify_error(4010).recoverable);
        assert_eq!(classify_error(4502).status, 0x5200_0067);
        assert!(classify_error(5001).retriable);
        let unknown = classify_error(9999);
        assert!(unknown.retriable && unknown.recoverable && !unknown.host_alive);
        assert_eq!(unknown.status, 0x5200_006f);
        assert_eq!(
            error_code_name(4004),
            "FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS"
        );
    }

    proptest! {
        /// Any chunking of the byte stream yields the same ACKs.
        #[test]
        fn any_chunking_gives_the_same_acks(cuts in proptest::collection::vec(0usize..STREAM.len(), 0..40)) {
            let whole = parse_all(&[STREAM.as_bytes()]);
            let mut cuts = cuts;
            cuts.sort_unstable();
            cuts.dedup();
            let bytes = STREAM.as_bytes();
            let mut chunks = Vec::new();
            let mut last = 0;
            for c in cuts {
                chunks.push(&bytes[last..c]);
                last = c;
            }
            chunks.push(&bytes[last..]);
            prop_assert_eq!(parse_all(&chunks), whole);
        }
    }
}
