//! The PutMedia ACK stream parser (`gstkvssink::upload::ack`) fed in arbitrary chunks.
//! Input: one byte choosing the chunking, then the response body.
//! Checks: no panic; the pending tail stays bounded; the ACKs found do not depend on how the
//! body was chunked; ERROR ACKs always carry an ErrorId.
#![no_main]

use gst_plugin_kvssink_fuzz::chunks;
use gstkvssink::upload::ack::{Ack, AckError, AckEvent, AckParser, MAX_PENDING_BYTES, classify_error};
use libfuzzer_sys::fuzz_target;

fn oks(v: &[Result<Ack, AckError>]) -> Vec<Ack> {
    v.iter().filter_map(|r| r.as_ref().ok()).cloned().collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, body)) = data.split_first() else {
        return;
    };
    let mut parser = AckParser::new();
    let mut chunked = Vec::new();
    for c in chunks(seed, body) {
        chunked.extend(parser.push(c));
        assert!(parser.pending_len() <= MAX_PENDING_BYTES);
    }
    let whole = AckParser::new().push(body);
    if body.len() <= MAX_PENDING_BYTES {
        assert_eq!(oks(&whole), oks(&chunked), "chunking changed the ACKs");
    }
    for ack in oks(&chunked) {
        if ack.event == AckEvent::Error {
            let id = ack.error_id.expect("ERROR ACK without ErrorId");
            let _ = classify_error(id);
        }
        let _ = ack.event.as_str();
    }
});
