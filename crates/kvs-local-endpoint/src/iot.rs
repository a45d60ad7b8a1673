//! The AWS IoT credentials provider stand-in: `GET /role-aliases/<alias>/credentials` over mutual
//! TLS, on a port of its own (the real one is a host of its own,
//! `<prefix>.credentials.iot.<region>.amazonaws.com`).
//!
//! Owns: the test PKI generated at start (a CA, a server certificate for `127.0.0.1`/`localhost`,
//! a thing certificate signed by the CA, and an untrusted CA with a thing certificate of its own
//! for negative tests), all written as PEM files under `<storage dir>/iot/`; the TLS listener that
//! requires a client certificate chaining to the CA; minting credentials; the IoT request log.
//!
//! Behaviour, after the service (status and `{"message": …}` bodies as the real provider sends
//! them):
//! - a client certificate not signed by the CA, or none: the TLS handshake fails with an alert
//!   (the server then reads and discards what the client already sent for up to a second, so the
//!   client reads the alert instead of a reset). The real service may instead complete the
//!   handshake and answer 403 `Certificate is invalid on this endpoint`; the client handles both.
//! - unknown role alias: 404 `{"message":"Role alias does not exist"}`;
//! - thing name not in [`IotEndpointConfig::thing_names`] (when that list is not empty): 403
//!   `{"message":"Invalid thing name passed"}`;
//! - injected HTTP faults for the operation [`IOT_OPERATION`] (never matched by unscoped faults):
//!   their status and message, as `{"message": …}`;
//! - otherwise 200 with fresh credentials (`ASIA…` access key id, secret, session token), accepted
//!   by the endpoint's SigV4 verifier until their expiration (rounded up to a whole second, the
//!   precision of the answer), after which requests signed with them get `ExpiredTokenException`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_smithy_types::date_time::{DateTime, Format as DateTimeFormat};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rand::RngExt as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde::Serialize;
use tokio::io::AsyncReadExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::rustls;

use super::faults::{Faults, KeyEntry};
use super::server::{ResponseBody, full};
use super::{Credentials, Error};

/// The operation name IoT requests have in the fault injection ([`super::HttpFault::for_operation`]).
pub const IOT_OPERATION: &str = "GetIotCredentials";

/// How to run the IoT credentials endpoint (see [`super::Config::iot`]).
#[derive(Debug, Clone)]
pub struct IotEndpointConfig {
    /// Address to bind (`None`: the endpoint's IP with any free port).
    pub bind: Option<SocketAddr>,
    /// Role aliases that exist; the first one is the one [`IotInfo::role_alias`] names.
    pub role_aliases: Vec<String>,
    /// Thing names the certificates are attached to; empty: any name (or none) is accepted.
    pub thing_names: Vec<String>,
    /// Lifetime of minted credentials; `None`: [`super::Config::credential_lifetime`], else one
    /// hour (the default `credentialDurationSeconds` of a role alias).
    pub credential_lifetime: Option<Duration>,
}

impl Default for IotEndpointConfig {
    fn default() -> Self {
        IotEndpointConfig {
            bind: None,
            role_aliases: vec![DEFAULT_ROLE_ALIAS.to_owned()],
            thing_names: Vec::new(),
            credential_lifetime: None,
        }
    }
}

/// The role alias the endpoint knows by default.
pub const DEFAULT_ROLE_ALIAS: &str = "kvs-local-role-alias";

/// Default lifetime of minted credentials.
pub const DEFAULT_IOT_CREDENTIAL_LIFETIME: Duration = Duration::from_secs(3600);

/// What a client needs to use the IoT endpoint: the values of an `iot-certificate` structure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IotInfo {
    /// `127.0.0.1:PORT` (no scheme, as the `endpoint` field takes it).
    pub endpoint: String,
    /// PEM of the CA that signed the server certificate (and the thing certificates).
    pub ca_path: PathBuf,
    /// PEM certificate of a thing, signed by the CA.
    pub cert_path: PathBuf,
    /// PEM private key of that certificate.
    pub key_path: PathBuf,
    pub role_alias: String,
}

impl IotInfo {
    /// The `iot-certificate` field `key`, as a string (`None` for optional fields not set here).
    pub fn field(&self, key: &str) -> Option<String> {
        Some(match key {
            "endpoint" => self.endpoint.clone(),
            "cert-path" => self.cert_path.display().to_string(),
            "key-path" => self.key_path.display().to_string(),
            "ca-path" => self.ca_path.display().to_string(),
            "role-aliases" => self.role_alias.clone(),
            _ => return None,
        })
    }

    /// A serialized GstStructure for the `iot-certificate` property, every value typed as a
    /// string (the reference refuses other types), e.g.
    /// `iot-certificate,endpoint=(string)127.0.0.1:40123,cert-path=(string)/tmp/…`.
    pub fn structure_string(&self, thing_name: Option<&str>) -> String {
        let mut fields: Vec<(&str, String)> = [
            "endpoint",
            "cert-path",
            "key-path",
            "ca-path",
            "role-aliases",
        ]
        .into_iter()
        .map(|k| (k, self.field(k).unwrap_or_default()))
        .collect();
        if let Some(t) = thing_name {
            fields.push(("iot-thing-name", t.to_owned()));
        }
        let mut out = String::from("iot-certificate");
        for (k, v) in fields {
            out.push_str(&format!(",{k}=(string){}", gst_string(&v)));
        }
        out
    }
}

/// A value as GstStructure serialization reads it: bare when it only has the characters a bare
/// string may have, else quoted with escapes.
fn gst_string(v: &str) -> String {
    let bare = !v.is_empty()
        && v.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'+' | b'/' | b':' | b'.')
        });
    if bare {
        return v.to_owned();
    }
    let mut out = String::from("\"");
    for c in v.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// A client certificate and its key, as PEM files (plus the CA that signed it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IotClientCert {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// PEM of the CA that signed this certificate.
    pub ca_path: PathBuf,
}

/// One request to the IoT endpoint, as logged (no secrets: the access key id only).
#[derive(Debug, Clone, Serialize)]
pub struct IotRequestRecord {
    pub at: SystemTime,
    pub peer: String,
    pub method: String,
    pub path: String,
    /// The role alias of the path, when the path has the credentials shape.
    pub role_alias: Option<String>,
    /// The `x-amzn-iot-thingname` header.
    pub thing_name: Option<String>,
    pub status: u16,
    /// The `message` of an error answer.
    pub message: Option<String>,
    /// The access key id minted for a successful request.
    pub access_key_id: Option<String>,
    pub expiration: Option<SystemTime>,
}

/// A TLS handshake the IoT endpoint refused (e.g. a client certificate from another CA).
#[derive(Debug, Clone, Serialize)]
pub struct IotTlsRejection {
    pub at: SystemTime,
    pub peer: String,
    pub error: String,
}

struct Pki {
    dir: PathBuf,
    ca: Issuer<'static, KeyPair>,
    ca_path: PathBuf,
    untrusted: IotClientCert,
    thing: IotClientCert,
    server_chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    server_key: rustls::pki_types::PrivateKeyDer<'static>,
    ca_der: rustls::pki_types::CertificateDer<'static>,
}

fn tls_err(e: impl std::fmt::Display) -> Error {
    Error::Tls(e.to_string())
}

fn ca_params(name: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, name);
    p.distinguished_name
        .push(DnType::OrganizationName, "kvssink-rs local endpoint");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

fn client_params(name: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p
}

fn write_private(path: &Path, contents: &str) -> Result<(), Error> {
    std::fs::write(path, contents)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

fn mint_client(
    dir: &Path,
    name: &str,
    issuer: &Issuer<'_, KeyPair>,
    ca_path: &Path,
) -> Result<IotClientCert, Error> {
    let key = KeyPair::generate().map_err(tls_err)?;
    let cert = client_params(name)
        .signed_by(&key, issuer)
        .map_err(tls_err)?;
    let cert_path = dir.join(format!("{name}.cert.pem"));
    let key_path = dir.join(format!("{name}.key.pem"));
    std::fs::write(&cert_path, cert.pem())?;
    write_private(&key_path, &key.serialize_pem())?;
    Ok(IotClientCert {
        cert_path,
        key_path,
        ca_path: ca_path.to_owned(),
    })
}

impl Pki {
    /// `ip`: the address clients connect to, named in the server certificate besides
    /// `127.0.0.1` and `localhost`.
    fn generate(dir: PathBuf, ip: std::net::IpAddr) -> Result<Pki, Error> {
        std::fs::create_dir_all(&dir)?;
        let ca_key = KeyPair::generate().map_err(tls_err)?;
        let ca_p = ca_params("kvs-local IoT test CA");
        let ca_cert = ca_p.self_signed(&ca_key).map_err(tls_err)?;
        let ca_path = dir.join("iot-ca.pem");
        std::fs::write(&ca_path, ca_cert.pem())?;
        let ca = Issuer::new(ca_p, ca_key);

        let server_key = KeyPair::generate().map_err(tls_err)?;
        let mut names = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
        if !ip.is_loopback() {
            names.push(ip.to_string());
        }
        let mut sp = CertificateParams::new(names).map_err(tls_err)?;
        sp.distinguished_name
            .push(DnType::CommonName, "kvs-local IoT credentials endpoint");
        sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = sp.signed_by(&server_key, &ca).map_err(tls_err)?;

        let thing = mint_client(&dir, "iot-thing", &ca, &ca_path)?;

        let other_key = KeyPair::generate().map_err(tls_err)?;
        let other_p = ca_params("kvs-local untrusted test CA");
        let other_cert = other_p.self_signed(&other_key).map_err(tls_err)?;
        let other_ca_path = dir.join("iot-untrusted-ca.pem");
        std::fs::write(&other_ca_path, other_cert.pem())?;
        let other = Issuer::new(other_p, other_key);
        let untrusted = mint_client(&dir, "iot-untrusted-thing", &other, &other_ca_path)?;

        Ok(Pki {
            dir,
            ca,
            ca_path,
            untrusted,
            thing,
            server_chain: vec![server_cert.der().clone()],
            server_key: rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
            ca_der: ca_cert.der().clone(),
        })
    }

    fn acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, Error> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).map_err(tls_err)?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(tls_err)?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(tls_err)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.server_chain.clone(), self.server_key.clone_key())
            .map_err(tls_err)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }
}

/// The running IoT endpoint's state.
pub(crate) struct IotService {
    pub endpoint: String,
    role_aliases: Vec<String>,
    thing_names: Vec<String>,
    lifetime: Duration,
    pki: Mutex<Pki>,
    faults: Faults,
    requests: Mutex<Vec<IotRequestRecord>>,
    rejections: Mutex<Vec<IotTlsRejection>>,
    shutdown: watch::Receiver<bool>,
}

impl std::fmt::Debug for IotService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IotService")
            .field("endpoint", &self.endpoint)
            .field("role_aliases", &self.role_aliases)
            .finish_non_exhaustive()
    }
}

impl IotService {
    /// Generates the PKI under `dir`, binds, and starts serving on the current runtime.
    pub fn start(
        config: &IotEndpointConfig,
        default_ip: std::net::IpAddr,
        default_lifetime: Option<Duration>,
        dir: PathBuf,
        faults: Faults,
        shutdown: watch::Receiver<bool>,
        handle: &tokio::runtime::Handle,
    ) -> Result<Arc<IotService>, Error> {
        let bind = config
            .bind
            .unwrap_or_else(|| SocketAddr::new(default_ip, 0));
        let listener = std::net::TcpListener::bind(bind)?;
        listener.set_nonblocking(true)?;
        let mut addr = listener.local_addr()?;
        // Bound to every interface: clients use the loopback address.
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let pki = Pki::generate(dir, addr.ip())?;
        let acceptor = pki.acceptor()?;
        let service = Arc::new(IotService {
            endpoint: addr.to_string(),
            role_aliases: config.role_aliases.clone(),
            thing_names: config.thing_names.clone(),
            lifetime: config
                .credential_lifetime
                .or(default_lifetime)
                .unwrap_or(DEFAULT_IOT_CREDENTIAL_LIFETIME),
            pki: Mutex::new(pki),
            faults,
            requests: Mutex::new(Vec::new()),
            rejections: Mutex::new(Vec::new()),
            shutdown,
        });
        let _guard = handle.enter();
        let listener = TcpListener::from_std(listener)?;
        handle.spawn(serve(listener, service.clone(), acceptor));
        tracing::info!(endpoint = %service.endpoint, "local IoT credentials endpoint listening");
        Ok(service)
    }

    fn pki(&self) -> std::sync::MutexGuard<'_, Pki> {
        self.pki.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn info(&self) -> IotInfo {
        let pki = self.pki();
        IotInfo {
            endpoint: self.endpoint.clone(),
            ca_path: pki.ca_path.clone(),
            cert_path: pki.thing.cert_path.clone(),
            key_path: pki.thing.key_path.clone(),
            role_alias: self.role_aliases.first().cloned().unwrap_or_default(),
        }
    }

    pub fn untrusted_client_cert(&self) -> IotClientCert {
        self.pki().untrusted.clone()
    }

    pub fn mint_client_cert(&self, name: &str) -> Result<IotClientCert, Error> {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(Error::Tls(format!(
                "certificate name '{name}': use letters, digits, '-', '_' or '.'"
            )));
        }
        let pki = self.pki();
        mint_client(&pki.dir, name, &pki.ca, &pki.ca_path)
    }

    pub fn requests(&self) -> Vec<IotRequestRecord> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn rejections(&self) -> Vec<IotTlsRejection> {
        self.rejections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

async fn serve(
    listener: TcpListener,
    service: Arc<IotService>,
    acceptor: tokio_rustls::TlsAcceptor,
) {
    let mut shutdown = service.shutdown.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                match accepted {
                    Ok((stream, peer)) => {
                        tokio::spawn(connection(stream, peer, service.clone(), acceptor.clone()));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "IoT accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            _ = shutdown.changed() => break,
        }
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    service: Arc<IotService>,
    acceptor: tokio_rustls::TlsAcceptor,
) {
    let _ = stream.set_nodelay(true);
    let tls = match acceptor.accept(stream).into_fallible().await {
        Ok(tls) => tls,
        Err((e, mut io)) => {
            tracing::debug!(%peer, error = %e, "IoT TLS handshake refused");
            service
                .rejections
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(IotTlsRejection {
                    at: SystemTime::now(),
                    peer: peer.to_string(),
                    error: e.to_string(),
                });
            // The alert is sent; read what the client already sent (its request) so that closing
            // does not turn into a reset that could discard the alert on the client's side.
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                let mut buf = [0u8; 4096];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await;
            return;
        }
    };
    let svc = {
        let service = service.clone();
        service_fn(move |req| {
            let service = service.clone();
            async move { Ok::<_, Infallible>(handle(&service, peer, req)) }
        })
    };
    let conn = http1::Builder::new().serve_connection(TokioIo::new(tls), svc);
    tokio::pin!(conn);
    let mut shutdown = service.shutdown.clone();
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "IoT connection ended with an error");
            }
        }
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.as_mut()).await;
        }
    }
}

fn answer(status: u16, body: &serde_json::Value) -> Response<ResponseBody> {
    let mut resp = Response::new(full(
        serde_json::to_vec(body).expect("JSON values serialize"),
    ));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = resp.headers_mut();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    if let Ok(v) = HeaderValue::from_str(&super::server::request_id()) {
        h.insert("x-amzn-requestid", v);
    }
    if status == 403 {
        h.insert(
            "x-amzn-errortype",
            HeaderValue::from_static("AccessDeniedException"),
        );
    }
    resp
}

fn random_string(len: usize, charset: &[u8]) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| charset[rng.random_range(0..charset.len())] as char)
        .collect()
}

/// Rounds up to a whole second (the precision of the `expiration` the service sends).
fn ceil_to_second(t: SystemTime) -> SystemTime {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn handle(
    service: &IotService,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    let path = req.uri().path().to_owned();
    let thing_name = req
        .headers()
        .get(kvs_facts::IOT_THING_NAME_HEADER)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let alias = path
        .strip_prefix("/role-aliases/")
        .and_then(|rest| rest.strip_suffix("/credentials"))
        .filter(|a| !a.is_empty() && !a.contains('/'))
        .map(percent_decode);
    let mut record = IotRequestRecord {
        at: SystemTime::now(),
        peer: peer.to_string(),
        method: req.method().to_string(),
        path: path.clone(),
        role_alias: alias.clone(),
        thing_name: thing_name.clone(),
        status: 200,
        message: None,
        access_key_id: None,
        expiration: None,
    };
    let resp = respond(
        service,
        req.method(),
        alias.as_deref(),
        thing_name.as_deref(),
        &mut record,
    );
    tracing::debug!(%peer, path = %record.path, role_alias = ?record.role_alias,
        thing_name = ?record.thing_name, status = record.status, "IoT request");
    service
        .requests
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(record);
    resp
}

fn respond(
    service: &IotService,
    method: &Method,
    alias: Option<&str>,
    thing_name: Option<&str>,
    record: &mut IotRequestRecord,
) -> Response<ResponseBody> {
    let mut error = |status: u16, message: &str| {
        record.status = status;
        record.message = Some(message.to_owned());
        answer(status, &serde_json::json!({ "message": message }))
    };
    let Some(alias) = alias else {
        return error(404, "Not Found");
    };
    if method != Method::GET {
        return error(405, "Method Not Allowed");
    }
    if let Some(f) = service.faults.take_http_fault(IOT_OPERATION) {
        return error(f.status, &f.message);
    }
    if !service.thing_names.is_empty()
        && !thing_name.is_some_and(|t| service.thing_names.iter().any(|n| n == t))
    {
        return error(403, "Invalid thing name passed");
    }
    if !service.role_aliases.iter().any(|a| a == alias) {
        return error(404, "Role alias does not exist");
    }

    let access_key_id = format!(
        "ASIA{}",
        random_string(16, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
    );
    let secret = random_string(
        40,
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
    );
    let token = format!(
        "IoTLocal{}",
        random_string(
            120,
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
        )
    );
    let expiration = ceil_to_second(SystemTime::now() + service.lifetime);
    let Ok(expiration_text) = DateTime::from(expiration).fmt(DateTimeFormat::DateTime) else {
        return error(500, "Internal error");
    };
    service
        .faults
        .keys
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(KeyEntry {
            credentials: Credentials::new(&access_key_id, &secret).with_session_token(&token),
            expires_at: Some(expiration),
        });
    record.access_key_id = Some(access_key_id.clone());
    record.expiration = Some(expiration);
    answer(
        200,
        &serde_json::json!({
            "credentials": {
                "accessKeyId": access_key_id,
                "secretAccessKey": secret,
                "sessionToken": token,
                "expiration": expiration_text,
            }
        }),
    )
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structure_string_types_every_value_as_a_string() {
        let info = IotInfo {
            endpoint: "127.0.0.1:4443".into(),
            ca_path: "/tmp/x/iot-ca.pem".into(),
            cert_path: "/tmp/x/a b.pem".into(),
            key_path: "/tmp/x/k.pem".into(),
            role_alias: "alias".into(),
        };
        assert_eq!(
            info.structure_string(Some("thing-1")),
            "iot-certificate,endpoint=(string)127.0.0.1:4443,cert-path=(string)\"/tmp/x/a b.pem\",\
             key-path=(string)/tmp/x/k.pem,ca-path=(string)/tmp/x/iot-ca.pem,\
             role-aliases=(string)alias,iot-thing-name=(string)thing-1"
        );
    }

    #[test]
    fn structure_string_parses_as_a_gst_structure_of_strings() {
        gst::init().unwrap();
        let info = IotInfo {
            endpoint: "127.0.0.1:4443".into(),
            ca_path: "/tmp/x y/iot-ca.pem".into(),
            cert_path: "/tmp/x/c\"q.pem".into(),
            key_path: "/tmp/x/k.pem".into(),
            role_alias: "alias".into(),
        };
        let s: gst::Structure = info.structure_string(Some("42")).parse().unwrap();
        assert_eq!(s.name(), "iot-certificate");
        for key in [
            "endpoint",
            "cert-path",
            "key-path",
            "ca-path",
            "role-aliases",
        ] {
            assert_eq!(
                s.get::<String>(key).ok(),
                info.field(key),
                "{key} is a string with the same value"
            );
        }
        assert_eq!(s.get::<String>("iot-thing-name").unwrap(), "42");
    }

    #[test]
    fn expiration_is_rounded_up() {
        let t = UNIX_EPOCH + Duration::from_millis(1_500);
        assert_eq!(ceil_to_second(t), UNIX_EPOCH + Duration::from_secs(2));
        let t = UNIX_EPOCH + Duration::from_secs(7);
        assert_eq!(ceil_to_second(t), t);
        assert_eq!(percent_decode("a%20b%2Fc"), "a b/c");
    }
}
