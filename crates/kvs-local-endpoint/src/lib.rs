//! A local KVS-compatible endpoint: the stand-in for Amazon Kinesis Video Streams that the tests,
//! the demo and users without an AWS account run against. Its own crate in the workspace, it
//! shares no code with the plugin beyond the service's names in `kvs-facts`.
//!
//! Owns: the public API ([`LocalEndpoint`], [`Config`], [`Credentials`]) and the endpoint's life:
//! binding, the tokio runtime it runs on, optional TLS with a generated certificate, shutdown.
//! The parts:
//! - [`sigv4`]: SigV4 verification of every request;
//! - `control`: the restJson1 control plane (Create/Describe/List/Delete/Tag/Untag/
//!   ListTagsForStream, GetDataEndpoint returning this server's URL for every API it serves);
//! - `putmedia` + [`mkv`]: `POST /putMedia`, full duplex, MKV split into fragments incrementally,
//!   BUFFERING/RECEIVED/PERSISTED/IDLE/ERROR ACKs and the service's rules;
//! - `media`: GetMedia (`POST /getMedia`, every start selector): stored fragments, then the live
//!   tail, each fragment a Matroska chunk with the service's tags (`chunk`), the fragment being
//!   received included, block by block as it arrives (`live`: what PutMedia publishes);
//! - `archive`: ListFragments (persisted fragments, paged) and GetMediaForFragmentList;
//! - [`faults`]: fault injection; `model`: streams and what arrived; `store`: fragments on disk as
//!   playable `.mkv`;
//! - `hls` + `remux`: playback of what is stored — GetHLSStreamingSessionURL (LIVE, LIVE_REPLAY,
//!   ON_DEMAND; fMP4 segments remuxed from the stored fragments with GStreamer) and GetClip (MP4);
//!   `page`: the page at `/_local/` (streams, fragments, ACKs, a live Media Source Extensions
//!   player);
//! - [`iot`]: the AWS IoT credentials provider (mutual TLS on a port of its own, [`Config::iot`]),
//!   which mints credentials this endpoint then accepts until they expire.
//!
//! Credentials expire when they are given a lifetime ([`Config::credential_lifetime`],
//! [`LocalEndpoint::add_credentials_expiring`], IoT-minted ones) or by
//! [`Faults::expire_credentials`]: from then on a *new* request signed with them gets 403
//! `ExpiredTokenException`. A PutMedia session that started before keeps streaming: the
//! signature is checked when the request starts, as the service does (a request is
//! authenticated once); the uploader rotates its sessions before its credentials expire anyway.
//!
//! Quiet by default: it logs with `tracing` (targets `kvs_local_endpoint::…`) and never installs a
//! subscriber.
//!
//! Choices where the service is not documented (see the module docs for the details): fragments
//! are ACKed BUFFERING when their Cluster Timecode arrives, RECEIVED when complete (the next
//! top-level element or an end-of-fragment tag), PERSISTED once written to disk; after an ERROR
//! ACK the response ends; the fragment duration limit defaults to the 10 s of the PutMedia API
//! reference (the quota page says 20 s: set [`Limits::max_fragment_duration`]); the service's
//! PutMedia rate limits (5 fragments/s, 12.5 MB/s per stream) are not modelled.
//!
//! By hand: `cargo run --release --bin kvs_local_endpoint --
//! --stream my-stream --verbose` prints the URL and the `export …` lines for a sink (`--help` for
//! the options and command-line faults).
//!
//! ```no_run
//! use kvs_local_endpoint::{Config, LocalEndpoint};
//! let ep = LocalEndpoint::start(Config::default()).unwrap();
//! ep.create_stream("my-stream", 2).unwrap();
//! println!("CONTROL_PLANE_URI={}", ep.url());
//! // … run a pipeline or a client against it …
//! for f in ep.fragments("my-stream") {
//!     println!("{} {:?} {} bytes", f.timecode, f.state, f.size);
//! }
//! ep.shutdown();
//! ```

pub mod ack;
mod archive;
mod chunk;
mod control;
pub mod faults;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzz_api;
mod hls;
pub mod iot;
mod live;
mod media;
pub mod mkv;
mod model;
mod page;
mod putmedia;
mod remux;
mod server;
pub mod sigv4;
mod store;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

pub use ack::{Ack, AckEventType};
pub use faults::{AckDrop, Disconnect, Faults, HttpFault, Trigger};
pub use iot::{
    IOT_OPERATION, IotClientCert, IotEndpointConfig, IotInfo, IotRequestRecord, IotTlsRejection,
};
pub use mkv::Limits;
pub use model::{
    AckRecord, ApiError, FragmentInfo, FragmentState, FrameArrival, RequestRecord, SessionEnd,
    SessionInfo, StreamInfo, StreamStatus,
};
pub use store::StoredLocation;

use faults::KeyEntry;

/// AWS credentials the endpoint accepts.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl Credentials {
    pub fn new(access_key_id: &str, secret_access_key: &str) -> Self {
        Credentials {
            access_key_id: access_key_id.to_owned(),
            secret_access_key: secret_access_key.to_owned(),
            session_token: None,
        }
    }

    /// Requires `x-amz-security-token: token` on every request signed with these credentials.
    pub fn with_session_token(mut self, token: &str) -> Self {
        self.session_token = Some(token.to_owned());
        self
    }
}

impl Default for Credentials {
    fn default() -> Self {
        Credentials::new("AKIDLOCALKVSEXAMPLE", "local-kvs-secret")
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// How to run the endpoint. `Config::default()` is a plain-HTTP endpoint on `127.0.0.1` with an
/// ephemeral port, the service's limits and a temporary storage directory.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to bind (`127.0.0.1:0`: any free port).
    pub bind: SocketAddr,
    /// Region the credential scope must name.
    pub region: String,
    /// Account id in ARNs.
    pub account_id: String,
    pub credentials: Credentials,
    /// Allowed distance between a request's `X-Amz-Date` and now (`None`: not checked).
    pub max_clock_skew: Option<Duration>,
    /// Where persisted fragments are stored; `None`: a temporary directory removed on shutdown.
    pub storage_dir: Option<PathBuf>,
    /// URL GetDataEndpoint returns; `None`: this server's own URL.
    pub advertised_url: Option<String>,
    /// Serve HTTPS with a self-signed certificate generated at start (see
    /// [`LocalEndpoint::ca_certificate_path`]).
    pub tls: bool,
    /// With `tls`: serve this certificate (PEM) and key (PEM, PKCS#8) instead, e.g. one made by
    /// `openssl req -x509`; the CA path then holds this certificate.
    pub tls_identity: Option<(String, String)>,
    /// Fragment limits (size 50 MB, duration 10 s, 3 tracks, frames for every track).
    pub limits: Limits,
    /// ERROR 4003 after this long on one PutMedia connection (service: 45 min).
    pub max_connection_duration: Duration,
    /// IDLE ACK period while no data arrives.
    pub idle_ack_interval: Duration,
    /// The response ends after this long without data (service: 30 s).
    pub idle_timeout: Duration,
    /// A new stream is CREATING for this long before it is ACTIVE.
    pub stream_activation_delay: Duration,
    /// A deleted stream is DELETING for this long before it disappears.
    pub stream_deletion_delay: Duration,
    /// Concurrent PutMedia connections per stream before `ConnectionLimitExceededException`.
    pub max_putmedia_connections_per_stream: usize,
    /// Run on this runtime instead of a runtime of the endpoint's own.
    pub runtime: Option<tokio::runtime::Handle>,
    /// Credentials given here and to [`LocalEndpoint::add_credentials`] expire this long after
    /// they are registered (`None`: never; see [`LocalEndpoint::add_credentials_expiring`]).
    pub credential_lifetime: Option<Duration>,
    /// Also serve the AWS IoT credentials provider ([`LocalEndpoint::iot`]).
    pub iot: Option<IotEndpointConfig>,
    /// Read each PutMedia body at most this fast (bits per second), as a device's uplink would
    /// carry it; changeable later with [`Faults::limit_uplink`].
    pub uplink_bps: Option<u64>,
    /// Record when each block of a fragment was read ([`FragmentInfo::frame_arrivals`]).
    pub record_frame_arrivals: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            region: "us-west-2".into(),
            account_id: "123456789012".into(),
            credentials: Credentials::default(),
            max_clock_skew: Some(Duration::from_secs(5 * 60)),
            storage_dir: None,
            advertised_url: None,
            tls: false,
            tls_identity: None,
            limits: Limits::default(),
            max_connection_duration: Duration::from_secs(45 * 60),
            idle_ack_interval: Duration::from_secs(3),
            idle_timeout: Duration::from_secs(30),
            stream_activation_delay: Duration::ZERO,
            stream_deletion_delay: Duration::ZERO,
            max_putmedia_connections_per_stream: 5,
            runtime: None,
            credential_lifetime: None,
            iot: None,
            uplink_bps: None,
            record_frame_arrivals: false,
        }
    }
}

/// Errors starting the endpoint or using its convenience calls.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("service error: {0}")]
    Api(#[from] ApiError),
}

/// A running endpoint. Dropping it shuts it down.
#[derive(Debug)]
pub struct LocalEndpoint {
    service: Arc<server::Service>,
    addr: SocketAddr,
    url: String,
    region: String,
    credentials: Credentials,
    credential_lifetime: Option<Duration>,
    ca_path: Option<PathBuf>,
    iot: Option<Arc<iot::IotService>>,
    shutdown_tx: watch::Sender<bool>,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
}

impl LocalEndpoint {
    /// Binds and starts serving. Works from sync code and from inside a tokio runtime.
    pub fn start(config: Config) -> Result<LocalEndpoint, Error> {
        let (runtime, handle) = match &config.runtime {
            Some(h) => (None, h.clone()),
            None => {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("kvs-local-endpoint")
                    .enable_all()
                    .build()?;
                let h = rt.handle().clone();
                (Some(rt), h)
            }
        };
        let listener = std::net::TcpListener::bind(config.bind)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let store = store::Store::new(config.storage_dir.clone())?;

        let (tls, ca_path) = if config.tls {
            let (acceptor, pem) = tls_acceptor(config.tls_identity.as_ref())?;
            let path = store.dir().join("kvs-local-ca.pem");
            std::fs::write(&path, pem)?;
            (Some(acceptor), Some(path))
        } else {
            (None, None)
        };
        let scheme = if config.tls { "https" } else { "http" };
        let url = format!("{scheme}://{addr}");
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let faults = Faults::default();
        faults.limit_uplink(config.uplink_bps);
        faults
            .keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(KeyEntry {
                credentials: config.credentials.clone(),
                expires_at: config.credential_lifetime.map(|l| SystemTime::now() + l),
            });
        let service = Arc::new(server::Service {
            settings: server::Settings {
                region: config.region.clone(),
                max_clock_skew: config.max_clock_skew,
                limits: config.limits.clone(),
                max_connection_duration: config.max_connection_duration,
                idle_ack_interval: config.idle_ack_interval,
                idle_timeout: config.idle_timeout,
                record_frame_arrivals: config.record_frame_arrivals,
            },
            registry: model::Registry::new(model::RegistrySettings {
                region: config.region.clone(),
                account_id: config.account_id.clone(),
                activation_delay: config.stream_activation_delay,
                deletion_delay: config.stream_deletion_delay,
                max_sessions_per_stream: config.max_putmedia_connections_per_stream,
            }),
            faults: faults.clone(),
            store,
            live: Default::default(),
            data_endpoint: config.advertised_url.clone().unwrap_or_else(|| url.clone()),
            shutdown: shutdown_rx,
            playback: hls::Playback::default(),
        });
        let iot = match &config.iot {
            Some(c) => Some(iot::IotService::start(
                c,
                addr.ip(),
                config.credential_lifetime,
                service.store.dir().join("iot"),
                faults,
                service.shutdown.clone(),
                &handle,
            )?),
            None => None,
        };
        {
            let _guard = handle.enter();
            let listener = tokio::net::TcpListener::from_std(listener)?;
            handle.spawn(server::serve(listener, service.clone(), tls));
        }
        tracing::info!(%url, "local KVS endpoint listening");
        Ok(LocalEndpoint {
            service,
            addr,
            url,
            region: config.region,
            credentials: config.credentials,
            credential_lifetime: config.credential_lifetime,
            ca_path,
            iot,
            shutdown_tx,
            runtime: Mutex::new(runtime),
            handle,
        })
    }

    /// Base URL of the control plane and of PutMedia (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    /// The credentials configured at start.
    pub fn credentials(&self) -> Credentials {
        self.credentials.clone()
    }

    /// Accepts more credentials (e.g. fresh ones after [`Faults::expire_credentials`]), for
    /// [`Config::credential_lifetime`] (`None`: until expired by a fault).
    pub fn add_credentials(&self, credentials: Credentials) {
        self.push_key(credentials, self.credential_lifetime);
    }

    /// Accepts more credentials until `lifetime` from now; then new requests signed with them get
    /// `ExpiredTokenException`.
    pub fn add_credentials_expiring(&self, credentials: Credentials, lifetime: Duration) {
        self.push_key(credentials, Some(lifetime));
    }

    fn push_key(&self, credentials: Credentials, lifetime: Option<Duration>) {
        self.service
            .faults
            .keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(KeyEntry {
                credentials,
                expires_at: lifetime.map(|l| SystemTime::now() + l),
            });
    }

    /// When the credentials with this access key id expire: `None` if unknown, `Some(None)` if
    /// they never do.
    pub fn credential_expiration(&self, access_key_id: &str) -> Option<Option<SystemTime>> {
        self.service
            .faults
            .keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .rev()
            .find(|k| k.credentials.access_key_id == access_key_id)
            .map(|k| k.expires_at)
    }

    /// The IoT credentials endpoint, when [`Config::iot`] is set: its address, the CA, a thing
    /// certificate and key signed by it, and a role alias — the fields of an `iot-certificate`.
    pub fn iot(&self) -> Option<IotInfo> {
        self.iot.as_ref().map(|i| i.info())
    }

    /// A client certificate signed by another CA than the IoT endpoint's (refused in the TLS
    /// handshake); its `ca_path` is that other CA (which does not sign the server either).
    pub fn iot_untrusted_client_cert(&self) -> Option<IotClientCert> {
        self.iot.as_ref().map(|i| i.untrusted_client_cert())
    }

    /// Writes a new client certificate and key named `name` (letters, digits, `-_.`), signed by
    /// the IoT endpoint's CA. Fails when IoT is not configured.
    pub fn iot_mint_client_cert(&self, name: &str) -> Result<IotClientCert, Error> {
        match &self.iot {
            Some(i) => i.mint_client_cert(name),
            None => Err(Error::Tls("the IoT endpoint is not configured".into())),
        }
    }

    /// Requests the IoT endpoint answered (after the TLS handshake), in order.
    pub fn iot_requests(&self) -> Vec<IotRequestRecord> {
        self.iot.as_ref().map(|i| i.requests()).unwrap_or_default()
    }

    /// TLS handshakes the IoT endpoint refused (e.g. client certificates of another CA).
    pub fn iot_tls_rejections(&self) -> Vec<IotTlsRejection> {
        self.iot
            .as_ref()
            .map(|i| i.rejections())
            .unwrap_or_default()
    }

    /// PEM file of the generated certificate when TLS is on (its name ends in `.pem`, as
    /// `KVSSINK_CA_CERT_PATH` requires).
    pub fn ca_certificate_path(&self) -> Option<&Path> {
        self.ca_path.as_deref()
    }

    /// The handle to program faults.
    pub fn faults(&self) -> Faults {
        self.service.faults.clone()
    }

    /// Environment that points a sink at this endpoint (`CONTROL_PLANE_URI`, credentials,
    /// region, and `KVSSINK_CA_CERT_PATH` with TLS).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![
            ("CONTROL_PLANE_URI", self.url.clone()),
            ("AWS_ACCESS_KEY_ID", self.credentials.access_key_id.clone()),
            (
                "AWS_SECRET_ACCESS_KEY",
                self.credentials.secret_access_key.clone(),
            ),
            ("AWS_DEFAULT_REGION", self.region.clone()),
        ];
        if let Some(t) = &self.credentials.session_token {
            v.push(("AWS_SESSION_TOKEN", t.clone()));
        }
        if let Some(p) = &self.ca_path {
            v.push(("KVSSINK_CA_CERT_PATH", p.display().to_string()));
        }
        v
    }

    /// Creates a stream directly (no HTTP), as CreateStream would.
    pub fn create_stream(&self, name: &str, retention_hours: u32) -> Result<StreamInfo, Error> {
        Ok(self.service.registry.create_stream(model::CreateStream {
            name: name.to_owned(),
            data_retention_in_hours: retention_hours,
            ..Default::default()
        })?)
    }

    /// All streams.
    pub fn streams(&self) -> Vec<StreamInfo> {
        self.service.registry.list()
    }

    pub fn stream(&self, name: &str) -> Option<StreamInfo> {
        self.service
            .registry
            .describe(&model::StreamRef::Name(name.to_owned()))
            .ok()
    }

    /// Every fragment that began on the stream, in arrival order.
    pub fn fragments(&self, stream: &str) -> Vec<FragmentInfo> {
        self.service.registry.fragments(stream)
    }

    /// The stored bytes of a persisted fragment (by [`FragmentInfo::index`]).
    pub fn fragment_bytes(&self, stream: &str, index: u64) -> Option<Vec<u8>> {
        let loc = self
            .fragments(stream)
            .into_iter()
            .find(|f| f.index == index)?
            .stored?;
        store::Store::read(&loc).ok()
    }

    /// PutMedia sessions, optionally of one stream.
    pub fn sessions(&self, stream: Option<&str>) -> Vec<SessionInfo> {
        self.service
            .registry
            .sessions()
            .into_iter()
            .filter(|s| stream.is_none_or(|n| s.stream == n))
            .collect()
    }

    /// The request log (no secrets).
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.service.registry.requests()
    }

    /// The playable `.mkv` receiving the stream's persisted fragments.
    pub fn stored_mkv_path(&self, stream: &str) -> Option<PathBuf> {
        self.service.store.current_path(stream)
    }

    pub fn storage_dir(&self) -> &Path {
        self.service.store.dir()
    }

    /// Polls `condition` every 10 ms until it holds or `timeout` passes (blocking).
    pub fn wait_until(&self, timeout: Duration, mut condition: impl FnMut(&Self) -> bool) -> bool {
        let end = Instant::now() + timeout;
        loop {
            if condition(self) {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until `count` fragments of the stream are persisted (blocking).
    pub fn wait_for_persisted(&self, stream: &str, count: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |ep| {
            ep.fragments(stream)
                .iter()
                .filter(|f| f.state == FragmentState::Persisted)
                .count()
                >= count
        })
    }

    /// The runtime the endpoint runs on.
    pub fn runtime_handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    /// Stops serving: open connections are closed, sessions end.
    pub fn shutdown(self) {
        drop(self);
    }

    fn stop(&self) {
        let _ = self.shutdown_tx.send(true);
        let rt = self
            .runtime
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(rt) = rt {
            if tokio::runtime::Handle::try_current().is_ok() {
                rt.shutdown_background();
            } else {
                rt.shutdown_timeout(Duration::from_secs(2));
            }
        }
    }
}

impl Drop for LocalEndpoint {
    fn drop(&mut self) {
        self.stop();
    }
}

fn tls_acceptor(
    identity: Option<&(String, String)>,
) -> Result<(tokio_rustls::TlsAcceptor, String), Error> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    let (pem, cert, key) = match identity {
        Some((cert_pem, key_pem)) => {
            let cert = rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes())
                .map_err(|e| Error::Tls(format!("tls_identity certificate: {e}")))?;
            let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
                .map_err(|e| Error::Tls(format!("tls_identity key: {e}")))?;
            (cert_pem.clone(), cert, key)
        }
        None => {
            let certified = rcgen::generate_simple_self_signed(vec![
                "localhost".to_owned(),
                "127.0.0.1".to_owned(),
            ])
            .map_err(|e| Error::Tls(e.to_string()))?;
            (
                certified.cert.pem(),
                certified.cert.der().clone(),
                rustls::pki_types::PrivateKeyDer::Pkcs8(
                    certified.signing_key.serialize_der().into(),
                ),
            )
        }
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .map_err(|e| Error::Tls(e.to_string()))?;
    Ok((tokio_rustls::TlsAcceptor::from(Arc::new(config)), pem))
}
