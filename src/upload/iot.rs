//! The AWS IoT credentials provider, client side: trades the thing's X.509 certificate for
//! temporary AWS credentials (docs/kvs-protocol.md §1.3, the `iot-certificate` property).
//!
//! `GET https://<endpoint>/role-aliases/<role-alias>/credentials` with the header
//! `x-amzn-iot-thingname: <thing>`, over mutual TLS: the client presents the PEM certificate and
//! key of the thing, and trusts only the CA(s) in `ca-path`. The answer is
//! `{"credentials":{"accessKeyId","secretAccessKey","sessionToken","expiration"}}` with an
//! RFC 3339 expiration. The service's error answers (status + `{"message": …}`) are mapped to
//! [`IotError`] variants that say which file, field or AWS resource to check.
//!
//! Choices, where the reference is stricter or silent:
//! - `ca-path` may have any file name; it must contain PEM certificates (the reference insists on
//!   a `.pem` suffix and fails with 0x15000020 otherwise — a common complaint).
//! - `endpoint` is `host[:port]` as in the reference; an explicit `https://` prefix is accepted,
//!   `http://` is refused (the credentials provider only speaks TLS).
//! - Timeouts are given in seconds as strings (as in the reference); fractions are accepted.
//! - The thing-name header is sent only when the name is not empty (the service treats it as
//!   optional).
//!
//! Nothing here logs or displays a secret: [`IotCredentials`]' `Debug` shows the access key id
//! only, and error messages never quote the response of a successful call.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sdk_kinesisvideo::primitives::{DateTime, DateTimeFormat};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The fields of the `iot-certificate` structure that must be present and not empty (all
/// strings, as the reference accepts them).
pub const REQUIRED_FIELDS: [&str; 5] = [
    "endpoint",
    "cert-path",
    "key-path",
    "ca-path",
    "role-aliases",
];

/// The fields it may have besides; any other is refused.
pub const OPTIONAL_FIELDS: [&str; 3] =
    ["iot-thing-name", "connection-timeout", "completion-timeout"];

pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
pub const DEFAULT_COMPLETION_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest service error message quoted in an [`IotError`].
const MAX_QUOTED: usize = 300;

/// Where and how to ask for credentials. Holds paths and names only (no key material).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IotConfig {
    /// `host[:port]` of the credentials provider (`<prefix>.credentials.iot.<region>.amazonaws.com`).
    pub endpoint: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub ca_path: PathBuf,
    pub role_alias: String,
    pub thing_name: String,
    pub connect_timeout: Duration,
    pub completion_timeout: Duration,
}

impl IotConfig {
    /// Reads the `iot-certificate` structure's string fields through `get` (`None`: absent).
    /// The thing name defaults to `stream_name`; the timeouts (strings of seconds) to 3 s and 5 s.
    /// Unknown keys are the caller's to refuse (see [`REQUIRED_FIELDS`] and [`OPTIONAL_FIELDS`]): `get` cannot list them.
    pub fn from_fields(
        get: impl Fn(&str) -> Option<String>,
        stream_name: &str,
    ) -> Result<Self, IotError> {
        let required = |field: &'static str| -> Result<String, IotError> {
            match get(field) {
                None => Err(IotError::MissingField { field }),
                Some(v) if v.trim().is_empty() => Err(IotError::MissingField { field }),
                Some(v) => Ok(v.trim().to_owned()),
            }
        };
        let endpoint = parse_endpoint(&required("endpoint")?)?;
        let cert_path = PathBuf::from(required("cert-path")?);
        let key_path = PathBuf::from(required("key-path")?);
        let ca_path = PathBuf::from(required("ca-path")?);
        let role_alias = required("role-aliases")?;
        let thing_name = match get("iot-thing-name") {
            None => stream_name.to_owned(),
            Some(v) if v.trim().is_empty() => {
                return Err(IotError::InvalidField {
                    field: "iot-thing-name",
                    value: v,
                    reason: "it is empty; leave it out to use the stream name".into(),
                });
            }
            Some(v) => v.trim().to_owned(),
        };
        let connect_timeout = parse_timeout(&get, "connection-timeout", DEFAULT_CONNECT_TIMEOUT)?;
        let completion_timeout =
            parse_timeout(&get, "completion-timeout", DEFAULT_COMPLETION_TIMEOUT)?;
        Ok(IotConfig {
            endpoint,
            cert_path,
            key_path,
            ca_path,
            role_alias,
            thing_name,
            connect_timeout,
            completion_timeout,
        })
    }

    /// `https://<endpoint>/role-aliases/<role-alias>/credentials`.
    pub fn url(&self) -> String {
        format!(
            "https://{}/role-aliases/{}/credentials",
            self.endpoint,
            path_segment(&self.role_alias)
        )
    }
}

fn parse_endpoint(value: &str) -> Result<String, IotError> {
    let invalid = |reason: &str| IotError::InvalidField {
        field: "endpoint",
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    let lower = value.to_ascii_lowercase();
    let rest = if lower.starts_with("https://") {
        &value["https://".len()..]
    } else if lower.contains("://") {
        return Err(invalid(
            "the credentials provider is reached over HTTPS only: give host[:port] or https://host[:port]",
        ));
    } else {
        value
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains(['/', '?', '#', ' ', '@']) {
        return Err(invalid(
            "expected host[:port], e.g. c1234abcd.credentials.iot.us-west-2.amazonaws.com \
             (aws iot describe-endpoint --endpoint-type iot:CredentialProvider)",
        ));
    }
    Ok(rest.to_owned())
}

fn parse_timeout(
    get: &impl Fn(&str) -> Option<String>,
    field: &'static str,
    default: Duration,
) -> Result<Duration, IotError> {
    let Some(value) = get(field) else {
        return Ok(default);
    };
    let secs: f64 = value.trim().parse().map_err(|_| IotError::InvalidField {
        field,
        value: value.clone(),
        reason: "expected a number of seconds, e.g. \"3\"".into(),
    })?;
    if !secs.is_finite() || secs <= 0.0 || secs > 3600.0 {
        return Err(IotError::InvalidField {
            field,
            value,
            reason: "expected a number of seconds above 0 and at most 3600".into(),
        });
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Temporary credentials from the provider. `Debug` shows no secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IotCredentials {
    /// With `expiry` set to [`IotCredentials::expiration`].
    pub credentials: Credentials,
    pub expiration: SystemTime,
}

/// What went wrong, and what to check.
#[derive(Debug, thiserror::Error)]
pub enum IotError {
    #[error("iot-certificate: the field '{field}' is missing or empty")]
    MissingField { field: &'static str },
    #[error("iot-certificate: invalid {field} '{value}': {reason}")]
    InvalidField {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("iot-certificate: cannot read {field} '{}': {source}", path.display())]
    ReadFile {
        field: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("iot-certificate: {field} '{}' {problem}", path.display())]
    NotPem {
        field: &'static str,
        path: PathBuf,
        problem: String,
    },
    #[error(
        "iot-certificate: the certificate in cert-path '{}' and the key in key-path '{}' cannot be \
         used together ({detail}): check that the key is the certificate's private key",
        cert_path.display(), key_path.display()
    )]
    ClientIdentity {
        cert_path: PathBuf,
        key_path: PathBuf,
        detail: String,
    },
    #[error(
        "the IoT credentials endpoint {endpoint} presented a certificate that the CA in ca-path \
         '{}' does not trust ({detail}): check ca-path (for AWS: the Amazon Root CA, e.g. \
         AmazonRootCA1.pem) and that endpoint is your account's iot:CredentialProvider endpoint",
        ca_path.display()
    )]
    ServerUntrusted {
        endpoint: String,
        ca_path: PathBuf,
        detail: String,
    },
    #[error(
        "the IoT credentials endpoint {endpoint} refused the client certificate ({detail}): check \
         that cert-path '{}' and key-path '{}' are the thing's certificate and key, and that the \
         certificate is active and attached to a policy allowing iot:AssumeRoleWithCertificate",
        cert_path.display(), key_path.display()
    )]
    ClientCertRejected {
        endpoint: String,
        cert_path: PathBuf,
        key_path: PathBuf,
        detail: String,
    },
    #[error(
        "the IoT credentials endpoint denied access to role alias '{role_alias}' (HTTP 403: \
         {message}): the IoT policy attached to the certificate in cert-path '{}' must allow \
         iot:AssumeRoleWithCertificate on this role alias",
        cert_path.display()
    )]
    AccessDenied {
        role_alias: String,
        cert_path: PathBuf,
        message: String,
    },
    #[error(
        "the IoT credentials endpoint refused thing name '{thing_name}' (HTTP 403: {message}): set \
         iot-thing-name to the thing the certificate is attached to (default: the stream name)"
    )]
    ThingNameRejected { thing_name: String, message: String },
    #[error(
        "role alias '{role_alias}' does not exist on {endpoint} (HTTP 404: {message}): check \
         role-aliases (aws iot list-role-aliases) and the endpoint's region"
    )]
    UnknownRoleAlias {
        role_alias: String,
        endpoint: String,
        message: String,
    },
    #[error(
        "role alias '{role_alias}' cannot be used (HTTP 400: {message}): check the IAM role it \
         points to (trust policy for credentials.iot.amazonaws.com, maximum session duration)"
    )]
    RoleAliasMisconfigured { role_alias: String, message: String },
    #[error(
        "the IoT credentials endpoint {endpoint} is unavailable or throttling (HTTP {status}: {message})"
    )]
    Unavailable {
        endpoint: String,
        status: u16,
        message: String,
    },
    #[error(
        "the IoT credentials endpoint {endpoint} did not answer within the {phase} \
         ({after:?})"
    )]
    Timeout {
        endpoint: String,
        /// `connection-timeout` or `completion-timeout`.
        phase: &'static str,
        after: Duration,
    },
    #[error("cannot connect to the IoT credentials endpoint {endpoint}: {detail}")]
    Connect { endpoint: String, detail: String },
    #[error("TLS with the IoT credentials endpoint {endpoint} failed: {detail}")]
    Tls { endpoint: String, detail: String },
    #[error("the IoT credentials endpoint {endpoint} answered HTTP {status}: {message}")]
    UnexpectedStatus {
        endpoint: String,
        status: u16,
        message: String,
    },
    #[error("the IoT credentials endpoint's answer is not usable: {detail}")]
    BadResponse { detail: String },
}

impl IotError {
    /// True when trying again later may succeed (throttling, 5xx, timeouts, connection failures);
    /// false when the configuration or the AWS resources must be fixed first.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            IotError::Unavailable { .. } | IotError::Timeout { .. } | IotError::Connect { .. }
        )
    }
}

/// Asks the credentials provider for credentials. Every wait is bounded by the configured
/// timeouts.
pub async fn fetch(config: &IotConfig) -> Result<IotCredentials, IotError> {
    let tls = client_tls(config)?;
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .https_only(true)
        .connect_timeout(config.connect_timeout)
        .timeout(config.completion_timeout)
        .pool_max_idle_per_host(0)
        .build()
        .map_err(|e| IotError::Tls {
            endpoint: config.endpoint.clone(),
            detail: format!("cannot create the HTTPS client: {e}"),
        })?;
    let mut request = client.get(config.url());
    if !config.thing_name.is_empty() {
        request = request.header(kvs_facts::IOT_THING_NAME_HEADER, &config.thing_name);
    }
    tracing::debug!(endpoint = %config.endpoint, role_alias = %config.role_alias,
        thing_name = %config.thing_name, "requesting IoT credentials");
    let response = request
        .send()
        .await
        .map_err(|e| transport_error(config, &e))?;
    let status = response.status().as_u16();
    let body = response
        .bytes()
        .await
        .map_err(|e| transport_error(config, &e))?;
    if status == 200 {
        let creds = parse_credentials(&body)?;
        tracing::debug!(access_key_id = %creds.credentials.access_key_id(),
            expiration = ?creds.expiration, "IoT credentials received");
        return Ok(creds);
    }
    Err(status_error(config, status, &body))
}

/// Parses a successful answer.
pub fn parse_credentials(body: &[u8]) -> Result<IotCredentials, IotError> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        credentials: Wire,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Wire {
        access_key_id: String,
        secret_access_key: String,
        session_token: String,
        expiration: String,
    }
    // serde_json's messages may quote values (secrets): keep only the kind and position.
    let wire = serde_json::from_slice::<Envelope>(body)
        .map_err(|e| IotError::BadResponse {
            detail: format!(
                "expected {{\"credentials\":{{\"accessKeyId\",\"secretAccessKey\",\"sessionToken\",\"expiration\"}}}} \
                 ({:?} error at line {} column {})",
                e.classify(),
                e.line(),
                e.column()
            ),
        })?
        .credentials;
    for (name, value) in [
        ("accessKeyId", &wire.access_key_id),
        ("secretAccessKey", &wire.secret_access_key),
        ("sessionToken", &wire.session_token),
    ] {
        if value.is_empty() {
            return Err(IotError::BadResponse {
                detail: format!("'{name}' is empty"),
            });
        }
    }
    let expiration = DateTime::from_str(&wire.expiration, DateTimeFormat::DateTimeWithOffset)
        .ok()
        .and_then(|t| SystemTime::try_from(t).ok())
        .ok_or_else(|| IotError::BadResponse {
            detail: format!(
                "'expiration' is not an ISO-8601 date-time: '{}'",
                truncate(&wire.expiration, 64)
            ),
        })?;
    Ok(IotCredentials {
        credentials: Credentials::new(
            wire.access_key_id,
            wire.secret_access_key,
            Some(wire.session_token),
            Some(expiration),
            "iot-credentials-provider",
        ),
        expiration,
    })
}

fn read(field: &'static str, path: &Path) -> Result<Vec<u8>, IotError> {
    std::fs::read(path).map_err(|source| IotError::ReadFile {
        field,
        path: path.to_owned(),
        source,
    })
}

fn pem_certs(field: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, IotError> {
    let bytes = read(field, path)?;
    let not_pem = |problem: &str| IotError::NotPem {
        field,
        path: path.to_owned(),
        problem: problem.to_owned(),
    };
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| not_pem("is not a valid PEM file"))?;
    if certs.is_empty() {
        return Err(not_pem(
            "holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)",
        ));
    }
    Ok(certs)
}

fn client_tls(config: &IotConfig) -> Result<rustls::ClientConfig, IotError> {
    let ca = pem_certs("ca-path", &config.ca_path)?;
    let certs = pem_certs("cert-path", &config.cert_path)?;
    let key_bytes = read("key-path", &config.key_path)?;
    let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|_| IotError::NotPem {
        field: "key-path",
        path: config.key_path.clone(),
        problem: "holds no PEM private key (expected -----BEGIN PRIVATE KEY-----, \
                  -----BEGIN RSA PRIVATE KEY----- or -----BEGIN EC PRIVATE KEY-----)"
            .into(),
    })?;
    drop(key_bytes);

    let mut roots = rustls::RootCertStore::empty();
    for cert in ca {
        roots.add(cert).map_err(|e| IotError::NotPem {
            field: "ca-path",
            path: config.ca_path.clone(),
            problem: format!("holds a certificate that cannot be a trust anchor: {e}"),
        })?;
    }
    let provider = super::transport::crypto_provider();
    // TLS 1.2, which the IoT credentials endpoint supports: the server checks the client
    // certificate inside the handshake, so a refused certificate is reported as such. With
    // TLS 1.3 the refusal comes after the handshake and races the request, and is then seen
    // as a closed connection.
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .map_err(|e| IotError::Tls {
            endpoint: config.endpoint.clone(),
            detail: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| IotError::ClientIdentity {
            cert_path: config.cert_path.clone(),
            key_path: config.key_path.clone(),
            detail: e.to_string(),
        })?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tls)
}

/// Finds a rustls error in a chain (io::Error hides its inner error from `source()`).
fn find_rustls<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(r) = find_rustls(inner)
        {
            return Some(r);
        }
        next = e.source();
    }
    None
}

fn chain_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut next = error.source();
    while let Some(e) = next {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        next = e.source();
    }
    out
}

fn transport_error(config: &IotConfig, e: &reqwest::Error) -> IotError {
    let endpoint = config.endpoint.clone();
    if let Some(tls) = find_rustls(e) {
        use rustls::AlertDescription as A;
        return match tls {
            rustls::Error::InvalidCertificate(c) => IotError::ServerUntrusted {
                endpoint,
                ca_path: config.ca_path.clone(),
                detail: format!("{c:?}"),
            },
            rustls::Error::AlertReceived(
                alert @ (A::BadCertificate
                | A::UnsupportedCertificate
                | A::CertificateRevoked
                | A::CertificateExpired
                | A::CertificateUnknown
                | A::UnknownCA
                | A::AccessDenied
                | A::CertificateRequired
                | A::DecryptError),
            ) => IotError::ClientCertRejected {
                endpoint,
                cert_path: config.cert_path.clone(),
                key_path: config.key_path.clone(),
                detail: format!("TLS alert {alert:?}"),
            },
            other => IotError::Tls {
                endpoint,
                detail: other.to_string(),
            },
        };
    }
    if e.is_timeout() {
        let (phase, after) = if e.is_connect() {
            ("connection-timeout", config.connect_timeout)
        } else {
            ("completion-timeout", config.completion_timeout)
        };
        return IotError::Timeout {
            endpoint,
            phase,
            after,
        };
    }
    IotError::Connect {
        endpoint,
        detail: chain_text(e),
    }
}

fn service_message(body: &[u8]) -> String {
    let from_json = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("message")
                .or_else(|| v.get("Message"))
                .and_then(|m| m.as_str())
                .map(str::to_owned)
        });
    let text = from_json.unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned());
    if text.is_empty() {
        "no message".to_owned()
    } else {
        truncate(&text, MAX_QUOTED)
    }
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

pub(crate) fn status_error(config: &IotConfig, status: u16, body: &[u8]) -> IotError {
    let message = service_message(body);
    let lower = message.to_ascii_lowercase();
    match status {
        403 if lower.contains("thing name") => IotError::ThingNameRejected {
            thing_name: config.thing_name.clone(),
            message,
        },
        403 if lower.contains("certificate") => IotError::ClientCertRejected {
            endpoint: config.endpoint.clone(),
            cert_path: config.cert_path.clone(),
            key_path: config.key_path.clone(),
            detail: format!("HTTP 403: {message}"),
        },
        401 | 403 => IotError::AccessDenied {
            role_alias: config.role_alias.clone(),
            cert_path: config.cert_path.clone(),
            message,
        },
        404 => IotError::UnknownRoleAlias {
            role_alias: config.role_alias.clone(),
            endpoint: config.endpoint.clone(),
            message,
        },
        400 => IotError::RoleAliasMisconfigured {
            role_alias: config.role_alias.clone(),
            message,
        },
        429 | 500..=599 => IotError::Unavailable {
            endpoint: config.endpoint.clone(),
            status,
            message,
        },
        _ => IotError::UnexpectedStatus {
            endpoint: config.endpoint.clone(),
            status,
            message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn fields(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    const BASE: [(&str, &str); 5] = [
        ("endpoint", "c1.credentials.iot.us-west-2.amazonaws.com"),
        ("cert-path", "/certs/thing.pem.crt"),
        ("key-path", "/certs/thing.pem.key"),
        ("ca-path", "/certs/AmazonRootCA1.pem"),
        ("role-aliases", "kvs-role-alias"),
    ];

    fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        let mut v: Vec<_> = BASE
            .iter()
            .filter(|(k, _)| !extra.iter().any(|(e, _)| e == k))
            .copied()
            .collect();
        v.extend_from_slice(extra);
        v
    }

    #[test]
    fn from_fields_defaults() {
        let c = IotConfig::from_fields(fields(&BASE), "cam-1").unwrap();
        assert_eq!(c.endpoint, "c1.credentials.iot.us-west-2.amazonaws.com");
        assert_eq!(c.cert_path, PathBuf::from("/certs/thing.pem.crt"));
        assert_eq!(c.key_path, PathBuf::from("/certs/thing.pem.key"));
        assert_eq!(c.ca_path, PathBuf::from("/certs/AmazonRootCA1.pem"));
        assert_eq!(c.role_alias, "kvs-role-alias");
        assert_eq!(c.thing_name, "cam-1");
        assert_eq!(c.connect_timeout, Duration::from_secs(3));
        assert_eq!(c.completion_timeout, Duration::from_secs(5));
        assert_eq!(
            c.url(),
            "https://c1.credentials.iot.us-west-2.amazonaws.com/role-aliases/kvs-role-alias/credentials"
        );
    }

    #[test]
    fn from_fields_optional_values() {
        let c = IotConfig::from_fields(
            fields(&with(&[
                ("endpoint", "https://127.0.0.1:8443/"),
                ("iot-thing-name", "thing-7"),
                ("connection-timeout", "10"),
                ("completion-timeout", "2.5"),
                ("role-aliases", "a b/c"),
            ])),
            "cam-1",
        )
        .unwrap();
        assert_eq!(c.endpoint, "127.0.0.1:8443");
        assert_eq!(c.thing_name, "thing-7");
        assert_eq!(c.connect_timeout, Duration::from_secs(10));
        assert_eq!(c.completion_timeout, Duration::from_millis(2500));
        assert_eq!(
            c.url(),
            "https://127.0.0.1:8443/role-aliases/a%20b%2Fc/credentials"
        );
    }

    #[test]
    fn from_fields_errors_name_the_field() {
        for missing in REQUIRED_FIELDS {
            let v: Vec<_> = BASE
                .iter()
                .filter(|(k, _)| *k != missing)
                .copied()
                .collect();
            let e = IotConfig::from_fields(fields(&v), "s").unwrap_err();
            assert!(
                matches!(e, IotError::MissingField { field } if field == missing),
                "{e}"
            );
            assert!(e.to_string().contains(missing));
            let e = IotConfig::from_fields(fields(&with(&[(missing, "  ")])), "s").unwrap_err();
            assert!(matches!(e, IotError::MissingField { field } if field == missing));
        }
        for (field, value) in [
            ("connection-timeout", "three"),
            ("connection-timeout", "0"),
            ("completion-timeout", "-1"),
            ("completion-timeout", "NaN"),
            ("endpoint", "http://host:443"),
            ("endpoint", "host/path"),
            ("iot-thing-name", ""),
        ] {
            let e = IotConfig::from_fields(fields(&with(&[(field, value)])), "s").unwrap_err();
            match &e {
                IotError::InvalidField { field: f, .. } => assert_eq!(*f, field, "{e}"),
                other => panic!("{field}={value}: {other:?}"),
            }
            assert!(e.to_string().contains(field), "{e}");
            assert!(!e.is_transient());
        }
    }

    #[test]
    fn parses_the_service_answer() {
        let body = br#"{"credentials":{"accessKeyId":"ASIAEXAMPLE","secretAccessKey":"s3cr3t/KEY","sessionToken":"IQoJb3JpZ2luX2VjEXAMPLE==","expiration":"2023-02-06T05:54:46Z"}}"#;
        let c = parse_credentials(body).unwrap();
        assert_eq!(c.credentials.access_key_id(), "ASIAEXAMPLE");
        assert_eq!(c.credentials.secret_access_key(), "s3cr3t/KEY");
        assert_eq!(
            c.credentials.session_token(),
            Some("IQoJb3JpZ2luX2VjEXAMPLE==")
        );
        let secs = c
            .expiration
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert_eq!(secs, 1_675_662_886);
        assert_eq!(c.credentials.expiry(), Some(c.expiration));
        let debug = format!("{c:?}");
        assert!(!debug.contains("s3cr3t"), "{debug}");
        assert!(!debug.contains("IQoJ"), "{debug}");
        assert!(debug.contains("ASIAEXAMPLE"));

        // Offsets and fractions are ISO-8601 too.
        let body = br#"{"credentials":{"accessKeyId":"A","secretAccessKey":"B","sessionToken":"C","expiration":"2023-02-06T06:54:46.5+01:00"}}"#;
        let c = parse_credentials(body).unwrap();
        assert_eq!(
            c.expiration
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_millis(),
            1_675_662_886_500
        );
    }

    #[test]
    fn bad_answers_are_refused_without_quoting_secrets() {
        for body in [
            &br#"{"credentials":{"accessKeyId":"A","secretAccessKey":"TOPSECRET","sessionToken":"C"}}"#[..],
            br#"{"credentials":{"accessKeyId":"A","secretAccessKey":"TOPSECRET","sessionToken":"C","expiration":"tomorrow"}}"#,
            br#"{"credentials":{"accessKeyId":"","secretAccessKey":"TOPSECRET","sessionToken":"C","expiration":"2023-02-06T05:54:46Z"}}"#,
            br#"{"credentials":"TOPSECRET"}"#,
            br#"{"accessKeyId":"A"}"#,
            b"<html>",
        ] {
            let e = parse_credentials(body).unwrap_err();
            assert!(matches!(e, IotError::BadResponse { .. }), "{e:?}");
            assert!(!e.to_string().contains("TOPSECRET"), "{e}");
            assert!(!e.is_transient());
        }
    }

    #[test]
    fn service_errors_map_to_distinct_variants() {
        let c = IotConfig::from_fields(fields(&BASE), "cam-1").unwrap();
        let e = status_error(&c, 404, br#"{"message":"Role alias does not exist"}"#);
        assert!(matches!(e, IotError::UnknownRoleAlias { .. }));
        assert!(e.to_string().contains("'kvs-role-alias'"), "{e}");
        assert!(e.to_string().contains("Role alias does not exist"));
        let e = status_error(&c, 403, br#"{"message":"Access Denied"}"#);
        assert!(matches!(e, IotError::AccessDenied { .. }));
        assert!(e.to_string().contains("iot:AssumeRoleWithCertificate"));
        let e = status_error(&c, 403, br#"{"message":"Invalid thing name passed"}"#);
        assert!(matches!(e, IotError::ThingNameRejected { .. }));
        assert!(e.to_string().contains("'cam-1'"), "{e}");
        let e = status_error(
            &c,
            403,
            br#"{"message":"Certificate is invalid on this endpoint"}"#,
        );
        assert!(matches!(e, IotError::ClientCertRejected { .. }));
        assert!(e.to_string().contains("/certs/thing.pem.crt"));
        let e = status_error(
            &c,
            400,
            br#"{"message":"Unable to assume the role, or the role to assume does not exist"}"#,
        );
        assert!(matches!(e, IotError::RoleAliasMisconfigured { .. }));
        for status in [429, 500, 503] {
            let e = status_error(&c, status, b"busy");
            assert!(e.is_transient(), "{status}");
            assert!(e.to_string().contains("busy"));
        }
        assert!(!status_error(&c, 404, b"").is_transient());
    }

    #[test]
    fn unreadable_and_non_pem_files_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, b"not a certificate").unwrap();
        let missing = dir.path().join("missing.pem");
        let mut c = IotConfig::from_fields(fields(&BASE), "s").unwrap();
        c.ca_path = missing.clone();
        let e = client_tls(&c).unwrap_err();
        assert!(
            matches!(&e, IotError::ReadFile { field: "ca-path", path, .. } if *path == missing)
        );
        assert!(e.to_string().contains("missing.pem"));
        c.ca_path = junk.clone();
        let e = client_tls(&c).unwrap_err();
        assert!(
            matches!(
                &e,
                IotError::NotPem {
                    field: "ca-path",
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("junk.pem"));
    }
}
