//! The rotating credential file parser (`credential-path`, `upload::credentials::file`).
//! Input: the file's text (the element reads it as UTF-8; other bytes never reach the parser).
//! Checks: no panic; accepted credentials are words of the file and expire after the fixed
//! default lifetime or at the file's expiration.
#![no_main]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gstkvssink::fuzz_api::credential_file;
use gstkvssink::upload::credentials::file::DEFAULT_LIFETIME;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let now = UNIX_EPOCH + Duration::from_secs(1_750_000_000);
    match credential_file(text, now) {
        Ok(c) => {
            let words: Vec<&str> = text.split_whitespace().collect();
            let ak = c.credentials.access_key_id();
            let sk = c.credentials.secret_access_key();
            assert!(!ak.is_empty() && !sk.is_empty());
            assert_eq!(words.first(), Some(&"CREDENTIALS"));
            assert_eq!(words.get(1), Some(&ak));
            assert!(words.contains(&sk));
            if words.len() == 3 {
                assert_eq!(c.expiration, now + DEFAULT_LIFETIME);
                assert!(c.credentials.session_token().is_none());
            } else {
                assert_eq!(words.len(), 5);
                assert_eq!(c.credentials.session_token(), Some(words[4]));
                assert_eq!(c.credentials.expiry(), Some(c.expiration));
                let _ = c.expiration.duration_since(SystemTime::UNIX_EPOCH);
            }
        }
        Err(problem) => assert!(!problem.is_empty()),
    }
});
