//! Transport security: the certificate authorities the uploader trusts (the system's roots plus
//! `KVSSINK_CA_CERT_PATH`, a directory of certificates or a PEM file) and the HTTP clients of
//! the control plane and PutMedia built with them. Plain `http://` is allowed only for an
//! endpoint the user configured explicitly, with a warning.
//!
//! ## Pinned self-signed certificates
//! `openssl req -x509 …` makes a self-signed certificate marked as a CA (basicConstraints
//! CA:TRUE); servers of private setups present it as their own certificate. The WebPKI rules
//! refuse a CA certificate as a server's (`CaUsedAsEndEntity`); the C++ element (OpenSSL) takes
//! it when it is in its CA file. We accept it only as an exact pin: the server presents, byte for
//! byte, a certificate of `KVSSINK_CA_CERT_PATH`. Every other check stays: its validity period
//! (checked by webpki before the CA flag), the host name (checked here), the handshake signature.
//! Any other certificate goes through the WebPKI rules unchanged. Errors name the rule that
//! refused the certificate ([`refusal`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesisvideo::config::SharedHttpClient;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

/// Extra certificate authorities from `KVSSINK_CA_CERT_PATH`.
#[derive(Clone)]
pub struct CaBundle {
    path: PathBuf,
    /// Each certificate as one PEM block.
    pems: Arc<Vec<Vec<u8>>>,
}

impl std::fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaBundle")
            .field("path", &self.path)
            .field("certificates", &self.pems.len())
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "KVSSINK_CA_CERT_PATH={path}: {problem}; set it to a directory of PEM CA certificates or to a PEM file, or unset it to use only the system's certificate authorities"
)]
pub struct CaError {
    pub path: String,
    pub problem: String,
}

impl CaBundle {
    /// Loads every certificate of `path`: a PEM file, or the PEM files of a directory.
    pub fn load(path: &Path) -> Result<Self, CaError> {
        let error = |problem: String| CaError {
            path: path.display().to_string(),
            problem,
        };
        let meta = std::fs::metadata(path).map_err(|e| error(e.to_string()))?;
        let files: Vec<PathBuf> = if meta.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| error(e.to_string()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect();
            files.sort();
            files
        } else {
            vec![path.to_owned()]
        };
        let mut pems = Vec::new();
        for file in &files {
            let Ok(bytes) = std::fs::read(file) else {
                continue;
            };
            pems.extend(pem_certificates(&bytes));
        }
        if pems.is_empty() {
            return Err(error(if meta.is_dir() {
                "the directory holds no PEM certificate".to_owned()
            } else {
                "the file holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_owned()
            }));
        }
        for pem in &pems {
            reqwest::Certificate::from_pem(pem)
                .map_err(|e| error(format!("a certificate cannot be read: {e}")))?;
        }
        Ok(Self {
            path: path.to_owned(),
            pems: Arc::new(pems),
        })
    }

    pub fn len(&self) -> usize {
        self.pems.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pems.is_empty()
    }
}

/// The `-----BEGIN CERTIFICATE-----` blocks of a PEM text.
fn pem_certificates(bytes: &[u8]) -> Vec<Vec<u8>> {
    const BEGIN: &[u8] = b"-----BEGIN CERTIFICATE-----";
    const END: &[u8] = b"-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = bytes;
    while let Some(start) = memchr::memmem::find(rest, BEGIN) {
        let Some(len) = memchr::memmem::find(&rest[start..], END) else {
            break;
        };
        let end = start + len + END.len();
        let mut block = rest[start..end].to_vec();
        block.push(b'\n');
        out.push(block);
        rest = &rest[end..];
    }
    out
}

impl CaBundle {
    fn certificates(&self) -> Vec<CertificateDer<'static>> {
        self.pems
            .iter()
            .filter_map(|p| CertificateDer::from_pem_slice(p).ok())
            .collect()
    }

    /// TLS settings that trust the system's roots and this bundle, and take a certificate of
    /// the bundle as an exact pin (see the module docs).
    pub fn tls_config(&self) -> Result<rustls::ClientConfig, String> {
        tls_config(Some(self))
    }
}

/// The crypto of every TLS connection of the element (PutMedia, control plane, credential
/// providers, IoT): one provider, ring, compiled in once (Cargo.toml says why ring). Never
/// installed as the process default: the host application may use rustls too.
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS settings for the AWS endpoints: the system's certificate authorities plus `ca`'s, whose
/// certificates are also taken as exact pins (module docs). HTTP/1.1 only, TLS 1.2 and 1.3.
pub fn tls_config(ca: Option<&CaBundle>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    let system = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(system.certs);
    let pins = ca.map(CaBundle::certificates).unwrap_or_default();
    roots.add_parsable_certificates(pins.iter().cloned());
    if roots.is_empty() {
        return Err(
            "no certificate authority could be loaded from the system (SSL_CERT_FILE, SSL_CERT_DIR or the distribution's CA bundle); install the ca-certificates package or set KVSSINK_CA_CERT_PATH"
                .to_owned(),
        );
    }
    let provider = crypto_provider();
    let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| match ca {
        Some(ca) => format!("KVSSINK_CA_CERT_PATH={}: {e}", ca.path.display()),
        None => e.to_string(),
    })?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let mut config = if pins.is_empty() {
        builder.with_webpki_verifier(webpki).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinningVerifier { webpki, pins }))
            .with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The WebPKI rules, plus the exact pins of `KVSSINK_CA_CERT_PATH` (module docs).
#[derive(Debug)]
struct PinningVerifier {
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
    pins: Vec<CertificateDer<'static>>,
}

impl ServerCertVerifier for PinningVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(other)))
                if matches!(
                    other.0.downcast_ref::<webpki::Error>(),
                    Some(webpki::Error::CaUsedAsEndEntity)
                ) && self.pins.iter().any(|p| p.as_ref() == end_entity.as_ref()) =>
            {
                // webpki checked the validity period before it refused the CA flag.
                let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
                rustls::client::verify_server_name(&parsed, server_name)?;
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// What rule refused a server certificate, from the error text of a failed connection
/// (rustls' "invalid peer certificate: …"), in words a user can act on.
pub fn refusal(detail: &str) -> Option<String> {
    const MARK: &str = "invalid peer certificate: ";
    let at = detail.find(MARK)?;
    let raw = &detail[at + MARK.len()..];
    let rules: [(&[&str], &str); 8] = [
        (
            &["CaUsedAsEndEntity"],
            "the server presents a CA certificate (basicConstraints CA:TRUE, as `openssl req -x509` makes) as its own; that is accepted only as an exact pin: put this very certificate in KVSSINK_CA_CERT_PATH",
        ),
        (
            &["UnknownIssuer"],
            "it is not signed by a certificate authority the element trusts (the system's or KVSSINK_CA_CERT_PATH's)",
        ),
        (
            &["certificate expired", "Expired"],
            "it has expired (its notAfter date is past)",
        ),
        (
            &["not valid yet", "NotValidYet"],
            "it is not valid yet (its notBefore date is in the future; check the device's clock)",
        ),
        (
            &["not valid for name", "NotValidForName"],
            "it does not name the host the element connects to (subjectAltName)",
        ),
        (
            &["BadSignature"],
            "its signature does not verify (a different certificate with the same issuer name?)",
        ),
        (
            &["extended key usage", "InvalidPurpose"],
            "its extended key usage does not allow TLS server authentication",
        ),
        (&["Revoked"], "it is revoked"),
    ];
    let head = raw.split([')', '\n']).next().unwrap_or(raw);
    for (marks, rule) in rules {
        if let Some(mark) = marks.iter().find(|m| head.contains(**m)) {
            return Some(format!("{rule}; rustls: {mark}"));
        }
    }
    Some(head.to_owned())
}

/// The PutMedia client: HTTP/1.1, no idle pool, the system roots plus `ca`.
pub fn putmedia_client(
    ca: Option<&CaBundle>,
    connect_timeout: Duration,
) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .http1_only()
        .tcp_nodelay(true)
        .connect_timeout(connect_timeout)
        .pool_max_idle_per_host(0)
        .tls_backend_preconfigured(tls_config(ca)?)
        .build()
        .map_err(|e| e.to_string())
}

/// The control plane's HTTP client: the TLS settings of PutMedia, through the SDK's HTTP client
/// interface ([`super::sdk_http`]). Like PutMedia, it goes through the proxy of `HTTPS_PROXY` /
/// `HTTP_PROXY` (minus `NO_PROXY`) when one is set.
pub fn control_client(
    ca: Option<&CaBundle>,
    connect_timeout: Duration,
) -> Result<SharedHttpClient, String> {
    let client = reqwest::Client::builder()
        .http1_only()
        .tcp_nodelay(true)
        .connect_timeout(connect_timeout)
        .tls_backend_preconfigured(tls_config(ca)?)
        .build()
        .map_err(|e| e.to_string())?;
    Ok(super::sdk_http::shared(client))
}

/// The HTTP client of aws-config's credential providers (STS, SSO, ECS container and instance
/// metadata): the system's certificate authorities, and no proxy — as the SDK's own client,
/// which it replaces: instance and container metadata live on link-local and loopback
/// addresses a proxy cannot reach.
pub fn credential_chain_client() -> Result<SharedHttpClient, String> {
    let client = reqwest::Client::builder()
        .http1_only()
        .tcp_nodelay(true)
        .no_proxy()
        .tls_backend_preconfigured(tls_config(None)?)
        .build()
        .map_err(|e| e.to_string())?;
    Ok(super::sdk_http::shared(client))
}

/// Whether `url` may be used: `https://` always; `http://` only when `explicit` (the user
/// pointed the element at it), so that credentials signatures never travel in clear text to
/// an endpoint nobody chose.
pub fn check_scheme(url: &str, explicit: bool) -> Result<bool, String> {
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("https://") {
        Ok(false)
    } else if lower.starts_with("http://") && explicit {
        Ok(true)
    } else if lower.starts_with("http://") {
        Err(format!(
            "refusing plain HTTP to {url}: only an endpoint configured explicitly (CONTROL_PLANE_URI, AWS_ENDPOINT_URL_KINESIS_VIDEO, AWS_ENDPOINT_URL) may use http://"
        ))
    } else {
        Err(format!("{url} is not an http:// or https:// URL"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PEM-shaped text; only the splitting into blocks is tested with it.
    fn pem_block() -> &'static str {
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    }

    #[test]
    fn pem_blocks_are_split() {
        let two = format!("junk\n{}\n{}", pem_block(), pem_block());
        assert_eq!(pem_certificates(two.as_bytes()).len(), 2);
        assert!(pem_certificates(b"no certificates").is_empty());
    }

    #[test]
    fn wrong_paths_say_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let e = CaBundle::load(&dir.path().join("missing.pem")).unwrap_err();
        assert!(
            e.to_string().contains("missing.pem") && e.to_string().contains("unset it"),
            "{e}"
        );
        let e = CaBundle::load(dir.path()).unwrap_err();
        assert!(e.problem.contains("no PEM certificate"), "{e}");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "hello").unwrap();
        let e = CaBundle::load(&junk).unwrap_err();
        assert!(e.problem.contains("BEGIN CERTIFICATE"), "{e}");
    }

    #[test]
    fn refusals_name_the_rule() {
        let expired = "DescribeStream: dispatch failure (invalid peer certificate: certificate expired: verification time 1764 (UNIX), but certificate is not valid after 1609 (155 seconds ago))";
        let r = refusal(expired).unwrap();
        assert_eq!(
            r,
            "it has expired (its notAfter date is past); rustls: certificate expired"
        );
        let r =
            refusal("x: invalid peer certificate: UnknownIssuer (DispatchFailure(...))").unwrap();
        assert_eq!(
            r,
            "it is not signed by a certificate authority the element trusts (the system's or KVSSINK_CA_CERT_PATH's); rustls: UnknownIssuer"
        );
        let r = refusal("invalid peer certificate: Other(OtherError(CaUsedAsEndEntity))").unwrap();
        assert!(r.contains("exact pin"), "{r}");
        assert_eq!(refusal("connection refused"), None);
    }

    #[test]
    fn plain_http_only_when_explicit() {
        assert_eq!(
            check_scheme("https://kinesisvideo.us-west-2.amazonaws.com", false),
            Ok(false)
        );
        assert_eq!(check_scheme("http://127.0.0.1:4566", true), Ok(true));
        assert!(check_scheme("http://s-123.kinesisvideo.amazonaws.com", false).is_err());
        assert!(check_scheme("ftp://x", true).is_err());
    }
}
