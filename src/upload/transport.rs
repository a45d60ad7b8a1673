//! Transport security: the certificate authorities the uploader trusts (the system's roots plus
//! `KVSSINK_CA_CERT_PATH`, a directory of certificates or a PEM file) and the HTTP clients of
//! the control plane and PutMedia built with them. Plain `http://` is allowed only for an
//! endpoint the user configured explicitly, with a warning.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesisvideo::config::SharedHttpClient;
use aws_smithy_http_client::tls::{self, TlsContext, TrustStore};

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

/// The PutMedia client: HTTP/1.1, no idle pool, the system roots plus `ca`.
pub fn putmedia_client(
    ca: Option<&CaBundle>,
    connect_timeout: Duration,
) -> Result<reqwest::Client, reqwest::Error> {
    let mut builder = reqwest::Client::builder()
        .http1_only()
        .tcp_nodelay(true)
        .connect_timeout(connect_timeout)
        .pool_max_idle_per_host(0);
    if let Some(ca) = ca {
        let certs = ca
            .pems
            .iter()
            .filter_map(|p| reqwest::Certificate::from_pem(p).ok());
        builder = builder.tls_certs_merge(certs);
    }
    builder.build()
}

/// The control plane's HTTP client, when `ca` adds authorities to the system's.
pub fn control_client(ca: &CaBundle) -> Result<SharedHttpClient, String> {
    let mut store = TrustStore::default();
    for pem in ca.pems.iter() {
        store.add_pem_certificate(pem.clone());
    }
    let context = TlsContext::builder()
        .with_trust_store(store)
        .build()
        .map_err(|e| e.to_string())?;
    Ok(aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::AwsLc,
        ))
        .tls_context(context)
        .build_https())
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
