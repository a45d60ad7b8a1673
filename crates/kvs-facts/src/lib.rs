//! Facts of the Amazon Kinesis Video Streams service that both the plugin and the local endpoint
//! need, kept once so they cannot disagree (docs/kvs-protocol.md §6.3): the `ErrorCode` names of
//! PutMedia's ERROR ACKs, and the header the AWS IoT credentials provider reads.
//!
//! Only names live here, no behaviour: how an error is handled (plugin) or when it is raised
//! (endpoint) is each side's own code.

/// The HTTP header that carries the IoT thing name to the AWS IoT credentials provider.
pub const IOT_THING_NAME_HEADER: &str = "x-amzn-iot-thingname";

/// The service's `ErrorCode` for a PutMedia ERROR ACK's `ErrorId`; `UNKNOWN_ERROR` for an id the
/// service does not document.
///
/// The names are the service documentation's. 4012 is known only from the producer SDK
/// (too many tracks); it is named after the service's name for that condition.
pub fn ack_error_name(error_id: u64) -> &'static str {
    match error_id {
        4000 => "STREAM_READ_ERROR",
        4001 => "MAX_FRAGMENT_SIZE_REACHED",
        4002 => "MAX_FRAGMENT_DURATION_REACHED",
        4003 => "MAX_CONNECTION_DURATION_REACHED",
        4004 => "FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS",
        4005 => "MORE_THAN_ALLOWED_TRACKS_FOUND",
        4006 => "INVALID_MKV_DATA",
        4007 => "INVALID_PRODUCER_TIMESTAMP",
        4008 => "STREAM_NOT_ACTIVE",
        4009 => "FRAGMENT_METADATA_LIMIT_REACHED",
        4010 => "TRACK_NUMBER_MISMATCH",
        4011 => "FRAMES_MISSING_FOR_TRACK",
        4012 => "MORE_THAN_ALLOWED_TRACKS_FOUND",
        4500 => "KMS_KEY_ACCESS_DENIED",
        4501 => "KMS_KEY_DISABLED",
        4502 => "KMS_KEY_VALIDATION_ERROR",
        4503 => "KMS_KEY_UNAVAILABLE",
        4504 => "KMS_KEY_INVALID_USAGE",
        4505 => "KMS_KEY_INVALID_STATE",
        4506 => "KMS_KEY_NOT_FOUND",
        5000 => "INTERNAL_ERROR",
        5001 => "ARCHIVAL_ERROR",
        _ => "UNKNOWN_ERROR",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_id_has_a_name() {
        for id in (4000..=4012).chain(4500..=4506).chain(5000..=5001) {
            assert_ne!(ack_error_name(id), "UNKNOWN_ERROR", "{id}");
        }
        assert_eq!(ack_error_name(4013), "UNKNOWN_ERROR");
        assert_eq!(ack_error_name(4507), "UNKNOWN_ERROR");
    }
}
