//! GetMedia (`kinesis-video-media`, `POST /getMedia`): the stream's fragments as one streaming
//! Matroska body, from a start selector on, then live.
//!
//! Owns: the request (`StreamName`/`StreamARN`, `StartSelector`), resolving the selector against
//! the stream's fragments, and the response task. The body is `video/webm`, one chunk per
//! fragment ([`super::chunk`]). The task first replays stored fragments from the selected one
//! (waiting for a completely received fragment to be persisted), then follows the live tail
//! ([`super::live`]): a chunk starts when its fragment's Cluster Timecode arrives, every block
//! is written as soon as the endpoint has read it, and the chunk's closing Tags (millis behind
//! now, continuation token) follow when the fragment is complete. Fragment numbers increase, so
//! the hand-over from replay to live skips any fragment both would deliver.
//!
//! Choices where the service is not specified: `NOW` starts with the fragment being received
//! (from its first block) or else the next one; `*_TIMESTAMP` starts with the first fragment
//! whose span reaches the timestamp (or the live tail when none does yet); the continuation
//! token is the fragment number of the chunk it closes and resumes after it; millis behind now
//! is the newest fragment's server timestamp minus the chunk's; a fragment given up while
//! streaming (ERROR ACK, lost connection) ends its chunk without closing Tags; a stream with no
//! retention has only the live tail; the response stays open until the client closes it, the
//! stream is deleted or the endpoint stops, or the reader falls [`super::live::CAPACITY`] events
//! behind.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Response};
use http_body_util::combinators::BoxBody;
use serde_json::{Map, Value};
use tokio::sync::{broadcast, mpsc};

use super::chunk::{self, Flavor};
use super::control;
use super::live::{FragmentStart, LiveEvent, OpenFragment, SessionElements};
use super::model::{ApiError, FragmentInfo, FragmentState, StreamRef, StreamStatus};
use super::server::{ChannelBody, ResponseBody, Service};
use super::store::Store;

/// The path of GetMedia.
pub(crate) const PATH: &str = "/getMedia";

/// Where the replay starts and the newest fragment number a reader must not get again.
#[derive(Debug)]
struct Start {
    index: usize,
    delivered: Option<Arc<str>>,
}

/// Whether fragment number `a` comes after `b` (numbers are decimal strings).
pub(crate) fn after(a: &str, b: Option<&str>) -> bool {
    b.is_none_or(|b| (a.len(), a) > (b.len(), b))
}

fn selector_error(message: impl Into<String>) -> ApiError {
    ApiError::invalid_argument(message)
}

/// The fragment's producer timestamp (ms), falling back on its timecode as milliseconds.
pub(crate) fn producer_ms(f: &FragmentInfo) -> u64 {
    f.producer_timestamp_ms.unwrap_or(f.timecode)
}

fn resolve(body: &Map<String, Value>, frags: &[FragmentInfo]) -> Result<Start, ApiError> {
    let sel = match body.get("StartSelector") {
        Some(Value::Object(s)) => s,
        None | Some(Value::Null) => {
            return Err(selector_error(
                "1 validation error detected: Value null at 'startSelector' failed to satisfy constraint: Member must not be null",
            ));
        }
        Some(_) => return Err(selector_error("StartSelector must be an object.")),
    };
    let kind = control::opt_string(sel, "StartSelectorType")?.unwrap_or_default();
    let number_at = |i: usize| -> Option<Arc<str>> {
        i.checked_sub(1)
            .and_then(|p| frags.get(p))
            .map(|f| Arc::from(f.fragment_number.as_str()))
    };
    let after_number = |n: &str, what: &str| -> Result<Start, ApiError> {
        match frags.iter().position(|f| f.fragment_number == n) {
            Some(i) => Ok(Start {
                index: i + 1,
                delivered: Some(Arc::from(n)),
            }),
            None if what == "ContinuationToken" => Err(selector_error(format!(
                "The continuation token {n} does not belong to this stream."
            ))),
            None => Err(ApiError::new(
                404,
                "ResourceNotFoundException",
                format!("Fragment {n} was not found on the stream."),
            )),
        }
    };
    match kind.as_str() {
        "EARLIEST" => Ok(Start {
            index: 0,
            delivered: None,
        }),
        "NOW" => {
            let done = frags
                .iter()
                .rposition(|f| f.state != FragmentState::Buffering)
                .map_or(0, |i| i + 1);
            // From the first fragment not yet complete: the replay stops there at once (it is
            // being received) unless it completed meanwhile, and the live tail takes over.
            Ok(Start {
                index: done,
                delivered: number_at(done),
            })
        }
        "FRAGMENT_NUMBER" => {
            let n = control::opt_string(sel, "AfterFragmentNumber")?.ok_or_else(|| {
                selector_error(
                    "AfterFragmentNumber is required with StartSelectorType FRAGMENT_NUMBER.",
                )
            })?;
            after_number(&n, "AfterFragmentNumber")
        }
        "CONTINUATION_TOKEN" => {
            let t = control::opt_string(sel, "ContinuationToken")?.ok_or_else(|| {
                selector_error(
                    "ContinuationToken is required with StartSelectorType CONTINUATION_TOKEN.",
                )
            })?;
            after_number(&t, "ContinuationToken")
        }
        "SERVER_TIMESTAMP" | "PRODUCER_TIMESTAMP" => {
            let ts = match sel.get("StartTimestamp") {
                Some(Value::Number(n)) => n.as_f64().unwrap_or(-1.0),
                None | Some(Value::Null) => {
                    return Err(selector_error(format!(
                        "StartTimestamp is required with StartSelectorType {kind}."
                    )));
                }
                Some(_) => return Err(selector_error("StartTimestamp must be a number.")),
            };
            if !ts.is_finite() || ts < 0.0 {
                return Err(selector_error(
                    "StartTimestamp must be a non-negative timestamp.",
                ));
            }
            let ms = (ts * 1000.0).round() as u64;
            let server = kind == "SERVER_TIMESTAMP";
            let index = frags
                .iter()
                .position(|f| {
                    let start = if server {
                        chunk::unix_ms(f.server_timestamp)
                    } else {
                        producer_ms(f)
                    };
                    f.state != FragmentState::Failed
                        && (start + f.duration_ms >= ms || f.state == FragmentState::Buffering)
                })
                .unwrap_or(frags.len());
            Ok(Start {
                index,
                delivered: number_at(index),
            })
        }
        other => Err(selector_error(format!(
            "1 validation error detected: Value '{other}' at 'startSelector.startSelectorType' failed to satisfy constraint: Member must satisfy enum value set: [FRAGMENT_NUMBER, SERVER_TIMESTAMP, PRODUCER_TIMESTAMP, NOW, EARLIEST, CONTINUATION_TOKEN]"
        ))),
    }
}

/// Validates the request and starts streaming.
pub(crate) fn get_media(
    service: &Arc<Service>,
    body: &Map<String, Value>,
    request_id: &str,
) -> Result<Response<ResponseBody>, ApiError> {
    let info = service.registry.describe(&control::stream_ref(body)?)?;
    if info.status != StreamStatus::Active {
        return Err(ApiError::not_found());
    }
    // Subscribe before reading the fragments: whatever begins after this is in the live events.
    let (open, live) = service.live.subscribe(&info.name);
    let frags = service.registry.fragments(&info.name);
    let start = resolve(body, &frags)?;
    tracing::debug!(stream = %info.name, ?start, "GetMedia");
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let reader = Reader {
        service: service.clone(),
        stream: info.name,
        persisting: info.data_retention_in_hours > 0,
        tx,
        delivered: start.delivered,
        headers: HeaderCache::new(),
    };
    tokio::spawn(reader.run(start.index, open, live));
    Ok(media_response(rx, request_id))
}

/// A `video/webm` response streaming what `rx` receives.
pub(crate) fn media_response(
    rx: mpsc::Receiver<Bytes>,
    request_id: &str,
) -> Response<ResponseBody> {
    let mut resp = Response::new(BoxBody::new(ChannelBody(rx)));
    let h = resp.headers_mut();
    h.insert("content-type", HeaderValue::from_static("video/webm"));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert("x-amzn-requestid", v);
    }
    resp
}

/// Session headers of stored files already read, by file.
pub(crate) type HeaderCache = HashMap<PathBuf, SessionElements>;

/// The chunk start and blocks of a stored fragment (`None`: its bytes are gone or unreadable).
pub(crate) async fn stored_chunk(
    f: &FragmentInfo,
    headers: &mut HeaderCache,
    flavor: Flavor,
) -> Option<(Bytes, Vec<Bytes>)> {
    let loc = f.stored.clone()?;
    let known = headers.get(&loc.path).cloned();
    let read = tokio::task::spawn_blocking(move || -> Result<_, String> {
        let header = match known {
            Some(h) => h,
            None => {
                let mut file = std::fs::File::open(&loc.path).map_err(|e| e.to_string())?;
                chunk::read_stored_header(&mut file)?
            }
        };
        let bytes = Store::read(&loc).map_err(|e| e.to_string())?;
        Ok((loc.path, header, bytes))
    })
    .await;
    let (path, header, bytes) = match read {
        Ok(Ok(x)) => x,
        other => {
            tracing::warn!(fragment = %f.fragment_number, error = ?other.map(|r| r.err()), "stored fragment unreadable");
            return None;
        }
    };
    headers.insert(path, header.clone());
    let (timecode, blocks) = match chunk::stored_blocks(&Bytes::from(bytes)) {
        Ok(x) => x,
        Err(e) => {
            tracing::warn!(fragment = %f.fragment_number, error = %e, "stored fragment unreadable");
            return None;
        }
    };
    let start = FragmentStart {
        number: Arc::from(f.fragment_number.as_str()),
        header,
        timecode,
        server_timestamp: f.server_timestamp,
        producer_timestamp_ms: producer_ms(f),
    };
    Some((chunk::start(&start, flavor), blocks))
}

/// One GetMedia response: the task that writes its body (replay, then the live tail).
struct Reader {
    service: Arc<Service>,
    stream: String,
    persisting: bool,
    tx: mpsc::Sender<Bytes>,
    /// The newest fragment number written completely (or given up).
    delivered: Option<Arc<str>>,
    headers: HeaderCache,
}

/// The reader stops: the client went away, the endpoint stops, the stream is gone, or it fell
/// behind.
struct Stop;

impl Reader {
    async fn run(
        mut self,
        index: usize,
        open: Option<OpenFragment>,
        live: broadcast::Receiver<LiveEvent>,
    ) {
        if self.replay(index).await.is_ok() {
            let _ = self.tail(open, live).await;
        }
        tracing::debug!(stream = %self.stream, "GetMedia response ended");
    }

    async fn send(&self, b: Bytes) -> Result<(), Stop> {
        self.tx.send(b).await.map_err(|_| Stop)
    }

    fn end_tags(&self, number: &str, server_timestamp: SystemTime) -> Bytes {
        let latest = self
            .service
            .live
            .latest_server_timestamp(&self.stream)
            .unwrap_or(server_timestamp);
        let behind = latest
            .duration_since(server_timestamp)
            .unwrap_or_default()
            .as_millis() as u64;
        chunk::end(behind, number)
    }

    /// Stored fragments from `index` until the first one still being received.
    async fn replay(&mut self, mut index: usize) -> Result<(), Stop> {
        let mut waited = Duration::ZERO;
        loop {
            let Some(f) = self.service.registry.fragment(&self.stream, index) else {
                return Ok(());
            };
            match f.state {
                FragmentState::Buffering => return Ok(()),
                FragmentState::Received if self.persisting && waited < Duration::from_secs(10) => {
                    // Complete, being stored.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    waited += Duration::from_millis(2);
                    continue;
                }
                FragmentState::Persisted
                    if after(&f.fragment_number, self.delivered.as_deref()) =>
                {
                    if let Some((start, blocks)) =
                        stored_chunk(&f, &mut self.headers, Flavor::GetMedia).await
                    {
                        self.send(start).await?;
                        for b in blocks {
                            self.send(b).await?;
                        }
                        self.send(self.end_tags(&f.fragment_number, f.server_timestamp))
                            .await?;
                    }
                    self.delivered = Some(Arc::from(f.fragment_number.as_str()));
                }
                _ => {}
            }
            waited = Duration::ZERO;
            index += 1;
        }
    }

    /// The live tail, from the fragment being received when the reader subscribed.
    async fn tail(
        &mut self,
        open: Option<OpenFragment>,
        mut live: broadcast::Receiver<LiveEvent>,
    ) -> Result<(), Stop> {
        let mut current: Option<Arc<FragmentStart>> = None;
        if let Some(open) = open
            && after(&open.start.number, self.delivered.as_deref())
        {
            self.send(chunk::start(&open.start, Flavor::GetMedia))
                .await?;
            for b in open.blocks {
                self.send(b).await?;
            }
            current = Some(open.start);
        }
        let mut shutdown = self.service.shutdown.clone();
        let mut check = tokio::time::interval(Duration::from_secs(1));
        loop {
            let event = tokio::select! {
                e = live.recv() => e,
                _ = self.tx.closed() => return Err(Stop),
                _ = shutdown.changed() => return Err(Stop),
                _ = check.tick() => {
                    if self.service.registry.describe(&StreamRef::Name(self.stream.clone())).is_err() {
                        return Err(Stop);
                    }
                    continue;
                }
            };
            match event {
                Ok(LiveEvent::Start(s)) => {
                    if let Some(c) = current.take() {
                        self.delivered = Some(c.number.clone());
                    }
                    if after(&s.number, self.delivered.as_deref()) {
                        self.send(chunk::start(&s, Flavor::GetMedia)).await?;
                        current = Some(s);
                    }
                }
                Ok(LiveEvent::Block { number, element }) => {
                    if current.as_ref().is_some_and(|c| c.number == number) {
                        self.send(element).await?;
                    }
                }
                Ok(LiveEvent::End { number, complete }) => {
                    if let Some(c) = current.take_if(|c| c.number == number) {
                        if complete {
                            self.send(self.end_tags(&c.number, c.server_timestamp))
                                .await?;
                        }
                        self.delivered = Some(number);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::info!(stream = %self.stream, missed = n, "GetMedia reader fell behind");
                    return Err(Stop);
                }
                Err(broadcast::error::RecvError::Closed) => return Err(Stop),
            }
        }
    }
}
