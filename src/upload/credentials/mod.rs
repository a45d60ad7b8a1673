//! Where the uploader's AWS credentials come from, and keeping them fresh.
//!
//! The sources, in the reference element's order (docs/kvs-protocol.md §1.3), then the standard
//! chain; the first one that is configured is the one used:
//! 1. `iot-certificate`: the AWS IoT credentials provider over mutual TLS ([`super::iot`]);
//! 2. the `access-key`/`secret-key`/`session-token` properties (their sentinel defaults mean
//!    "unset");
//! 3. `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`;
//! 4. the `credential-path` file, when it exists ([`file`]);
//! 5. aws-config's default chain: profiles and `AWS_PROFILE`, SSO, web identity, ECS and
//!    instance metadata, `credential_process`.
//!
//! [`KvsCredentials`] caches what its source gave and fetches again shortly before the
//! expiration (38 s before, as the reference, or a quarter of the lifetime for short-lived
//! credentials), or at once after the service refused them as expired. When a refresh fails
//! while the old credentials are still valid, those keep being used. Secrets are never
//! formatted: every Debug here redacts them.

pub mod file;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::{self, ProvideCredentials, future};

use super::iot::{self, IotConfig, IotError};
use crate::kvssink::settings::{ACCESS_KEY_SENTINEL, SECRET_KEY_SENTINEL, SESSION_TOKEN_SENTINEL};

/// Credentials are fetched again at most this long before they expire (the reference's
/// 5 s + 30 s + 3 s).
const REFRESH_MARGIN: Duration = Duration::from_secs(38);
/// The bound on one fetch from the default chain (instance metadata may not answer at all).
const CHAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The credential-related properties, as set.
#[derive(Clone, Default)]
pub struct CredentialProperties {
    pub access_key: String,
    pub secret_key: String,
    pub session_token: String,
    pub credential_path: String,
}

impl std::fmt::Debug for CredentialProperties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialProperties")
            .field("access_key_set", &(self.access_key != ACCESS_KEY_SENTINEL))
            .field("credential_path", &self.credential_path)
            .finish_non_exhaustive()
    }
}

/// Where the credentials come from.
#[derive(Clone)]
pub enum Source {
    Iot(Box<IotConfig>),
    /// From the properties or the environment; never refreshed.
    Static {
        credentials: Credentials,
        origin: &'static str,
    },
    File(PathBuf),
    DefaultChain {
        region: String,
    },
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Source {
    /// Picks the source, in the reference's order; `file_exists` tells whether `credential-path`
    /// names a file that can be opened.
    pub fn select(
        props: &CredentialProperties,
        iot: Option<IotConfig>,
        region: &str,
        env: impl Fn(&str) -> Option<String>,
        file_exists: impl Fn(&str) -> bool,
    ) -> Self {
        if let Some(iot) = iot {
            return Source::Iot(Box::new(iot));
        }
        if let Some((credentials, origin)) = static_credentials(props, &env) {
            return Source::Static {
                credentials,
                origin,
            };
        }
        if !props.credential_path.is_empty() && file_exists(&props.credential_path) {
            return Source::File(PathBuf::from(&props.credential_path));
        }
        Source::DefaultChain {
            region: region.to_owned(),
        }
    }

    /// Names the source for logs and errors (never its secrets).
    pub fn describe(&self) -> String {
        match self {
            Source::Iot(c) => format!(
                "the AWS IoT credentials provider at {} (role alias {})",
                c.endpoint, c.role_alias
            ),
            Source::Static { origin, .. } => (*origin).to_owned(),
            Source::File(p) => format!("the credential file {}", p.display()),
            Source::DefaultChain { .. } => "the AWS default credential chain".to_owned(),
        }
    }

    /// Whether fetching again can give other credentials.
    pub fn refreshable(&self) -> bool {
        !matches!(self, Source::Static { .. })
    }
}

fn static_credentials(
    props: &CredentialProperties,
    env: &impl Fn(&str) -> Option<String>,
) -> Option<(Credentials, &'static str)> {
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
        let origin = "the access-key/secret-key properties";
        return Some((
            Credentials::new(
                props.access_key.clone(),
                secret,
                token,
                None,
                "kvssink-properties",
            ),
            origin,
        ));
    }
    match (
        non_empty(env("AWS_ACCESS_KEY_ID")),
        non_empty(env("AWS_SECRET_ACCESS_KEY")),
    ) {
        (Some(ak), Some(sk)) => Some((
            Credentials::new(ak, sk, token, None, "kvssink-environment"),
            "the environment variables AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY",
        )),
        _ => None,
    }
}

/// Why no credentials could be had; never shows a secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CredentialError {
    #[error(transparent)]
    File(#[from] file::FileError),
    #[error("{0}")]
    Iot(Arc<IotError>),
    #[error(
        "could not find any AWS credentials: tried the iot-certificate property (not set), the access-key/secret-key properties (not set), the environment variables AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (not set), the credential-path file '{credential_path}' (not found), and the AWS default credential chain (profiles, SSO, web identity, container and instance metadata, credential_process): {detail}"
    )]
    NoneFound {
        credential_path: String,
        detail: String,
    },
}

impl CredentialError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            // A file being rewritten may be briefly incomplete.
            CredentialError::File(_) => true,
            CredentialError::Iot(e) => e.is_transient(),
            CredentialError::NoneFound { .. } => false,
        }
    }
}

struct Cached {
    credentials: Credentials,
    /// When to fetch again; `None` never.
    refresh_at: Option<SystemTime>,
    /// When they stop being valid; `None` never.
    expires: Option<SystemTime>,
}

struct Inner {
    source: Source,
    /// For the "tried" list of the default chain's error.
    credential_path: String,
    cached: Mutex<Option<Cached>>,
    fetching: tokio::sync::Mutex<()>,
    chain:
        tokio::sync::OnceCell<aws_config::default_provider::credentials::DefaultCredentialsChain>,
}

/// The uploader's credentials: one source, cached, refreshed before expiry. Cheap to clone;
/// the control-plane SDK client asks it for every call.
#[derive(Clone)]
pub struct KvsCredentials(Arc<Inner>);

impl std::fmt::Debug for KvsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvsCredentials")
            .field("source", &self.0.source)
            .finish_non_exhaustive()
    }
}

impl KvsCredentials {
    pub fn new(source: Source, credential_path: &str) -> Self {
        let cached = match &source {
            Source::Static { credentials, .. } => Some(Cached {
                credentials: credentials.clone(),
                refresh_at: None,
                expires: None,
            }),
            _ => None,
        };
        Self(Arc::new(Inner {
            source,
            credential_path: credential_path.to_owned(),
            cached: Mutex::new(cached),
            fetching: tokio::sync::Mutex::new(()),
            chain: tokio::sync::OnceCell::new(),
        }))
    }

    pub fn source(&self) -> &Source {
        &self.0.source
    }

    /// Valid credentials: the cached ones, or fetched again when they are due.
    pub async fn get(&self) -> Result<Credentials, CredentialError> {
        if let Some(c) = self.fresh(SystemTime::now()) {
            return Ok(c);
        }
        let _one_fetch = self.0.fetching.lock().await;
        let now = SystemTime::now();
        if let Some(c) = self.fresh(now) {
            return Ok(c);
        }
        match self.fetch(now).await {
            Ok(cached) => {
                let credentials = cached.credentials.clone();
                tracing::debug!(
                    source = %self.0.source.describe(),
                    expires = ?cached.expires.map(aws_smithy_types::DateTime::from),
                    "fetched credentials"
                );
                *self.lock() = Some(cached);
                Ok(credentials)
            }
            Err(e) => {
                let still_valid = self.lock().as_ref().and_then(|c| {
                    c.expires
                        .is_none_or(|exp| exp > now)
                        .then(|| c.credentials.clone())
                });
                match still_valid {
                    Some(c) => {
                        tracing::warn!(error = %e, "refreshing the credentials failed; the current ones are still valid");
                        Ok(c)
                    }
                    None => Err(e),
                }
            }
        }
    }

    /// When the credentials in use should be replaced: a PutMedia session signed with them
    /// rotates before then.
    pub fn refresh_at(&self) -> Option<SystemTime> {
        self.lock().as_ref().and_then(|c| c.refresh_at)
    }

    /// The service refused the credentials as expired or unknown: fetch again on the next use.
    pub fn invalidate(&self) {
        if !self.0.source.refreshable() {
            return;
        }
        if let Some(c) = self.lock().as_mut() {
            c.refresh_at = Some(SystemTime::UNIX_EPOCH);
            c.expires = Some(SystemTime::UNIX_EPOCH);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Cached>> {
        self.0.cached.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fresh(&self, now: SystemTime) -> Option<Credentials> {
        self.lock().as_ref().and_then(|c| {
            c.refresh_at
                .is_none_or(|at| at > now)
                .then(|| c.credentials.clone())
        })
    }

    async fn fetch(&self, now: SystemTime) -> Result<Cached, CredentialError> {
        let (credentials, expires) = match &self.0.source {
            Source::Static { credentials, .. } => (credentials.clone(), None),
            Source::File(path) => {
                let f = file::read(path, now)?;
                (f.credentials, Some(f.expiration))
            }
            Source::Iot(config) => {
                let f = iot::fetch(config)
                    .await
                    .map_err(|e| CredentialError::Iot(Arc::new(e)))?;
                (f.credentials, Some(f.expiration))
            }
            Source::DefaultChain { region } => {
                let none_found = |detail: String| CredentialError::NoneFound {
                    credential_path: self.0.credential_path.clone(),
                    detail,
                };
                let chain = self
                    .0
                    .chain
                    .get_or_try_init(|| async {
                        // STS, SSO, container and instance metadata go through our HTTP client:
                        // the SDK's own is not built (sdk_http).
                        let http = super::transport::credential_chain_client().map_err(|e| {
                            none_found(format!("cannot create the HTTP client: {e}"))
                        })?;
                        let conf = aws_config::provider_config::ProviderConfig::without_region()
                            .with_http_client(http);
                        Ok::<_, CredentialError>(
                            aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
                                .configure(conf)
                                .region(aws_config::Region::new(region.clone()))
                                .build()
                                .await,
                        )
                    })
                    .await?;
                let c = tokio::time::timeout(CHAIN_TIMEOUT, chain.provide_credentials())
                    .await
                    .map_err(|_| none_found(format!("no answer within {CHAIN_TIMEOUT:?}")))?
                    .map_err(|e| {
                        none_found(
                            aws_smithy_types::error::display::DisplayErrorContext(&e).to_string(),
                        )
                    })?;
                let expires = c.expiry();
                (c, expires)
            }
        };
        Ok(Cached {
            credentials,
            refresh_at: expires.map(|exp| refresh_time(now, exp)),
            expires,
        })
    }
}

/// [`REFRESH_MARGIN`] before `expires`, or a quarter of the lifetime before it when that is
/// shorter.
fn refresh_time(now: SystemTime, expires: SystemTime) -> SystemTime {
    let lifetime = expires.duration_since(now).unwrap_or_default();
    expires - REFRESH_MARGIN.min(lifetime / 4)
}

impl ProvideCredentials for KvsCredentials {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(async move {
            self.get()
                .await
                .map_err(provider::error::CredentialsError::provider_error)
        })
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
            credential_path: ".kvs/credential".into(),
        }
    }

    fn select(props: &CredentialProperties, e: &[(&str, &str)], file: bool) -> Source {
        Source::select(props, None, "us-west-2", env(e), |_| file)
    }

    fn static_of(s: &Source) -> &Credentials {
        match s {
            Source::Static { credentials, .. } => credentials,
            other => panic!("not static: {other:?}"),
        }
    }

    #[test]
    fn properties_win_over_environment_and_file() {
        let props = CredentialProperties {
            access_key: "AKPROP".into(),
            secret_key: "skprop".into(),
            ..unset()
        };
        let s = select(
            &props,
            &[
                ("AWS_ACCESS_KEY_ID", "AKENV"),
                ("AWS_SECRET_ACCESS_KEY", "skenv"),
                ("AWS_SESSION_TOKEN", "tok"),
            ],
            true,
        );
        let c = static_of(&s);
        assert_eq!(c.access_key_id(), "AKPROP");
        assert_eq!(c.secret_access_key(), "skprop");
        assert_eq!(c.session_token(), Some("tok"));
    }

    #[test]
    fn environment_then_file_then_default_chain() {
        let s = select(
            &unset(),
            &[
                ("AWS_ACCESS_KEY_ID", "AKENV"),
                ("AWS_SECRET_ACCESS_KEY", "skenv"),
            ],
            true,
        );
        assert_eq!(static_of(&s).access_key_id(), "AKENV");
        assert_eq!(static_of(&s).session_token(), None);
        // Both variables are needed.
        let s = select(&unset(), &[("AWS_ACCESS_KEY_ID", "AKENV")], true);
        assert!(matches!(s, Source::File(ref p) if p == std::path::Path::new(".kvs/credential")));
        let s = select(&unset(), &[], false);
        assert!(matches!(s, Source::DefaultChain { .. }), "{s:?}");
        assert!(!s.refreshable() || matches!(s, Source::DefaultChain { .. }));
    }

    #[test]
    fn debug_never_shows_secrets() {
        let s = select(
            &unset(),
            &[
                ("AWS_ACCESS_KEY_ID", "AKENV"),
                ("AWS_SECRET_ACCESS_KEY", "verysecret"),
                ("AWS_SESSION_TOKEN", "tokensecret"),
            ],
            false,
        );
        let k = KvsCredentials::new(s.clone(), ".kvs/credential");
        for text in [
            format!("{s:?}"),
            format!("{k:?}"),
            format!("{:?}", static_of(&s)),
        ] {
            assert!(
                !text.contains("verysecret") && !text.contains("tokensecret"),
                "{text}"
            );
        }
    }

    #[test]
    fn refresh_margin_is_38_s_or_a_quarter_of_short_lifetimes() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let hour = now + Duration::from_secs(3600);
        assert_eq!(refresh_time(now, hour), hour - Duration::from_secs(38));
        let short = now + Duration::from_secs(20);
        assert_eq!(refresh_time(now, short), short - Duration::from_secs(5));
        assert_eq!(refresh_time(now, now), now);
    }

    #[tokio::test]
    async fn a_file_is_read_again_when_due_and_after_invalidate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credential");
        let expiration =
            aws_smithy_types::DateTime::from(SystemTime::now() + Duration::from_secs(3600))
                .fmt(aws_smithy_types::date_time::Format::DateTime)
                .unwrap();
        std::fs::write(&path, format!("CREDENTIALS AK1 {expiration} sk1 tok1")).unwrap();
        let k = KvsCredentials::new(Source::File(path.clone()), "x");
        assert_eq!(k.get().await.unwrap().access_key_id(), "AK1");
        let due = k.refresh_at().unwrap();
        assert!(due > SystemTime::now() + Duration::from_secs(3500));
        std::fs::write(&path, "CREDENTIALS AK2 sk2").unwrap();
        assert_eq!(
            k.get().await.unwrap().access_key_id(),
            "AK1",
            "cached until due"
        );
        k.invalidate();
        assert_eq!(k.get().await.unwrap().access_key_id(), "AK2");
        // A broken rewrite after expiry is an error naming the file; before, the old ones stay.
        std::fs::write(&path, "CREDENTIALS").unwrap();
        k.invalidate();
        let e = k.get().await.unwrap_err();
        assert!(
            e.to_string().contains("credential") && e.is_transient(),
            "{e}"
        );
    }
}
