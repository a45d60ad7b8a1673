//! One PutMedia session: a chunked request body fed with the session header and then the
//! fragments of the store as they are packed — the open fragment's SimpleBlocks as they come —
//! each fragment closed with the end-of-fragment tag when its end comes (so that it is persisted
//! at once, not when the next fragment begins), while a reader task parses the ACKs of the same
//! connection.
//!
//! The session ends when the service or the network ends it (`Failed`, then the uploader
//! reconnects and replays), when the next fragment needs another header or the session is old
//! (`Rotate`: at a fragment boundary, the body is closed and the outstanding ACKs are awaited
//! first), or when everything has been persisted after `finish` (`Finished`).

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::putmedia::{self, PutMediaParams};
use super::{EventSink, Shared, UploadConfig, UploadEvent, control};
use crate::media::mkv::cluster::end_of_fragment_tags;
use crate::upload::ack::{Ack, AckEvent, AckParser, classify_error, error_code_name};
use crate::upload::store::FragmentState;

/// How long a closing session waits for the next ACK of what it sent (each ACK starts the wait
/// again: on a slow uplink the bytes in the socket buffers take long to drain) before giving up
/// on the connection; what is not persisted is then resent by the next session.
const CLOSE_WAIT: Duration = Duration::from_secs(15);
/// Most bytes of an HTTP error body read for the error message.
const MAX_ERROR_BODY: usize = 4096;
/// A session is not rotated for credentials sooner than this after it starts.
const MIN_SESSION: Duration = Duration::from_secs(2);

pub(super) struct Outcome {
    pub end: End,
    pub persisted_any: bool,
}

pub(super) enum End {
    Finished,
    Rotate,
    Cancelled,
    Failed(Failure),
}

pub(super) struct Failure {
    pub message: String,
    pub status: u32,
    pub fatal: bool,
    /// The service still has what it acknowledged as RECEIVED.
    pub host_alive: bool,
    /// Ask GetDataEndpoint again.
    pub invalidate_endpoint: bool,
    /// Run the whole control-plane setup again (stream deleted, credentials refused).
    pub resetup: bool,
    /// The service refused the signature's credentials: fetch new ones.
    pub credentials_refused: bool,
}

impl Failure {
    fn transient(message: String) -> Self {
        Self {
            message,
            status: control::status::PUT_STREAM_CALL_FAILED,
            fatal: false,
            host_alive: false,
            invalidate_endpoint: false,
            resetup: false,
            credentials_refused: false,
        }
    }
}

enum ReaderMsg {
    Connected,
    Ack(Result<Ack, crate::upload::ack::AckError>),
    HttpError { status: u16, body: String },
    Closed,
    Failed(String),
}

pub(super) async fn run(
    shared: &Shared,
    config: &UploadConfig,
    client: &reqwest::Client,
    endpoint: &str,
    events: &EventSink,
) -> Outcome {
    let mut persisted_any = false;
    let end = run_inner(shared, config, client, endpoint, events, &mut persisted_any).await;
    Outcome { end, persisted_any }
}

async fn run_inner(
    shared: &Shared,
    config: &UploadConfig,
    client: &reqwest::Client,
    endpoint: &str,
    events: &EventSink,
    persisted_any: &mut bool,
) -> End {
    let Some(header) = shared.store().peek_next().map(|f| f.header.clone()) else {
        return End::Rotate;
    };
    // One channel item is parts of a fragment (all it has, or what came since); the body yields
    // them one by one, uncopied, and notes when the last part of a fragment went to the
    // connection.
    let (body_tx, mut body_rx) = mpsc::channel::<BodyItem>(4);
    let sent = SentLog::default();
    let body_sent = sent.clone();
    let stats = shared.stats.clone();
    let mut current = std::collections::VecDeque::<Bytes>::new();
    let mut current_timecode = None;
    let body = reqwest::Body::wrap_stream(futures_util::stream::poll_fn(move |cx| {
        loop {
            if let Some(part) = current.pop_front() {
                stats.part_sent(&part);
                if current.is_empty()
                    && let Some(tc) = current_timecode.take()
                {
                    body_sent.record(tc);
                    stats.fragment_sent(tc);
                }
                return std::task::Poll::Ready(Some(Ok::<Bytes, std::io::Error>(part)));
            }
            match body_rx.poll_recv(cx) {
                std::task::Poll::Ready(Some(item)) => {
                    current.extend(item.parts);
                    current_timecode = item.timecode;
                }
                std::task::Poll::Ready(None) => return std::task::Poll::Ready(None),
                std::task::Poll::Pending => return std::task::Poll::Pending,
            }
        }
    }));
    let params = PutMediaParams {
        endpoint: endpoint.to_owned(),
        stream_name: config.stream.stream_name.clone(),
        user_agent: config.user_agent.clone(),
        region: config.control.region.clone(),
        fragment_acks: config.fragment_acks,
        absolute_fragment_times: config.absolute_fragment_times,
    };
    let credentials = match config.credentials.get().await {
        Ok(c) => c,
        Err(e) => return End::Failed(Failure::transient(e.to_string())),
    };
    // A session signed with credentials that are about to be replaced rotates before then;
    // unless the source has nothing newer yet, and the session keeps its signature.
    let resign_at = config
        .credentials
        .refresh_at()
        .and_then(|at| at.duration_since(SystemTime::now()).ok())
        .filter(|left| *left >= MIN_SESSION)
        .map(|left| Instant::now() + left);
    let request = match putmedia::build_request(&params, &credentials, SystemTime::now(), body) {
        Ok(r) => r,
        Err(e) => {
            return End::Failed(Failure {
                fatal: true,
                ..Failure::transient(e.to_string())
            });
        }
    };
    if body_tx.send(BodyItem::other(header.clone())).await.is_err() {
        return End::Failed(Failure::transient("PutMedia body closed".to_owned()));
    }

    let (reader_tx, mut reader_rx) = mpsc::unbounded_channel();
    let reader = super::RUNTIME.spawn(read_acks(
        client.clone(),
        request,
        reader_tx,
        config.connection_staleness,
    ));
    let _abort_reader = AbortOnDrop(reader.abort_handle());

    let started = Instant::now();
    let end_of_fragment = end_of_fragment_tags();
    let mut body_tx = Some(body_tx);
    let mut closing_since: Option<Instant> = None;
    let mut rotate = false;
    // Since when sent data waits for its first ACK (staleness).
    let mut waiting_since: Option<Instant> = None;
    let mut connected = false;
    // The last fragment sent already ends with the end-of-fragment tag.
    let mut last_sent_ends_stream = false;

    loop {
        // Decide whether this session takes more fragments or closes.
        if let Some(tx) = &body_tx {
            let (next, sending) = {
                let store = shared.store();
                (store.peek_next().map(|f| f.header.clone()), store.sending())
            };
            let finishing = shared.finish_deadline().is_some();
            let close = !sending
                && match &next {
                    Some(h) if *h != header => {
                        tracing::info!("codec data changed: starting a new PutMedia session");
                        rotate = true;
                        true
                    }
                    Some(_) if started.elapsed() >= config.max_session => {
                        tracing::info!("rotating the PutMedia session before the service's limit");
                        rotate = true;
                        true
                    }
                    Some(_) if resign_at.is_some_and(|at| Instant::now() >= at) => {
                        tracing::info!(
                            "rotating the PutMedia session to sign with renewed credentials"
                        );
                        rotate = true;
                        true
                    }
                    None => finishing,
                    Some(_) => false,
                };
            if close {
                if !last_sent_ends_stream {
                    let _ = tx.send(BodyItem::other(end_of_fragment_tags())).await;
                }
                body_tx = None;
                closing_since = Some(Instant::now());
                if !config.fragment_acks {
                    return if rotate { End::Rotate } else { End::Finished };
                }
            }
        }

        let has_next = body_tx.is_some() && shared.store().has_pending();
        let stale_deadline = match (config.connection_staleness, waiting_since) {
            (Some(limit), Some(since)) => Some(since + limit),
            _ => None,
        };
        let close_deadline = closing_since.map(|t| t + CLOSE_WAIT);
        let finish_deadline = shared.finish_deadline();
        let resign_deadline = resign_at.filter(|_| body_tx.is_some());
        let deadline = [
            stale_deadline,
            close_deadline,
            finish_deadline,
            resign_deadline,
        ]
        .into_iter()
        .flatten()
        .min();

        tokio::select! {
            biased;
            _ = shared.cancel.cancelled() => return End::Cancelled,
            msg = reader_rx.recv() => {
                let Some(msg) = msg else {
                    return End::Failed(Failure::transient("the ACK reader stopped".to_owned()));
                };
                match msg {
                    ReaderMsg::Connected => {
                        connected = true;
                        events(UploadEvent::Connected { endpoint: endpoint.to_owned() });
                    }
                    ReaderMsg::Ack(Ok(ack)) => {
                        if ack.event != AckEvent::Idle {
                            waiting_since = if shared.store().awaiting_first_ack() > 0 {
                                Some(Instant::now())
                            } else {
                                None
                            };
                            if closing_since.is_some() {
                                closing_since = Some(Instant::now());
                            }
                        }
                        if let Some(end) = handle_ack(shared, config, events, ack, &sent, persisted_any) {
                            return end;
                        }
                        if closing_since.is_some() && shared.store().oldest_in_flight().is_none() {
                            return if rotate { End::Rotate } else { End::Finished };
                        }
                    }
                    ReaderMsg::Ack(Err(e)) => tracing::warn!(error = %e, "unreadable ACK"),
                    ReaderMsg::HttpError { status, body } => return End::Failed(http_failure(status, &body)),
                    ReaderMsg::Closed => {
                        let in_flight = shared.store().oldest_in_flight();
                        if closing_since.is_some() && in_flight.is_none() {
                            return if rotate { End::Rotate } else { End::Finished };
                        }
                        return End::Failed(Failure {
                            host_alive: true,
                            ..Failure::transient(format!(
                                "the service ended the PutMedia response{}",
                                in_flight.map(|t| format!(" before fragment {t} was persisted")).unwrap_or_default()
                            ))
                        });
                    }
                    ReaderMsg::Failed(e) => {
                        return End::Failed(Failure {
                            invalidate_endpoint: !connected,
                            ..Failure::transient(e)
                        });
                    }
                }
            }
            permit = async { body_tx.as_ref().expect("checked").reserve().await }, if has_next => {
                let Ok(permit) = permit else {
                    return End::Failed(Failure::transient("the connection closed the request body".to_owned()));
                };
                let mut store = shared.store();
                let chunk = if store.sending() || store.peek_next().is_some_and(|f| f.header == header) {
                    store.take_parts()
                } else {
                    None
                };
                if let Some(c) = chunk {
                    tracing::trace!(timecode = c.timecode, parts = c.parts.len(), last = c.last, "sending");
                    let mut parts = c.parts;
                    if c.last {
                        // Each fragment is closed at once with the end-of-fragment tag: the
                        // service persists it now instead of when the next fragment starts.
                        if !c.end_of_stream {
                            parts.push(end_of_fragment.clone());
                        }
                        if !config.fragment_acks {
                            shared.persisted(&mut store, c.timecode);
                            shared.freed();
                        }
                    }
                    last_sent_ends_stream = c.last;
                    if config.fragment_acks && waiting_since.is_none() {
                        waiting_since = Some(Instant::now());
                    }
                    drop(store);
                    permit.send(BodyItem { parts, timecode: c.last.then_some(c.timecode) });
                }
            }
            _ = shared.data.notified(), if body_tx.is_some() && !has_next => {}
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            } => {
                let now = Instant::now();
                if finish_deadline.is_some_and(|d| now >= d) {
                    return End::Finished;
                }
                if close_deadline.is_some_and(|d| now >= d) {
                    let Some(in_flight) = shared.store().oldest_in_flight() else {
                        return if rotate { End::Rotate } else { End::Finished };
                    };
                    return End::Failed(Failure {
                        host_alive: true,
                        ..Failure::transient(format!(
                            "no acknowledgement for {CLOSE_WAIT:?} after the request ended, fragment {in_flight} not persisted: reconnecting to resend it"
                        ))
                    });
                }
                if stale_deadline.is_some_and(|d| now >= d) {
                    return End::Failed(Failure::transient(format!(
                        "no acknowledgement for {:?} (connection-staleness): the connection is stale",
                        config.connection_staleness.unwrap_or_default()
                    )));
                }
            }
        }
    }
}

fn handle_ack(
    shared: &Shared,
    config: &UploadConfig,
    events: &EventSink,
    ack: Ack,
    sent: &SentLog,
    persisted_any: &mut bool,
) -> Option<End> {
    tracing::debug!(event = ack.event.as_str(), timecode = ?ack.timecode, "ACK");
    let mut result = None;
    let mut latency = None;
    match ack.event {
        AckEvent::Idle => return None,
        AckEvent::Buffering => {
            if let Some(tc) = ack.timecode {
                shared.store().on_progress(tc, FragmentState::Buffering);
            }
        }
        AckEvent::Received => {
            if let Some(tc) = ack.timecode {
                let mut store = shared.store();
                if config.wait_for_persisted {
                    store.on_progress(tc, FragmentState::Received);
                } else {
                    shared.persisted(&mut store, tc);
                    *persisted_any = true;
                    shared.freed();
                }
            }
        }
        AckEvent::Persisted => {
            if let Some(tc) = ack.timecode {
                latency = sent.take(tc).map(|at| at.elapsed());
                let known = shared.persisted(&mut shared.store(), tc);
                if known {
                    *persisted_any = true;
                    shared.freed();
                } else {
                    tracing::debug!(timecode = tc, "PERSISTED for an unknown fragment");
                }
            }
        }
        AckEvent::Error => {
            let id = ack.error_id.unwrap_or(0);
            let class = classify_error(id);
            let code = ack
                .error_code
                .clone()
                .unwrap_or_else(|| error_code_name(id).to_owned());
            let timecode = ack.timecode.or_else(|| shared.store().oldest_in_flight());
            if !class.retriable
                && let Some(tc) = timecode
                && let Some(d) = shared.store().on_rejected(tc)
            {
                shared.freed();
                events(UploadEvent::Dropped(d));
            }
            result = Some(End::Failed(Failure {
                message: format!(
                    "the service refused fragment {}: ErrorId {id} ({code})",
                    timecode
                        .map(|t| t.to_string())
                        .unwrap_or_else(|| "?".into())
                ),
                status: class.status,
                fatal: !class.recoverable,
                host_alive: class.host_alive,
                invalidate_endpoint: false,
                resetup: id == 4008 || id == 4507,
                credentials_refused: false,
            }));
        }
    }
    events(UploadEvent::Ack { ack, latency });
    result
}

/// One item of the request body: a fragment's parts, or session framing (header, end tags).
struct BodyItem {
    parts: Vec<Bytes>,
    timecode: Option<u64>,
}

impl BodyItem {
    fn other(bytes: Bytes) -> Self {
        Self {
            parts: vec![bytes],
            timecode: None,
        }
    }
}

/// When the last byte of each fragment of this session went to the connection, until its
/// PERSISTED ACK; this gives the fragment latency reported with the ACK.
#[derive(Clone, Default)]
struct SentLog(std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<(u64, Instant)>>>);

impl SentLog {
    fn record(&self, timecode: u64) {
        let mut log = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded: a session without ACKs keeps only the most recent fragments.
        if log.len() >= 1024 {
            log.pop_front();
        }
        log.push_back((timecode, Instant::now()));
    }

    /// The send time of `timecode`, forgetting it and everything sent before it.
    fn take(&self, timecode: u64) -> Option<Instant> {
        let mut log = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let pos = log.iter().position(|(tc, _)| *tc == timecode)?;
        let at = log[pos].1;
        log.drain(..=pos);
        Some(at)
    }
}

fn http_failure(status: u16, body: &str) -> Failure {
    let message = format!("PutMedia answered HTTP {status}: {}", body.trim());
    match status {
        401 | 403 => Failure {
            resetup: true,
            credentials_refused: true,
            ..Failure::transient(message)
        },
        404 => Failure {
            resetup: true,
            ..Failure::transient(message)
        },
        408 | 429 | 500..=599 => Failure {
            invalidate_endpoint: status != 429,
            ..Failure::transient(message)
        },
        _ => Failure {
            invalidate_endpoint: true,
            ..Failure::transient(message)
        },
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn read_acks(
    client: reqwest::Client,
    request: reqwest::Request,
    tx: mpsc::UnboundedSender<ReaderMsg>,
    staleness: Option<Duration>,
) {
    let mut response = match client.execute(request).await {
        Ok(r) => r,
        Err(e) => {
            let _ = tx.send(ReaderMsg::Failed(format!(
                "PutMedia request failed: {}",
                error_chain(&e)
            )));
            return;
        }
    };
    let status = response.status();
    if !status.is_success() {
        let mut body = Vec::new();
        while body.len() < MAX_ERROR_BODY {
            match tokio::time::timeout(Duration::from_secs(5), response.chunk()).await {
                Ok(Ok(Some(c))) => body.extend_from_slice(&c),
                _ => break,
            }
        }
        body.truncate(MAX_ERROR_BODY);
        let _ = tx.send(ReaderMsg::HttpError {
            status: status.as_u16(),
            body: String::from_utf8_lossy(&body).into_owned(),
        });
        return;
    }
    let _ = tx.send(ReaderMsg::Connected);
    let mut parser = AckParser::new();
    // IDLE ACKs keep a healthy idle connection talking; silence this long means it is dead.
    let read_limit = staleness
        .unwrap_or(Duration::from_secs(60))
        .max(Duration::from_secs(5));
    loop {
        match tokio::time::timeout(read_limit, response.chunk()).await {
            Ok(Ok(Some(chunk))) => {
                for ack in parser.push(&chunk) {
                    if tx.send(ReaderMsg::Ack(ack)).is_err() {
                        return;
                    }
                }
            }
            Ok(Ok(None)) => {
                let _ = tx.send(ReaderMsg::Closed);
                return;
            }
            Ok(Err(e)) => {
                let _ = tx.send(ReaderMsg::Failed(format!(
                    "reading ACKs failed: {}",
                    error_chain(&e)
                )));
                return;
            }
            Err(_) => {
                let _ = tx.send(ReaderMsg::Failed(format!(
                    "no data from the service for {read_limit:?}: the connection is stale"
                )));
                return;
            }
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_failures_are_classified() {
        assert!(http_failure(403, "").resetup);
        assert!(!http_failure(403, "").fatal);
        assert!(http_failure(503, "").invalidate_endpoint);
        assert!(!http_failure(429, "").invalidate_endpoint);
    }
}
