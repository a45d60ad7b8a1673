//! The local endpoint's control plane (`kvs_local_endpoint` control plane: JSON bodies of CreateStream,
//! DescribeStream, ListStreams, DeleteStream, TagStream, UntagStream, ListTagsForStream,
//! GetDataEndpoint) on one registry, one request after the other.
//! Input: requests framed as `[len u16 LE][op byte][JSON body]`.
//! Checks: no panic; answers are JSON objects; errors carry a 4xx status and an error type.
#![no_main]

use gst_plugin_kvssink_fuzz::frames;
use kvs_local_endpoint::fuzz_api::ControlPlane;
use libfuzzer_sys::fuzz_target;

const PATHS: [&str; 9] = [
    "/createStream",
    "/describeStream",
    "/listStreams",
    "/deleteStream",
    "/tagStream",
    "/untagStream",
    "/listTagsForStream",
    "/getDataEndpoint",
    "/putMedia",
];

fuzz_target!(|data: &[u8]| {
    let cp = ControlPlane::default();
    for req in frames(data) {
        let Some((&op, body)) = req.split_first() else {
            continue;
        };
        let path = PATHS[usize::from(op) % PATHS.len()];
        match cp.request(path, body) {
            None => assert_eq!(path, "/putMedia"),
            Some((_, Ok(v))) => assert!(v.is_object(), "answer is not a JSON object: {v}"),
            Some((_, Err(e))) => {
                assert!((400..500).contains(&e.status), "status {}", e.status);
                assert!(!e.error_type.is_empty());
            }
        }
    }
});
