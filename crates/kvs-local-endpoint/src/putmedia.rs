//! PutMedia: one streaming session per request.
//!
//! Owns: the PutMedia headers (`x-amzn-stream-name`/`-arn`, `x-amzn-fragment-timecode-type`,
//! `x-amzn-producer-start-timestamp`, `x-amzn-fragment-acknowledgment-required`), the session
//! task that reads the chunked body while ACKs stream back on the same connection, and what the
//! service does with each fragment:
//! - BUFFERING when its Cluster Timecode arrives, RECEIVED when it is complete, PERSISTED once its
//!   bytes are stored (streams with no retention get no PERSISTED and are not stored);
//! - IDLE every `idle_ack_interval` without data, and the response ends after `idle_timeout`;
//! - an ERROR ACK (`ErrorId` + `ErrorCode`) for a broken rule — the splitter's MKV rules,
//!   4003 after `max_connection_duration`, 4008 when the stream was deleted meanwhile, 5001 when
//!   storing fails — after which the response ends and the body is no longer read;
//! - the armed connection faults ([`super::faults`]), and the uplink limit: the body is read at
//!   most at [`Faults::limit_uplink`](super::Faults::limit_uplink) bits per second, in pieces of
//!   at most 16 KiB, each handed on once the time it takes at that rate has passed;
//! - with `record_frame_arrivals`, when each block was read (frame latency measurements).
//!
//! With `x-amzn-fragment-acknowledgment-required: 0` only ERROR and IDLE ACKs are sent.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Response};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use tokio::sync::{mpsc, oneshot};

use super::ack::{Ack, AckEventType};
use super::faults::ConnectionFault;
use super::live::{FragmentStart, LiveEvent};
use super::mkv::{Event, ParsedFragment, RuleError, SessionHeader, Splitter};
use super::model::{
    AckRecord, ApiError, FragmentInfo, FragmentState, FrameArrival, SessionEnd, SessionInfo,
    StreamRef,
};
use super::server::{ChannelBody, ConnectionKill, ResponseBody, Service, header};
use super::store::Store;

/// Validates the request and starts the session; the response streams the ACKs.
pub(crate) fn start(
    service: Arc<Service>,
    headers: &[(String, String)],
    body: &mut Option<Incoming>,
    peer: SocketAddr,
    kill: Arc<ConnectionKill>,
    request_id: &str,
) -> Result<Response<ResponseBody>, ApiError> {
    let stream = match (
        header(headers, "x-amzn-stream-name"),
        header(headers, "x-amzn-stream-arn"),
    ) {
        (Some(n), None) => {
            super::model::validate_stream_name(n)?;
            n.to_owned()
        }
        (None, Some(arn)) => {
            service
                .registry
                .describe(&StreamRef::Arn(arn.to_owned()))?
                .name
        }
        _ => {
            return Err(ApiError::invalid_argument(
                "Specify either x-amzn-stream-name or x-amzn-stream-arn, but not both.",
            ));
        }
    };
    let timecode_type = header(headers, "x-amzn-fragment-timecode-type")
        .ok_or_else(|| ApiError::invalid_argument("x-amzn-fragment-timecode-type is required."))?
        .to_owned();
    let relative = match timecode_type.as_str() {
        "ABSOLUTE" => false,
        "RELATIVE" => true,
        other => {
            return Err(ApiError::invalid_argument(format!(
                "Invalid x-amzn-fragment-timecode-type '{other}': expected ABSOLUTE or RELATIVE."
            )));
        }
    };
    let producer_start = header(headers, "x-amzn-producer-start-timestamp").map(str::to_owned);
    let producer_start_ms = match &producer_start {
        Some(s) => Some(
            s.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .map(|v| (v * 1000.0).round() as u64)
                .ok_or_else(|| {
                    ApiError::invalid_argument(format!(
                        "Invalid x-amzn-producer-start-timestamp '{s}'."
                    ))
                })?,
        ),
        None if relative => {
            return Err(ApiError::invalid_argument(
                "x-amzn-producer-start-timestamp is required with RELATIVE timecodes.",
            ));
        }
        None => None,
    };
    let acks_required = header(headers, "x-amzn-fragment-acknowledgment-required") != Some("0");

    let id = service.registry.next_id();
    let (incarnation, retention_hours) = service.registry.begin_session(SessionInfo {
        id,
        stream: stream.clone(),
        peer: peer.to_string(),
        started: SystemTime::now(),
        ended: None,
        fragment_timecode_type: timecode_type,
        producer_start_timestamp: producer_start,
        bytes_received: 0,
        fragments: 0,
        acks: Vec::new(),
        end: None,
    })?;
    tracing::info!(session = id, %stream, %peer, "PutMedia session started");

    let body = body.take().expect("PutMedia has a body");
    let (body_tx, body_rx) = mpsc::channel::<Bytes>(64);
    let (ack_tx, ack_rx) = mpsc::unbounded_channel::<Outgoing>();
    tokio::spawn(ack_writer(ack_rx, body_tx, kill.clone()));
    let session = Session {
        // Blocks feed the live tail (GetMedia) and, when asked, the arrival records.
        splitter: Splitter::new(service.settings.limits.clone()).report_blocks(true),
        arrivals: Vec::new(),
        uplink_free_at: None,
        service,
        id,
        stream,
        incarnation,
        persist: retention_hours > 0,
        acks_required,
        relative,
        producer_start_ms,
        kill,
        ack_tx: Some(ack_tx),
        header: None,
        fragments_started: 0,
        open: None,
        bytes: 0,
        ended: None,
    };
    tokio::spawn(session.run(body));

    let mut resp = Response::new(BoxBody::new(ChannelBody(body_rx)));
    let h = resp.headers_mut();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert("x-amzn-requestid", v);
    }
    Ok(resp)
}

/// What the session hands the ACK writer.
enum Outgoing {
    /// An ACK chunk and when it is due.
    Ack(Instant, Bytes),
    /// Answer once everything queued before was handed to the connection.
    Flush(oneshot::Sender<()>),
}

/// Writes ACK chunks when they are due. The response ends when the session drops its sender,
/// unless a fault killed the connection: then the response is left unfinished.
async fn ack_writer(
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    tx: mpsc::Sender<Bytes>,
    kill: Arc<ConnectionKill>,
) {
    while let Some(out) = rx.recv().await {
        match out {
            Outgoing::Ack(due, bytes) => {
                tokio::time::sleep_until(due.into()).await;
                if tx.send(bytes).await.is_err() {
                    return;
                }
            }
            Outgoing::Flush(done) => {
                while tx.capacity() < tx.max_capacity() && !tx.is_closed() {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                // hyper writes a frame to the socket right after taking it from the channel.
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = done.send(());
            }
        }
    }
    if kill.is_killed() {
        tx.closed().await;
    }
}

/// The fragment being received.
#[derive(Debug)]
struct OpenFragment {
    stream_index: u64,
    connection_index: u64,
    number: String,
    timecode: u64,
    /// Its start, as published to the live tail.
    live: Arc<FragmentStart>,
}

struct Session {
    service: Arc<Service>,
    id: u64,
    stream: String,
    incarnation: u64,
    persist: bool,
    acks_required: bool,
    relative: bool,
    producer_start_ms: Option<u64>,
    kill: Arc<ConnectionKill>,
    ack_tx: Option<mpsc::UnboundedSender<Outgoing>>,
    splitter: Splitter,
    header: Option<Arc<SessionHeader>>,
    fragments_started: u64,
    open: Option<OpenFragment>,
    bytes: u64,
    ended: Option<SessionEnd>,
    /// Blocks of the open fragment and when they were read.
    arrivals: Vec<FrameArrival>,
    /// With an uplink limit: when the bytes read so far have finished "arriving".
    uplink_free_at: Option<tokio::time::Instant>,
}

/// Largest piece of body handed on at once under an uplink limit.
const UPLINK_PIECE: usize = 16 * 1024;

impl Session {
    async fn run(mut self, mut body: Incoming) {
        let settings = self.service.settings.clone();
        let deadline = tokio::time::Instant::now() + settings.max_connection_duration;
        let mut shutdown = self.service.shutdown.clone();
        let mut idle = tokio::time::interval_at(
            tokio::time::Instant::now() + settings.idle_ack_interval,
            settings.idle_ack_interval,
        );
        let mut last_data = Instant::now();
        while self.ended.is_none() {
            tokio::select! {
                _ = shutdown.changed() => self.end(SessionEnd::Shutdown),
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::info!(session = self.id, "maximum connection duration reached");
                    self.fail(4003, "maximum connection duration reached");
                }
                _ = idle.tick() => {
                    let quiet = last_data.elapsed();
                    if quiet >= settings.idle_timeout {
                        tracing::info!(session = self.id, "no data within the idle timeout");
                        self.end(SessionEnd::IdleTimeout);
                    } else if quiet >= settings.idle_ack_interval {
                        self.send_ack(Ack::idle(), None);
                    }
                }
                frame = body.frame() => match frame {
                    None => self.body_ended().await,
                    Some(Err(e)) => {
                        tracing::info!(session = self.id, error = %e, "reading the body failed");
                        self.fail_open(4000);
                        self.end(SessionEnd::ReadError(e.to_string()));
                    }
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            self.on_data_paced(data).await;
                            // After the data, not before: a stall inside on_data is not the
                            // client being idle.
                            last_data = Instant::now();
                        }
                    }
                },
            }
        }
        let end = self.ended.take().expect("loop ends with an end");
        if let Some(open) = self.open.take() {
            self.service
                .registry
                .update_fragment(&self.stream, open.stream_index, |f| {
                    if f.state == FragmentState::Buffering {
                        f.state = FragmentState::Failed;
                    }
                });
            self.give_up(&open);
        }
        tracing::info!(session = self.id, stream = %self.stream, ?end, "PutMedia session ended");
        let body_done = matches!(end, SessionEnd::BodyEnded);
        self.service.registry.end_session(self.id, end);
        // Dropping the ACK sender ends the response once the writer has sent what is queued.
        self.ack_tx = None;
        if body_done || self.kill.is_killed() {
            drop(body);
        } else {
            // Closing a socket with unread request data makes the kernel send a reset, which
            // discards ACKs the client has not read yet: read and discard the rest for a while,
            // until the client, seeing the response end, stops sending.
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(5), async {
                    while let Some(Ok(_)) = body.frame().await {}
                })
                .await;
            });
        }
    }

    fn end(&mut self, end: SessionEnd) {
        if self.ended.is_none() {
            self.ended = Some(end);
        }
    }

    /// Hands `data` on at the uplink's pace (at once without a limit).
    async fn on_data_paced(&mut self, mut data: Bytes) {
        while !data.is_empty() && self.ended.is_none() {
            let Some(bps) = self.service.faults.uplink_bps() else {
                self.uplink_free_at = None;
                return self.on_data(data).await;
            };
            let piece = data.split_to(data.len().min(UPLINK_PIECE));
            let now = tokio::time::Instant::now();
            let start = self.uplink_free_at.filter(|t| *t > now).unwrap_or(now);
            let at = start + Duration::from_nanos(piece.len() as u64 * 8_000_000_000 / bps);
            self.uplink_free_at = Some(at);
            tokio::time::sleep_until(at).await;
            self.on_data(piece).await;
        }
    }

    async fn on_data(&mut self, mut data: Bytes) {
        while !data.is_empty() && self.ended.is_none() {
            let take = self.next_byte_trigger().map_or(data.len(), |t| {
                (t - self.bytes).min(data.len() as u64) as usize
            });
            let piece = data.split_to(take);
            self.bytes += piece.len() as u64;
            let bytes = self.bytes;
            self.service
                .registry
                .update_session(self.id, |s| s.bytes_received = bytes);
            let mut events = Vec::new();
            let result = self.splitter.push(&piece, &mut events);
            self.handle_events(events).await;
            if let Err(e) = result {
                self.rule_broken(e);
                return;
            }
            let faults = self.service.faults.take_at_bytes(self.bytes);
            for f in faults {
                self.apply_fault(f).await;
            }
        }
    }

    /// The lowest armed byte trigger above what was received, so a chunk can be split there.
    fn next_byte_trigger(&self) -> Option<u64> {
        let s = self
            .service
            .faults
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        s.byte_triggers().filter(|&n| n > self.bytes).min()
    }

    async fn body_ended(&mut self) {
        let mut events = Vec::new();
        let result = self.splitter.finish(&mut events);
        self.handle_events(events).await;
        match result {
            Ok(()) => self.end(SessionEnd::BodyEnded),
            Err(e) => self.rule_broken(e),
        }
    }

    async fn handle_events(&mut self, events: Vec<Event>) {
        for ev in events {
            if self.ended.is_some() {
                return;
            }
            match ev {
                Event::Header(h) => {
                    tracing::debug!(
                        session = self.id,
                        tracks = h.track_list.len(),
                        timecode_scale = h.timecode_scale_ns,
                        "session header"
                    );
                    self.header = Some(h);
                }
                Event::FragmentStarted { timecode } => self.fragment_started(timecode).await,
                Event::Block {
                    track,
                    timecode,
                    element,
                } => {
                    if let Some(open) = &self.open {
                        self.service.live.publish(
                            &self.stream,
                            LiveEvent::Block {
                                number: open.live.number.clone(),
                                element,
                            },
                        );
                    }
                    if self.service.settings.record_frame_arrivals {
                        self.arrivals.push(FrameArrival {
                            track,
                            timecode,
                            at_unix_us: SystemTime::now()
                                .duration_since(SystemTime::UNIX_EPOCH)
                                .map_or(0, |d| d.as_micros() as u64),
                        });
                    }
                }
                Event::FragmentCompleted(f) => self.fragment_completed(f).await,
            }
        }
    }

    fn producer_timestamp_ms(&self, timecode: u64) -> Option<u64> {
        let scale = self
            .header
            .as_ref()
            .map_or(1_000_000, |h| h.timecode_scale_ns);
        let ms = (timecode as u128 * scale as u128 / 1_000_000) as u64;
        if self.relative {
            self.producer_start_ms.map(|s| s + ms)
        } else {
            Some(ms)
        }
    }

    async fn fragment_started(&mut self, timecode: u64) {
        if !self
            .service
            .registry
            .stream_active(&self.stream, self.incarnation)
        {
            tracing::info!(session = self.id, "the stream is gone");
            let number = self.service.registry.new_fragment_number();
            self.send_ack(Ack::error(4008, Some((timecode, &number))), None);
            self.end(SessionEnd::ErrorAck { error_id: 4008 });
            return;
        }
        let k = self.fragments_started;
        self.fragments_started += 1;
        self.arrivals.clear();
        let number = self.service.registry.new_fragment_number();
        let server_timestamp = SystemTime::now();
        let info = FragmentInfo {
            index: 0,
            session_id: self.id,
            connection_index: k,
            fragment_number: number.clone(),
            timecode,
            producer_timestamp_ms: self.producer_timestamp_ms(timecode),
            server_timestamp,
            duration_ms: 0,
            size: 0,
            frames_per_track: Default::default(),
            key_frames: 0,
            tags: Vec::new(),
            end_of_fragment: false,
            state: FragmentState::Buffering,
            error_id: None,
            acks: Vec::new(),
            stored: None,
            frame_arrivals: Vec::new(),
        };
        let Some(stream_index) = self.service.registry.add_fragment(&self.stream, info) else {
            self.end(SessionEnd::ErrorAck { error_id: 4008 });
            return;
        };
        self.service
            .registry
            .update_session(self.id, |s| s.fragments = k + 1);
        tracing::debug!(
            session = self.id,
            fragment = k,
            timecode,
            "fragment started"
        );
        let live = Arc::new(FragmentStart {
            number: Arc::from(number.as_str()),
            header: self
                .header
                .as_deref()
                .expect("a fragment follows the header")
                .into(),
            timecode,
            server_timestamp,
            producer_timestamp_ms: self.producer_timestamp_ms(timecode).unwrap_or(timecode),
        });
        self.service
            .live
            .publish(&self.stream, LiveEvent::Start(live.clone()));
        self.open = Some(OpenFragment {
            stream_index,
            connection_index: k,
            number: number.clone(),
            timecode,
            live,
        });
        for f in self.service.faults.take_at_fragment(k) {
            self.apply_fault(f).await;
            if self.ended.is_some() {
                return;
            }
        }
        if self.acks_required {
            self.send_ack(
                Ack::fragment(AckEventType::Buffering, timecode, &number),
                Some((stream_index, k)),
            );
        }
    }

    async fn fragment_completed(&mut self, f: ParsedFragment) {
        let Some(open) = self.open.take() else {
            return;
        };
        self.service.live.publish(
            &self.stream,
            LiveEvent::End {
                number: open.live.number.clone(),
                complete: true,
            },
        );
        let scale = self
            .header
            .as_ref()
            .map_or(1_000_000, |h| h.timecode_scale_ns) as u128;
        let duration_ms =
            ((f.last_frame - f.first_frame).max(0) as u128 * scale / 1_000_000) as u64;
        self.service
            .registry
            .update_fragment(&self.stream, open.stream_index, |r| {
                r.size = f.bytes.len() as u64;
                r.duration_ms = duration_ms;
                r.frames_per_track = f.frames_per_track.clone();
                r.key_frames = f.key_frames;
                r.tags = f.tags.clone();
                r.end_of_fragment = f.end_of_fragment;
                r.state = FragmentState::Received;
                r.frame_arrivals = std::mem::take(&mut self.arrivals);
            });
        tracing::debug!(
            session = self.id,
            fragment = open.connection_index,
            timecode = open.timecode,
            size = f.bytes.len(),
            duration_ms,
            "fragment received"
        );
        let target = Some((open.stream_index, open.connection_index));
        if self.acks_required {
            self.send_ack(
                Ack::fragment(AckEventType::Received, open.timecode, &open.number),
                target,
            );
        }
        if !self.persist {
            return;
        }
        let header = self.header.clone().expect("a fragment follows the header");
        let service = self.service.clone();
        let stream = self.stream.clone();
        let incarnation = self.incarnation;
        let bytes = f.bytes.clone();
        let stored = tokio::task::spawn_blocking(move || {
            Store::append(&service.store, &stream, incarnation, &header, &bytes)
        })
        .await;
        match stored {
            Ok(Ok(loc)) => {
                self.service
                    .registry
                    .update_fragment(&self.stream, open.stream_index, |r| {
                        r.state = FragmentState::Persisted;
                        r.stored = Some(loc);
                    });
                if self.acks_required {
                    self.send_ack(
                        Ack::fragment(AckEventType::Persisted, open.timecode, &open.number),
                        target,
                    );
                }
            }
            other => {
                tracing::warn!(session = self.id, result = ?other.map(|r| r.map(|_| ())), "storing a fragment failed");
                self.open = Some(open);
                self.fail(5001, "storing the fragment failed");
            }
        }
    }

    async fn apply_fault(&mut self, fault: ConnectionFault) {
        tracing::info!(
            session = self.id,
            ?fault,
            bytes = self.bytes,
            "injected fault"
        );
        match fault {
            ConnectionFault::Disconnect(how) => {
                // ACKs the server produced before the fault reach the client first.
                if let Some(tx) = &self.ack_tx {
                    let (done_tx, done_rx) = oneshot::channel();
                    if tx.send(Outgoing::Flush(done_tx)).is_ok() {
                        let _ = done_rx.await;
                    }
                }
                self.kill.kill(how);
                self.end(SessionEnd::Disconnected(how));
            }
            ConnectionFault::Stall(d) => {
                let mut shutdown = self.service.shutdown.clone();
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = shutdown.changed() => self.end(SessionEnd::Shutdown),
                }
            }
            ConnectionFault::ErrorAck(id) => {
                if let Some(open) = &self.open
                    && self.acks_required
                {
                    let ack = Ack::fragment(AckEventType::Buffering, open.timecode, &open.number);
                    let target = Some((open.stream_index, open.connection_index));
                    self.send_ack(ack, target);
                }
                self.fail(id, "injected ERROR ACK");
            }
        }
    }

    /// Tells live readers the open fragment will not complete.
    fn give_up(&self, open: &OpenFragment) {
        self.service.live.publish(
            &self.stream,
            LiveEvent::End {
                number: open.live.number.clone(),
                complete: false,
            },
        );
    }

    /// Sends an ERROR ACK for the open fragment (or none) and ends the session.
    fn fail(&mut self, error_id: u32, why: &str) {
        tracing::info!(session = self.id, error_id, why, "ERROR ACK");
        self.fail_open(error_id);
        self.end(SessionEnd::ErrorAck { error_id });
    }

    /// Marks the open fragment failed and sends its ERROR ACK.
    fn fail_open(&mut self, error_id: u32) {
        match self.open.take() {
            Some(open) => {
                self.service
                    .registry
                    .update_fragment(&self.stream, open.stream_index, |r| {
                        r.state = FragmentState::Failed;
                        r.error_id = Some(error_id);
                    });
                self.give_up(&open);
                self.send_ack(
                    Ack::error(error_id, Some((open.timecode, &open.number))),
                    Some((open.stream_index, open.connection_index)),
                );
            }
            None => self.send_ack(Ack::error(error_id, None), None),
        }
    }

    fn rule_broken(&mut self, e: RuleError) {
        tracing::info!(session = self.id, error = %e, "the body breaks a service rule");
        let id = e.kind.error_id();
        if e.fragment_timecode.is_some()
            && self.open.as_ref().map(|o| o.timecode) != e.fragment_timecode
            && let Some(open) = self.open.take()
        {
            self.give_up(&open);
        }
        self.fail(id, &e.detail);
    }

    /// Records an ACK and queues it, unless a fault drops it. `target` is the fragment's
    /// (stream index, connection index).
    fn send_ack(&mut self, ack: Ack, target: Option<(u64, u64)>) {
        let dropped = self
            .service
            .faults
            .should_drop(ack.event_type, target.map(|t| t.1));
        let record = AckRecord {
            ack: ack.clone(),
            sent: !dropped,
            at: SystemTime::now(),
        };
        if let Some((index, _)) = target {
            let r = record.clone();
            self.service
                .registry
                .update_fragment(&self.stream, index, |f| f.acks.push(r));
        }
        self.service
            .registry
            .update_session(self.id, |s| s.acks.push(record));
        if dropped {
            tracing::debug!(session = self.id, ?ack, "ACK dropped by a fault");
            return;
        }
        tracing::trace!(session = self.id, ?ack, "ACK");
        let due = Instant::now() + self.service.faults.ack_delay();
        if let Some(tx) = &self.ack_tx {
            let _ = tx.send(Outgoing::Ack(due, Bytes::from(ack.to_wire())));
        }
    }
}
