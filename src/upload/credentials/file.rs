//! The reference's rotating credential file (`credential-path`): whitespace-separated
//! `CREDENTIALS <access-key> <secret-key>` or
//! `CREDENTIALS <access-key> <expiration ISO-8601> <secret-key> <session-token>`.

use std::path::Path;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_smithy_types::DateTime;
use aws_smithy_types::date_time::Format;

/// The reference refuses files this large.
const MAX_FILE_SIZE: u64 = 10_000;
/// Credentials without an expiration are re-read after this long, as in the reference.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(40 * 60);

/// Why the file gave no credentials; never shows its content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    #[error("cannot read the credential file {path}: {detail}")]
    Unreadable { path: String, detail: String },
    #[error(
        "the credential file {path} is malformed: {problem}; expected `CREDENTIALS <access-key> <secret-key>` or `CREDENTIALS <access-key> <expiration ISO-8601> <secret-key> <session-token>`"
    )]
    Malformed { path: String, problem: String },
}

/// Credentials read from the file, and when they stop being valid (Debug redacts the secrets).
#[derive(Debug)]
pub struct FileCredentials {
    pub credentials: Credentials,
    pub expiration: SystemTime,
}

pub fn read(path: &Path, now: SystemTime) -> Result<FileCredentials, FileError> {
    let unreadable = |detail: String| FileError::Unreadable {
        path: path.display().to_string(),
        detail,
    };
    let size = std::fs::metadata(path)
        .map_err(|e| unreadable(e.to_string()))?
        .len();
    if size >= MAX_FILE_SIZE {
        return Err(unreadable(format!(
            "{size} bytes, the limit is {MAX_FILE_SIZE}"
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| unreadable(e.to_string()))?;
    parse(&text, now).map_err(|problem| FileError::Malformed {
        path: path.display().to_string(),
        problem,
    })
}

/// Parses the text of a credential file.
pub(crate) fn parse(text: &str, now: SystemTime) -> Result<FileCredentials, String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    match words.as_slice() {
        ["CREDENTIALS", ak, sk] => Ok(FileCredentials {
            credentials: Credentials::new(
                *ak,
                *sk,
                None,
                Some(now + DEFAULT_LIFETIME),
                "kvssink-credential-path",
            ),
            expiration: now + DEFAULT_LIFETIME,
        }),
        ["CREDENTIALS", ak, expiration, sk, token] => {
            let expiration: SystemTime = DateTime::from_str(expiration, Format::DateTime)
                .map_err(|_| {
                    "the expiration is not an ISO-8601 date-time such as 2026-11-22T10:00:00Z"
                        .to_owned()
                })?
                .try_into()
                .map_err(|_| "the expiration is out of range".to_owned())?;
            Ok(FileCredentials {
                credentials: Credentials::new(
                    *ak,
                    *sk,
                    Some((*token).to_owned()),
                    Some(expiration),
                    "kvssink-credential-path",
                ),
                expiration,
            })
        }
        ["CREDENTIALS", ..] => Err(format!("{} fields after CREDENTIALS", words.len() - 1)),
        [] => Err("it is empty".to_owned()),
        _ => Err("it does not start with CREDENTIALS".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_form_gets_the_default_lifetime() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let c = parse("CREDENTIALS AKID secret\n", now).unwrap();
        assert_eq!(c.credentials.access_key_id(), "AKID");
        assert_eq!(c.credentials.secret_access_key(), "secret");
        assert_eq!(c.credentials.session_token(), None);
        assert_eq!(c.expiration, now + DEFAULT_LIFETIME);
    }

    #[test]
    fn long_form_has_expiration_and_token() {
        let c = parse(
            "CREDENTIALS AKID 2026-11-22T10:00:00Z secret token",
            SystemTime::now(),
        )
        .unwrap();
        assert_eq!(c.credentials.session_token(), Some("token"));
        assert_eq!(
            c.expiration,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_341_600)
        );
    }

    #[test]
    fn malformed_files_say_what_is_wrong_without_showing_secrets() {
        let now = SystemTime::now();
        assert!(parse("", now).unwrap_err().contains("empty"));
        assert!(
            parse("AKID secret", now)
                .unwrap_err()
                .contains("CREDENTIALS")
        );
        assert!(
            parse("CREDENTIALS AKID", now)
                .unwrap_err()
                .contains("1 fields")
        );
        let e = parse("CREDENTIALS AKID tomorrow topsecret tok", now).unwrap_err();
        assert!(e.contains("ISO-8601") && !e.contains("topsecret"), "{e}");
    }

    #[test]
    fn missing_and_oversized_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let e = read(&missing, SystemTime::now()).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        let big = dir.path().join("big");
        std::fs::write(&big, "CREDENTIALS ".repeat(1000)).unwrap();
        let e = read(&big, SystemTime::now()).unwrap_err();
        assert!(e.to_string().contains("limit"), "{e}");
    }
}
