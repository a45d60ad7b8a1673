//! The IoT credentials provider's answers (`upload::iot`): a 200 body, the error of any other
//! status, and the `iot-certificate` fields that build the request.
//! Input: a u16 status (LE), then the body; the body, read as `key=value` lines, also feeds
//! `IotConfig::from_fields`.
//! Checks: no panic; accepted credentials are non-empty; a service message is quoted at most
//! 300 characters long.
#![no_main]

use gstkvssink::fuzz_api::iot_status_error;
use gstkvssink::upload::iot::{IotConfig, parse_credentials};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let status = u16::from_le_bytes([data[0], data[1]]);
    let body = &data[2..];
    if let Ok(c) = parse_credentials(body) {
        assert!(!c.credentials.access_key_id().is_empty());
        assert!(!c.credentials.secret_access_key().is_empty());
        assert!(c.credentials.session_token().is_some_and(|t| !t.is_empty()));
        assert_eq!(c.credentials.expiry(), Some(c.expiration));
    }
    let text = String::from_utf8_lossy(body);
    let get = |key: &str| {
        text.lines()
            .filter_map(|l| l.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.to_owned())
    };
    let config = match IotConfig::from_fields(get, "stream") {
        Ok(c) => {
            let url = c.url();
            assert!(url.starts_with("https://"));
            assert!(!c.endpoint.is_empty());
            c
        }
        Err(e) => {
            let _ = e.to_string();
            IotConfig::from_fields(
                |k| {
                    Some(match k {
                        "endpoint" => "c.credentials.iot.us-west-2.amazonaws.com",
                        "cert-path" | "key-path" | "ca-path" => "/nonexistent",
                        "role-aliases" => "alias",
                        _ => return None,
                    })
                    .map(str::to_owned)
                },
                "stream",
            )
            .expect("fixed config")
        }
    };
    let e = iot_status_error(&config, status, body);
    // The longest text the same status gives with a short message of each kind.
    let fixed = [&b""[..], b"thing name", b"certificate"]
        .iter()
        .map(|b| {
            iot_status_error(&config, status, b)
                .to_string()
                .chars()
                .count()
        })
        .max()
        .unwrap_or(0);
    let shown = e.to_string();
    assert!(
        shown.chars().count() <= fixed + 301,
        "service message not truncated"
    );
    let _ = e.is_transient();
});
