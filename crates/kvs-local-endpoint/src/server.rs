//! The HTTP server: accept loop, connections, routing, authentication and error answers.
//!
//! Owns: accepting TCP (optionally TLS) connections on the bound address, serving HTTP/1.1 on each
//! with hyper (full duplex: a PutMedia response streams while its request body is still being
//! read), tearing a connection down on a fault (FIN, or RST through `SO_LINGER` 0 on a duplicate
//! of the socket), routing `POST /<operation>` to the control plane, PutMedia or the playback APIs
//! (`media`: GetMedia; `archive`: ListFragments, GetMediaForFragmentList), SigV4 verification of
//! every request, the request log, and the service's error shape: status code,
//! `x-amzn-ErrorType`, `x-amzn-RequestId` and `{"__type", "Message"}`. `GET /_local/…` serves the
//! inspection data as JSON for people and the page (`page`; unsigned, not part of the KVS API).
//! GetHLSStreamingSessionURL and GetClip are signed like the rest and run by `hls`, which also
//! serves a session's unsigned `GET /hls/v1/…` URLs (the session token is their credential).
//!
//! hyper is used directly rather than through axum: the server needs the raw body bytes (for the
//! payload hash), the connection's socket (for RST faults) and one catch-all route; a router
//! would add nothing.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, watch};

use super::control::{self, Operation};
use super::faults::{Disconnect, Faults};
use super::mkv::Limits;
use super::model::{ApiError, Registry, RequestRecord};
use super::putmedia;
use super::sigv4::{self, KeyInfo, RequestParts, VerifyParams};
use super::store::Store;

/// Largest control-plane request body accepted.
const MAX_CONTROL_BODY: usize = 1 << 20;

pub(crate) type ResponseBody = BoxBody<Bytes, Infallible>;

/// Settings the request handlers need.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub region: String,
    pub max_clock_skew: Option<Duration>,
    pub limits: Limits,
    pub max_connection_duration: Duration,
    pub idle_ack_interval: Duration,
    pub idle_timeout: Duration,
    pub record_frame_arrivals: bool,
}

/// Everything the server shares between connections.
#[derive(Debug)]
pub(crate) struct Service {
    pub settings: Settings,
    pub registry: Registry,
    pub faults: Faults,
    pub store: Store,
    /// What PutMedia sessions publish for GetMedia readers.
    pub live: super::live::Live,
    pub data_endpoint: String,
    pub shutdown: watch::Receiver<bool>,
    /// HLS sessions and remuxed fragments (`hls`).
    pub playback: super::hls::Playback,
}

/// Lets a request end its own connection.
#[derive(Debug, Default)]
pub(crate) struct ConnectionKill {
    how: Mutex<Option<Disconnect>>,
    notify: Notify,
}

impl ConnectionKill {
    pub fn kill(&self, how: Disconnect) {
        *self.how.lock().unwrap_or_else(|e| e.into_inner()) = Some(how);
        self.notify.notify_one();
    }

    pub fn is_killed(&self) -> bool {
        self.how.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    async fn wait(&self) -> Disconnect {
        loop {
            if let Some(how) = *self.how.lock().unwrap_or_else(|e| e.into_inner()) {
                return how;
            }
            self.notify.notified().await;
        }
    }
}

/// The response body of a PutMedia request: ACK chunks as the session produces them.
pub(crate) struct ChannelBody(pub mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

pub(crate) async fn serve(
    listener: TcpListener,
    service: Arc<Service>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let mut shutdown = service.shutdown.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                tokio::spawn(connection(stream, peer, service.clone(), tls.clone()));
            }
            _ = shutdown.changed() => break,
        }
    }
    tracing::debug!("accept loop stopped");
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    service: Arc<Service>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let _ = stream.set_nodelay(true);
    // A duplicate of the socket, so a fault can shut it down or make its close a reset while
    // hyper owns the stream.
    let control = match stream.into_std().and_then(|s| Ok((s.try_clone()?, s))) {
        Ok((control, s)) => match TcpStream::from_std(s) {
            Ok(stream) => (control, stream),
            Err(e) => {
                tracing::warn!(error = %e, "cannot register connection");
                return;
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "cannot duplicate connection socket");
            return;
        }
    };
    let (control, stream) = control;
    tracing::debug!(%peer, "connection accepted");
    match tls {
        Some(acceptor) => match acceptor.accept(stream).await {
            Ok(s) => serve_connection(s, peer, service, control).await,
            Err(e) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        },
        None => serve_connection(stream, peer, service, control).await,
    }
}

async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    service: Arc<Service>,
    control: std::net::TcpStream,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let kill = Arc::new(ConnectionKill::default());
    let svc = {
        let service = service.clone();
        let kill = kill.clone();
        service_fn(move |req| {
            let service = service.clone();
            let kill = kill.clone();
            async move { Ok::<_, Infallible>(handle(service, peer, kill, req).await) }
        })
    };
    let conn = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let mut shutdown = service.shutdown.clone();
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
        how = kill.wait() => {
            tracing::debug!(%peer, ?how, "fault ends the connection");
            match how {
                Disconnect::Close => {
                    let _ = control.shutdown(std::net::Shutdown::Both);
                }
                Disconnect::Reset => {
                    let _ = socket2::SockRef::from(&control).set_linger(Some(Duration::ZERO));
                }
            }
        }
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.as_mut()).await;
        }
    }
}

pub(crate) fn request_id() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    let a = t ^ (std::process::id() as u64) << 16;
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        (a >> 32) as u32,
        (a >> 16) as u16,
        (a & 0xfff) as u16,
        (n >> 48) as u16 & 0xfff,
        n & 0xffff_ffff_ffff
    )
}

pub(crate) fn full(body: impl Into<Bytes>) -> ResponseBody {
    BoxBody::new(Full::new(body.into()))
}

fn json_response(
    status: u16,
    request_id: &str,
    body: &serde_json::Value,
) -> Response<ResponseBody> {
    let mut resp = Response::new(full(
        serde_json::to_vec(body).expect("JSON values serialize"),
    ));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = resp.headers_mut();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert("x-amzn-requestid", v);
    }
    resp
}

pub(crate) fn error_response(e: &ApiError, request_id: &str) -> Response<ResponseBody> {
    let body = serde_json::json!({ "__type": e.error_type, "Message": e.message });
    let mut resp = json_response(e.status, request_id, &body);
    let value = format!(
        "{}:http://internal.amazon.com/coral/com.amazonaws.kinesisvideo.v20170930/",
        e.error_type
    );
    if let Ok(v) = HeaderValue::from_str(&value) {
        resp.headers_mut().insert("x-amzn-errortype", v);
    }
    resp
}

/// What every route needs to log the request.
struct LogEntry {
    peer: SocketAddr,
    method: String,
    path: String,
    operation: String,
    stream: Option<String>,
    access_key_id: Option<String>,
}

impl LogEntry {
    fn finish(self, registry: &Registry, status: u16, error_type: Option<&str>) {
        tracing::debug!(
            peer = %self.peer,
            operation = %self.operation,
            stream = ?self.stream,
            status,
            error_type,
            "request"
        );
        registry.log_request(RequestRecord {
            at: SystemTime::now(),
            peer: self.peer.to_string(),
            method: self.method,
            path: self.path,
            operation: self.operation,
            stream: self.stream,
            access_key_id: self.access_key_id,
            status,
            error_type: error_type.map(str::to_owned),
        });
    }
}

async fn handle(
    service: Arc<Service>,
    peer: SocketAddr,
    kill: Arc<ConnectionKill>,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    let rid = request_id();
    let path = req.uri().path().to_owned();
    if req.method() == Method::GET && path.starts_with("/_local/") {
        let query = req.uri().query().unwrap_or("");
        if let Some(r) = super::page::serve(&service, &path, query) {
            return r.unwrap_or_else(|e| error_response(&e, &rid));
        }
        return inspect(&service, &path, &rid);
    }
    if req.method() == Method::GET && path.starts_with(super::hls::HLS_PREFIX) {
        let query = req.uri().query().unwrap_or("").to_owned();
        return super::hls::serve_session(service.clone(), &path, &query)
            .await
            .unwrap_or_else(|e| error_response(&e, &rid));
    }
    let operation = if path == "/putMedia" {
        "PutMedia"
    } else if let Some(op) = playback_operation(&path).or_else(|| super::hls::operation(&path)) {
        op
    } else {
        match Operation::from_path(&path) {
            Some(op) => op.name(),
            None => "Unknown",
        }
    };
    let mut log = LogEntry {
        peer,
        method: req.method().to_string(),
        path: path.clone(),
        operation: operation.to_owned(),
        stream: None,
        access_key_id: None,
    };
    if req.method() != Method::POST || operation == "Unknown" {
        let e = ApiError::new(404, "UnknownOperationException", "");
        log.finish(&service.registry, e.status, Some(&e.error_type));
        return error_response(&e, &rid);
    }

    let (parts, body) = req.into_parts();
    let query = parts.uri.query().unwrap_or("").to_owned();
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();

    let (payload_hash, control_body, body) = if operation == "PutMedia" {
        log.stream = header(&headers, "x-amzn-stream-name").map(str::to_owned);
        (sigv4::EMPTY_SHA256.to_owned(), None, Some(body))
    } else {
        match Limited::new(body, MAX_CONTROL_BODY).collect().await {
            Ok(c) => {
                let bytes = c.to_bytes();
                (sigv4::sha256_hex(&bytes), Some(bytes), None)
            }
            Err(e) => {
                let e = ApiError::new(
                    400,
                    "SerializationException",
                    format!("Cannot read the request body: {e}"),
                );
                log.finish(&service.registry, e.status, Some(&e.error_type));
                return error_response(&e, &rid);
            }
        }
    };

    let header_refs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let parts_for_sig = RequestParts {
        method: "POST",
        path: &path,
        query: &query,
        headers: &header_refs,
        payload_sha256: &payload_hash,
    };
    let now = SystemTime::now();
    let params = VerifyParams {
        service: "kinesisvideo",
        region: Some(&service.settings.region),
        now,
        max_skew: service.settings.max_clock_skew,
    };
    let keys = service.faults.keys.clone();
    let verified = sigv4::verify(&parts_for_sig, &params, |ak| {
        let keys = keys.lock().unwrap_or_else(|e| e.into_inner());
        keys.iter()
            .find(|k| k.credentials.access_key_id == ak)
            .map(|k| KeyInfo {
                secret_access_key: k.credentials.secret_access_key.clone(),
                session_token: k.credentials.session_token.clone(),
                expired: k.is_expired(now),
            })
    });
    match verified {
        Ok(ak) => log.access_key_id = Some(ak),
        Err(e) => {
            tracing::debug!(%peer, operation, error = %e, "authentication failed");
            log.access_key_id = header(&headers, "authorization")
                .and_then(|a| sigv4::parse_authorization(a).ok())
                .map(|a| a.access_key_id);
            let e = ApiError::new(e.status(), e.error_type(), e.to_string());
            log.finish(&service.registry, e.status, Some(&e.error_type));
            drain(body);
            return error_response(&e, &rid);
        }
    }

    if let Some(f) = service.faults.take_http_fault(operation) {
        let e = ApiError::new(f.status, &f.error_type, f.message);
        tracing::debug!(operation, status = e.status, "injected HTTP fault");
        log.finish(&service.registry, e.status, Some(&e.error_type));
        drain(body);
        return error_response(&e, &rid);
    }

    if body.is_some() {
        let mut body = body;
        return match putmedia::start(service.clone(), &headers, &mut body, peer, kill, &rid) {
            Ok(resp) => {
                log.finish(&service.registry, 200, None);
                resp
            }
            Err(e) => {
                log.finish(&service.registry, e.status, Some(&e.error_type));
                drain(body);
                error_response(&e, &rid)
            }
        };
    }

    if playback_operation(&path).is_some() {
        let result =
            control::parse_body(control_body.as_deref().unwrap_or_default()).and_then(|b| {
                log.stream = control::stream_of(&b);
                playback(&service, &path, &b, &rid)
            });
        let (status, error) = match &result {
            Ok(r) => (r.status().as_u16(), None),
            Err(e) => (e.status, Some(e.error_type.as_str())),
        };
        log.finish(&service.registry, status, error);
        return result.unwrap_or_else(|e| error_response(&e, &rid));
    }

    if super::hls::operation(&path).is_some() {
        let result = control::parse_body(control_body.as_deref().unwrap_or_default());
        let result = match result {
            Ok(b) => {
                log.stream = control::stream_of(&b);
                super::hls::handle(service.clone(), operation, b).await
            }
            Err(e) => Err(e),
        };
        return match result {
            Ok(resp) => {
                log.finish(&service.registry, 200, None);
                resp
            }
            Err(e) => {
                log.finish(&service.registry, e.status, Some(&e.error_type));
                error_response(&e, &rid)
            }
        };
    }

    let op = Operation::from_path(&path).expect("checked above");
    let result = control::parse_body(control_body.as_deref().unwrap_or_default()).and_then(|b| {
        log.stream = control::stream_of(&b);
        control::handle(&service.registry, op, &b, &service.data_endpoint)
    });
    match result {
        Ok(v) => {
            log.finish(&service.registry, 200, None);
            json_response(200, &rid, &v)
        }
        Err(e) => {
            log.finish(&service.registry, e.status, Some(&e.error_type));
            error_response(&e, &rid)
        }
    }
}

/// The playback operations of `kinesis-video-media` and `kinesis-video-archived-media` this
/// endpoint serves, by path.
fn playback_operation(path: &str) -> Option<&'static str> {
    Some(match path {
        super::media::PATH => "GetMedia",
        super::archive::LIST_FRAGMENTS => "ListFragments",
        super::archive::GET_MEDIA_FOR_FRAGMENT_LIST => "GetMediaForFragmentList",
        _ => return None,
    })
}

fn playback(
    service: &Arc<Service>,
    path: &str,
    body: &serde_json::Map<String, serde_json::Value>,
    rid: &str,
) -> Result<Response<ResponseBody>, ApiError> {
    match path {
        super::media::PATH => super::media::get_media(service, body, rid),
        super::archive::LIST_FRAGMENTS => {
            super::archive::list_fragments(service, body).map(|v| json_response(200, rid, &v))
        }
        _ => super::archive::get_media_for_fragment_list(service, body, rid),
    }
}

/// Reads and discards a request body the server answered without using, for a while, so the
/// client can read the error answer instead of running into a reset.
fn drain(body: Option<Incoming>) {
    if let Some(mut body) = body {
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                while let Some(Ok(_)) = body.frame().await {}
            })
            .await;
        });
    }
}

pub(crate) fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn inspect(service: &Service, path: &str, rid: &str) -> Response<ResponseBody> {
    let r = &service.registry;
    let value = match path.trim_end_matches('/') {
        "/_local/streams" => serde_json::to_value(r.list()),
        "/_local/sessions" => serde_json::to_value(r.sessions()),
        "/_local/requests" => serde_json::to_value(r.requests()),
        p => match p
            .strip_prefix("/_local/streams/")
            .and_then(|rest| rest.strip_suffix("/fragments"))
        {
            Some(name) => serde_json::to_value(r.fragments(name)),
            None => {
                return error_response(&ApiError::new(404, "UnknownOperationException", ""), rid);
            }
        },
    };
    json_response(200, rid, &value.unwrap_or_default())
}
