//! Entry points for the cargo-fuzz targets in `fuzz/` into parsers that are not public
//! (feature `fuzzing`; not a stable API). Public parsers (`upload::ack`, `media::codec`, `media::fragment_metadata`,
//! `upload::iot::parse_credentials`, and the local endpoint's `mkv` and `sigv4`) are fuzzed directly.

use std::time::SystemTime;

use crate::upload::credentials::file::{FileCredentials, parse};
use crate::upload::iot::{IotConfig, IotError, status_error};

/// The credential file parser (`credential-path`) on the file's text, without the file.
pub fn credential_file(text: &str, now: SystemTime) -> Result<FileCredentials, String> {
    parse(text, now)
}

/// How a non-200 answer of the IoT credentials provider becomes an error.
pub fn iot_status_error(config: &IotConfig, status: u16, body: &[u8]) -> IotError {
    status_error(config, status, body)
}
