//! Fault injection, programmable from tests and from the command line.
//!
//! Owns: the set of armed faults and the questions the server asks it. Connection faults
//! (close/reset after N body bytes or at fragment K, stall, ERROR ACK for fragment K) are one-shot:
//! the first PutMedia connection that reaches the trigger consumes them. `K` counts the fragments
//! of that connection from 0; bytes count its request body. ACK delay and ACK dropping stay in
//! force until cleared. HTTP faults answer the next N matching requests with an error. Expired
//! credentials make every request signed with the credentials known at that moment fail with
//! `ExpiredTokenException` until new ones are added (credentials can also expire by themselves:
//! `Config::credential_lifetime`, `LocalEndpoint::add_credentials_expiring`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::Credentials;
use super::ack::AckEventType;

/// Where in a PutMedia connection a one-shot fault fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// Once this many request body bytes have been received.
    Bytes(u64),
    /// When fragment K (0-based, within the connection) begins, before its BUFFERING ACK.
    Fragment(u64),
}

/// How a connection is ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Disconnect {
    /// TCP FIN mid-response: the client sees the response end without its final chunk.
    Close,
    /// TCP RST (`SO_LINGER` 0): the client sees a connection reset.
    Reset,
}

/// Which ACKs to drop.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckDrop {
    /// Event types to drop; empty drops every type.
    pub event_types: Vec<AckEventType>,
    /// Only ACKs of this fragment (0-based within the connection); `None`: every fragment.
    pub fragment: Option<u64>,
    /// Stop after dropping this many; `None`: until cleared.
    pub count: Option<u32>,
}

/// An HTTP error answer for the control plane (or PutMedia before it streams).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpFault {
    pub status: u16,
    pub error_type: String,
    pub message: String,
    /// Operation name (`DescribeStream`, `PutMedia`, `GetIotCredentials`, …) this applies to;
    /// `None`: any control-plane call (PutMedia and the IoT credentials endpoint are never
    /// matched by `None`).
    pub operation: Option<String>,
}

impl HttpFault {
    pub fn new(status: u16, error_type: &str, message: &str) -> Self {
        HttpFault {
            status,
            error_type: error_type.to_owned(),
            message: message.to_owned(),
            operation: None,
        }
    }

    /// 500 `InternalFailure`.
    pub fn internal_error() -> Self {
        Self::new(
            500,
            "InternalFailure",
            "The request processing has failed because of an unknown error, exception or failure.",
        )
    }

    /// 503 `ServiceUnavailableException`.
    pub fn service_unavailable() -> Self {
        Self::new(
            503,
            "ServiceUnavailableException",
            "The service is unavailable. Please try again later.",
        )
    }

    /// 400 `ClientLimitExceededException`: the service's throttling answer.
    pub fn throttling() -> Self {
        Self::new(
            400,
            "ClientLimitExceededException",
            "Kinesis Video Streams has throttled the request because you have exceeded the limit of allowed client calls. Try making the call later.",
        )
    }

    /// 404 `ResourceNotFoundException`.
    pub fn not_found() -> Self {
        Self::new(
            404,
            "ResourceNotFoundException",
            "The requested stream is not found or not active.",
        )
    }

    /// 401 `NotAuthorizedException`.
    pub fn not_authorized() -> Self {
        Self::new(
            401,
            "NotAuthorizedException",
            "The caller is not authorized to perform this operation.",
        )
    }

    /// Restricts the fault to one operation, e.g. `"DescribeStream"` or `"PutMedia"`.
    pub fn for_operation(mut self, operation: &str) -> Self {
        self.operation = Some(operation.to_owned());
        self
    }

    fn matches(&self, operation: &str) -> bool {
        match &self.operation {
            Some(op) => op == operation,
            None => operation != "PutMedia" && operation != super::iot::IOT_OPERATION,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) enum ConnectionFault {
    Disconnect(Disconnect),
    Stall(Duration),
    ErrorAck(u32),
}

#[derive(Debug, Default)]
pub(crate) struct FaultState {
    connection: Vec<(Trigger, ConnectionFault)>,
    ack_delay: Duration,
    ack_drops: Vec<AckDrop>,
    http: Vec<(u32, HttpFault)>,
    uplink_bps: Option<u64>,
}

/// A credential the endpoint accepts.
#[derive(Debug, Clone)]
pub(crate) struct KeyEntry {
    pub credentials: Credentials,
    /// From this moment on, requests signed with it get `ExpiredTokenException`.
    pub expires_at: Option<SystemTime>,
}

impl KeyEntry {
    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.expires_at.is_some_and(|t| now >= t)
    }
}

/// The handle to program faults; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    pub(crate) state: Arc<Mutex<FaultState>>,
    pub(crate) keys: Arc<Mutex<Vec<KeyEntry>>>,
}

impl FaultState {
    pub(crate) fn byte_triggers(&self) -> impl Iterator<Item = u64> + '_ {
        self.connection.iter().filter_map(|(t, _)| match t {
            Trigger::Bytes(n) => Some(*n),
            Trigger::Fragment(_) => None,
        })
    }
}

impl Faults {
    fn lock(&self) -> std::sync::MutexGuard<'_, FaultState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends the next PutMedia connection that reaches `trigger`.
    pub fn disconnect(&self, trigger: Trigger, how: Disconnect) {
        self.lock()
            .connection
            .push((trigger, ConnectionFault::Disconnect(how)));
    }

    /// Closes (FIN) the next PutMedia connection after `n` body bytes.
    pub fn close_after_bytes(&self, n: u64) {
        self.disconnect(Trigger::Bytes(n), Disconnect::Close);
    }

    /// Resets (RST) the next PutMedia connection after `n` body bytes.
    pub fn reset_after_bytes(&self, n: u64) {
        self.disconnect(Trigger::Bytes(n), Disconnect::Reset);
    }

    /// Closes (FIN) the next PutMedia connection when its fragment `k` begins.
    pub fn close_at_fragment(&self, k: u64) {
        self.disconnect(Trigger::Fragment(k), Disconnect::Close);
    }

    /// Resets (RST) the next PutMedia connection when its fragment `k` begins.
    pub fn reset_at_fragment(&self, k: u64) {
        self.disconnect(Trigger::Fragment(k), Disconnect::Reset);
    }

    /// Stops reading the request body (and sending ACKs) for `duration` at `trigger`.
    pub fn stall(&self, trigger: Trigger, duration: Duration) {
        self.lock()
            .connection
            .push((trigger, ConnectionFault::Stall(duration)));
    }

    /// Answers fragment `k` of the next connection that reaches it with an ERROR ACK carrying
    /// `error_id` (and its ErrorCode) instead of RECEIVED/PERSISTED, then ends the response.
    pub fn error_ack(&self, k: u64, error_id: u32) {
        self.lock()
            .connection
            .push((Trigger::Fragment(k), ConnectionFault::ErrorAck(error_id)));
    }

    /// Sends every ACK `delay` after the event it reports (order is kept).
    pub fn delay_acks(&self, delay: Duration) {
        self.lock().ack_delay = delay;
    }

    /// Drops ACKs matching `drop` instead of sending them.
    pub fn drop_acks(&self, drop: AckDrop) {
        self.lock().ack_drops.push(drop);
    }

    /// Answers the next `n` requests that `fault` matches with it.
    pub fn fail_requests(&self, n: u32, fault: HttpFault) {
        if n > 0 {
            self.lock().http.push((n, fault));
        }
    }

    /// Marks every credential known now as expired (`ExpiredTokenException`).
    pub fn expire_credentials(&self) {
        let now = SystemTime::now();
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        for k in keys.iter_mut() {
            if !k.is_expired(now) {
                k.expires_at = Some(now);
            }
        }
    }

    /// Disarms everything (expired credentials stay expired).
    pub fn clear(&self) {
        let mut s = self.lock();
        s.connection.clear();
        s.ack_delay = Duration::ZERO;
        s.ack_drops.clear();
        s.http.clear();
        s.uplink_bps = None;
    }

    pub(crate) fn take_http_fault(&self, operation: &str) -> Option<HttpFault> {
        let mut s = self.lock();
        let i = s.http.iter().position(|(_, f)| f.matches(operation))?;
        let fault = s.http[i].1.clone();
        s.http[i].0 -= 1;
        if s.http[i].0 == 0 {
            s.http.remove(i);
        }
        Some(fault)
    }

    /// Consumes the connection faults whose trigger is reached by `bytes` received so far.
    pub(crate) fn take_at_bytes(&self, bytes: u64) -> Vec<ConnectionFault> {
        self.take_where(|t| matches!(t, Trigger::Bytes(n) if bytes >= *n))
    }

    /// Consumes the connection faults triggered by the start of fragment `k`.
    pub(crate) fn take_at_fragment(&self, k: u64) -> Vec<ConnectionFault> {
        self.take_where(|t| *t == Trigger::Fragment(k))
    }

    fn take_where(&self, pred: impl Fn(&Trigger) -> bool) -> Vec<ConnectionFault> {
        let mut s = self.lock();
        let mut out = Vec::new();
        s.connection.retain(|(t, f)| {
            if pred(t) {
                out.push(f.clone());
                false
            } else {
                true
            }
        });
        out
    }

    /// Emulates a device's uplink: every PutMedia connection's body is read at most this fast
    /// (bits per second; `None`: as fast as it comes). Takes effect at once, also on
    /// connections already streaming.
    pub fn limit_uplink(&self, bits_per_second: Option<u64>) {
        self.lock().uplink_bps = bits_per_second.filter(|&b| b > 0);
    }

    pub(crate) fn uplink_bps(&self) -> Option<u64> {
        self.lock().uplink_bps
    }

    pub(crate) fn ack_delay(&self) -> Duration {
        self.lock().ack_delay
    }

    /// Whether to drop this ACK (and count it against the matching rule).
    pub(crate) fn should_drop(&self, event: AckEventType, fragment: Option<u64>) -> bool {
        let mut s = self.lock();
        let Some(i) = s.ack_drops.iter().position(|d| {
            (d.event_types.is_empty() || d.event_types.contains(&event))
                && (d.fragment.is_none() || d.fragment == fragment)
        }) else {
            return false;
        };
        if let Some(count) = s.ack_drops[i].count.as_mut() {
            *count -= 1;
            if *count == 0 {
                s.ack_drops.remove(i);
            }
        }
        true
    }
}
