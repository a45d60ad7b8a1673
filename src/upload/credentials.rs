//! Where the uploader's AWS credentials come from.
//!
//! This build resolves the reference element's static sources, in its order (kvs-reference.md
//! §1.7): the `access-key`/`secret-key`/`session-token` properties (their sentinel defaults mean
//! "unset"), then `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`. When none is
//! set, the error lists what was tried. Secrets are never formatted: `Credentials`' Debug
//! redacts them.

use aws_credential_types::Credentials;

use crate::kvssink::settings::{ACCESS_KEY_SENTINEL, SECRET_KEY_SENTINEL, SESSION_TOKEN_SENTINEL};

/// The credential-related properties, as set.
#[derive(Clone, Default)]
pub struct CredentialProperties {
    pub access_key: String,
    pub secret_key: String,
    pub session_token: String,
}

impl std::fmt::Debug for CredentialProperties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialProperties")
            .field("access_key_set", &(self.access_key != ACCESS_KEY_SENTINEL))
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "could not find any AWS credentials: tried the access-key/secret-key properties and the environment variables AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
)]
pub struct NoCredentials;

/// Resolves static credentials; `env` looks up an environment variable.
pub fn resolve_static(
    props: &CredentialProperties,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Credentials, NoCredentials> {
    let non_empty = |v: Option<String>| v.filter(|s| !s.is_empty());
    let token = if props.session_token != SESSION_TOKEN_SENTINEL && !props.session_token.is_empty()
    {
        Some(props.session_token.clone())
    } else {
        non_empty(env("AWS_SESSION_TOKEN"))
    };
    if props.access_key != ACCESS_KEY_SENTINEL {
        // As the reference: a set access-key is used with whatever secret-key holds.
        let secret = if props.secret_key == SECRET_KEY_SENTINEL {
            non_empty(env("AWS_SECRET_ACCESS_KEY")).unwrap_or_else(|| props.secret_key.clone())
        } else {
            props.secret_key.clone()
        };
        return Ok(Credentials::new(
            props.access_key.clone(),
            secret,
            token,
            None,
            "kvssink-properties",
        ));
    }
    match (
        non_empty(env("AWS_ACCESS_KEY_ID")),
        non_empty(env("AWS_SECRET_ACCESS_KEY")),
    ) {
        (Some(ak), Some(sk)) => Ok(Credentials::new(ak, sk, token, None, "kvssink-environment")),
        _ => Err(NoCredentials),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(map: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = map
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    fn unset() -> CredentialProperties {
        CredentialProperties {
            access_key: ACCESS_KEY_SENTINEL.into(),
            secret_key: SECRET_KEY_SENTINEL.into(),
            session_token: SESSION_TOKEN_SENTINEL.into(),
        }
    }

    #[test]
    fn properties_win_over_environment() {
        let props = CredentialProperties {
            access_key: "AKPROP".into(),
            secret_key: "skprop".into(),
            ..unset()
        };
        let c = resolve_static(
            &props,
            env(&[
                ("AWS_ACCESS_KEY_ID", "AKENV"),
                ("AWS_SECRET_ACCESS_KEY", "skenv"),
                ("AWS_SESSION_TOKEN", "tok"),
            ]),
        )
        .unwrap();
        assert_eq!(c.access_key_id(), "AKPROP");
        assert_eq!(c.secret_access_key(), "skprop");
        assert_eq!(c.session_token(), Some("tok"));
    }

    #[test]
    fn environment_when_properties_unset() {
        let c = resolve_static(
            &unset(),
            env(&[
                ("AWS_ACCESS_KEY_ID", "AKENV"),
                ("AWS_SECRET_ACCESS_KEY", "skenv"),
            ]),
        )
        .unwrap();
        assert_eq!(c.access_key_id(), "AKENV");
        assert_eq!(c.session_token(), None);
        let err = resolve_static(&unset(), env(&[("AWS_ACCESS_KEY_ID", "AKENV")])).unwrap_err();
        assert!(err.to_string().contains("AWS_ACCESS_KEY_ID"));
    }

    #[test]
    fn debug_never_shows_secrets() {
        let c = resolve_static(
            &unset(),
            env(&[
                ("AWS_ACCESS_KEY_ID", "AKENV"),
                ("AWS_SECRET_ACCESS_KEY", "verysecret"),
                ("AWS_SESSION_TOKEN", "tokensecret"),
            ]),
        )
        .unwrap();
        let text = format!("{c:?}");
        assert!(
            !text.contains("verysecret") && !text.contains("tokensecret"),
            "{text}"
        );
    }
}
