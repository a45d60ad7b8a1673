//! The service's state: streams as KVS models them, and what arrived.
//!
//! Owns: streams (name, ARN, version, status with CREATING → ACTIVE and DELETING → gone after the
//! configured delays, retention, media type, KMS key, tags), the per-stream fragment records and
//! PutMedia session records the inspection API returns, the request log (no secrets), and the
//! service errors (`ApiError`) with their status codes and error types.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::ack::Ack;
use super::faults::Disconnect;
use super::store::StoredLocation;

const MAX_TAGS_PER_STREAM: usize = 50;
const REQUEST_LOG_CAP: usize = 10_000;

/// Stream status as DescribeStream reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StreamStatus {
    Creating,
    Active,
    Updating,
    Deleting,
}

impl StreamStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamStatus::Creating => "CREATING",
            StreamStatus::Active => "ACTIVE",
            StreamStatus::Updating => "UPDATING",
            StreamStatus::Deleting => "DELETING",
        }
    }
}

/// A stream, as DescribeStream shows it, plus its tags.
#[derive(Debug, Clone, Serialize)]
pub struct StreamInfo {
    pub name: String,
    pub arn: String,
    pub version: String,
    pub status: StreamStatus,
    pub device_name: Option<String>,
    pub media_type: Option<String>,
    pub kms_key_id: String,
    pub data_retention_in_hours: u32,
    pub creation_time: SystemTime,
    pub tags: BTreeMap<String, String>,
}

/// Where a fragment got to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum FragmentState {
    /// Being received.
    Buffering,
    /// Completely received (final state when the stream has no retention).
    Received,
    /// Stored.
    Persisted,
    /// Answered with an ERROR ACK (or cut off with its connection); not stored.
    Failed,
}

/// An ACK the server produced, and whether a fault dropped it instead of sending it.
#[derive(Debug, Clone, Serialize)]
pub struct AckRecord {
    pub ack: Ack,
    pub sent: bool,
    pub at: SystemTime,
}

/// A fragment that arrived on a stream.
#[derive(Debug, Clone, Serialize)]
pub struct FragmentInfo {
    /// Position among the stream's fragments (0-based, every fragment that began).
    pub index: u64,
    /// PutMedia session that carried it.
    pub session_id: u64,
    /// Position within that session (0-based): what fault triggers count.
    pub connection_index: u64,
    pub fragment_number: String,
    /// Cluster Timecode (TimecodeScale units), as in the ACKs.
    pub timecode: u64,
    /// `producer_timestamp` as the service computes it, in ms.
    pub producer_timestamp_ms: Option<u64>,
    /// When the server started receiving the fragment.
    pub server_timestamp: SystemTime,
    /// Span of its frames' timecodes, in ms.
    pub duration_ms: u64,
    /// Bytes (metadata Tags + Cluster + a closing EoFR Tags).
    pub size: u64,
    pub frames_per_track: BTreeMap<u64, u64>,
    pub key_frames: u64,
    /// Name/value of every SimpleTag of the fragment.
    pub tags: Vec<(String, String)>,
    /// Closed by an `AWS_KINESISVIDEO_END_OF_FRAGMENT` tag.
    pub end_of_fragment: bool,
    pub state: FragmentState,
    pub error_id: Option<u32>,
    /// ACKs produced for this fragment, in order.
    pub acks: Vec<AckRecord>,
    /// Where its bytes are stored, once persisted.
    pub stored: Option<StoredLocation>,
    /// When each of its blocks was read, in order (only with
    /// [`Config::record_frame_arrivals`](super::Config::record_frame_arrivals)).
    pub frame_arrivals: Vec<FrameArrival>,
}

/// A block of a fragment and when the endpoint had read all of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FrameArrival {
    /// Track number.
    pub track: u64,
    /// Absolute timecode (TimecodeScale units).
    pub timecode: i64,
    /// Wall clock, µs since the Unix epoch.
    pub at_unix_us: u64,
}

/// Why a PutMedia session ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum SessionEnd {
    /// The request body ended; the response was completed.
    BodyEnded,
    /// An ERROR ACK was sent and the response completed.
    ErrorAck { error_id: u32 },
    /// A fault ended the connection.
    Disconnected(Disconnect),
    /// Reading the request body failed (the client went away).
    ReadError(String),
    /// No data for the idle timeout; the response was completed.
    IdleTimeout,
    /// The endpoint shut down.
    Shutdown,
}

/// A PutMedia request.
#[derive(Debug, Clone, Serialize)]
pub struct SessionInfo {
    pub id: u64,
    pub stream: String,
    pub peer: String,
    pub started: SystemTime,
    pub ended: Option<SystemTime>,
    pub fragment_timecode_type: String,
    pub producer_start_timestamp: Option<String>,
    pub bytes_received: u64,
    pub fragments: u64,
    /// Every ACK of the session, IDLE and fragment-less ERRORs included.
    pub acks: Vec<AckRecord>,
    pub end: Option<SessionEnd>,
}

/// One request, as logged (never a secret: no Authorization, no keys but the access key id).
#[derive(Debug, Clone, Serialize)]
pub struct RequestRecord {
    pub at: SystemTime,
    pub peer: String,
    pub method: String,
    pub path: String,
    pub operation: String,
    pub stream: Option<String>,
    pub access_key_id: Option<String>,
    pub status: u16,
    pub error_type: Option<String>,
}

/// An error answer of the service.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {error_type}: {message}")]
pub struct ApiError {
    pub status: u16,
    pub error_type: String,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, error_type: &str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            error_type: error_type.to_owned(),
            message: message.into(),
        }
    }

    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(400, "InvalidArgumentException", message)
    }

    pub fn not_found() -> Self {
        Self::new(
            404,
            "ResourceNotFoundException",
            "The requested stream is not found or not active.",
        )
    }

    pub fn in_use(message: impl Into<String>) -> Self {
        Self::new(400, "ResourceInUseException", message)
    }
}

/// What CreateStream asks for.
#[derive(Debug, Clone, Default)]
pub struct CreateStream {
    pub name: String,
    pub device_name: Option<String>,
    pub media_type: Option<String>,
    pub kms_key_id: Option<String>,
    pub data_retention_in_hours: u32,
    pub tags: BTreeMap<String, String>,
}

/// Identifies a stream by name or ARN.
#[derive(Debug, Clone)]
pub enum StreamRef {
    Name(String),
    Arn(String),
}

#[derive(Debug)]
struct StreamEntry {
    info: StreamInfo,
    incarnation: u64,
    active_at: Instant,
    deleted_at: Option<Instant>,
    fragments: Vec<FragmentInfo>,
    active_sessions: usize,
}

impl StreamEntry {
    fn refresh(&mut self, now: Instant) {
        self.info.status = match self.deleted_at {
            Some(_) => StreamStatus::Deleting,
            None if now < self.active_at => StreamStatus::Creating,
            None => StreamStatus::Active,
        };
    }
}

/// Settings of the registry, from the endpoint configuration.
#[derive(Debug, Clone)]
pub(crate) struct RegistrySettings {
    pub region: String,
    pub account_id: String,
    pub activation_delay: Duration,
    pub deletion_delay: Duration,
    pub max_sessions_per_stream: usize,
}

#[derive(Debug, Default)]
struct State {
    streams: BTreeMap<String, StreamEntry>,
    sessions: Vec<SessionInfo>,
    requests: Vec<RequestRecord>,
}

/// The service state, behind one lock (never held across an await).
#[derive(Debug)]
pub(crate) struct Registry {
    settings: RegistrySettings,
    state: Mutex<State>,
    counter: AtomicU64,
}

impl Registry {
    pub fn new(settings: RegistrySettings) -> Self {
        Registry {
            settings,
            state: Mutex::new(State::default()),
            counter: AtomicU64::new(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        s.streams
            .retain(|_, e| e.deleted_at.is_none_or(|t| now < t));
        for e in s.streams.values_mut() {
            e.refresh(now);
        }
        s
    }

    pub fn next_id(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::Relaxed)
    }

    /// A fresh 20-character version string, as the service's.
    fn new_version(&self) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let mut x = pseudo_random(self.next_id());
        (0..20)
            .map(|_| {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ALPHABET[(x >> 33) as usize % ALPHABET.len()] as char
            })
            .collect()
    }

    /// A fresh 47-digit fragment number, increasing over the endpoint's life.
    pub fn new_fragment_number(&self) -> String {
        format!("91343852333181432392682{:024}", self.next_id())
    }

    fn find<'a>(state: &'a mut State, r: &StreamRef) -> Option<&'a mut StreamEntry> {
        match r {
            StreamRef::Name(n) => state.streams.get_mut(n),
            StreamRef::Arn(a) => state.streams.values_mut().find(|e| &e.info.arn == a),
        }
    }

    pub fn create_stream(&self, req: CreateStream) -> Result<StreamInfo, ApiError> {
        validate_stream_name(&req.name)?;
        if req.tags.len() > MAX_TAGS_PER_STREAM {
            return Err(ApiError::new(
                400,
                "TagsPerResourceExceededLimitException",
                format!("A stream can have at most {MAX_TAGS_PER_STREAM} tags."),
            ));
        }
        for (k, v) in &req.tags {
            validate_tag(k, v)?;
        }
        let mut s = self.lock();
        if s.streams.contains_key(&req.name) {
            return Err(ApiError::in_use(format!(
                "The stream {} already exists.",
                req.name
            )));
        }
        let created = SystemTime::now();
        let ms = created
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let arn = format!(
            "arn:aws:kinesisvideo:{}:{}:stream/{}/{}",
            self.settings.region, self.settings.account_id, req.name, ms
        );
        let kms_key_id = req.kms_key_id.clone().unwrap_or_else(|| {
            format!(
                "arn:aws:kms:{}:{}:alias/aws/kinesisvideo",
                self.settings.region, self.settings.account_id
            )
        });
        let now = Instant::now();
        let mut entry = StreamEntry {
            info: StreamInfo {
                name: req.name.clone(),
                arn,
                version: self.new_version(),
                status: StreamStatus::Creating,
                device_name: req.device_name,
                media_type: req.media_type,
                kms_key_id,
                data_retention_in_hours: req.data_retention_in_hours,
                creation_time: created,
                tags: req.tags,
            },
            incarnation: self.next_id(),
            active_at: now + self.settings.activation_delay,
            deleted_at: None,
            fragments: Vec::new(),
            active_sessions: 0,
        };
        entry.refresh(now);
        let info = entry.info.clone();
        s.streams.insert(req.name, entry);
        Ok(info)
    }

    pub fn describe(&self, r: &StreamRef) -> Result<StreamInfo, ApiError> {
        let mut s = self.lock();
        Self::find(&mut s, r)
            .map(|e| e.info.clone())
            .ok_or_else(ApiError::not_found)
    }

    pub fn list(&self) -> Vec<StreamInfo> {
        self.lock()
            .streams
            .values()
            .map(|e| e.info.clone())
            .collect()
    }

    pub fn delete(&self, arn: &str, current_version: Option<&str>) -> Result<(), ApiError> {
        let mut s = self.lock();
        let delay = self.settings.deletion_delay;
        let e =
            Self::find(&mut s, &StreamRef::Arn(arn.to_owned())).ok_or_else(ApiError::not_found)?;
        if let Some(v) = current_version
            && v != e.info.version
        {
            return Err(ApiError::new(
                400,
                "VersionMismatchException",
                "The stream version that you specified is not the latest version.",
            ));
        }
        if e.deleted_at.is_some() {
            return Err(ApiError::in_use("The stream is being deleted."));
        }
        let now = Instant::now();
        e.deleted_at = Some(now + delay);
        let name = e.info.name.clone();
        if delay.is_zero() {
            s.streams.remove(&name);
        } else if let Some(e) = s.streams.get_mut(&name) {
            e.refresh(now);
        }
        Ok(())
    }

    pub fn tag(&self, r: &StreamRef, tags: BTreeMap<String, String>) -> Result<(), ApiError> {
        for (k, v) in &tags {
            validate_tag(k, v)?;
        }
        let mut s = self.lock();
        let e = Self::find(&mut s, r).ok_or_else(ApiError::not_found)?;
        let mut merged = e.info.tags.clone();
        merged.extend(tags);
        if merged.len() > MAX_TAGS_PER_STREAM {
            return Err(ApiError::new(
                400,
                "TagsPerResourceExceededLimitException",
                format!("A stream can have at most {MAX_TAGS_PER_STREAM} tags."),
            ));
        }
        e.info.tags = merged;
        Ok(())
    }

    pub fn untag(&self, r: &StreamRef, keys: &[String]) -> Result<(), ApiError> {
        let mut s = self.lock();
        let e = Self::find(&mut s, r).ok_or_else(ApiError::not_found)?;
        for k in keys {
            e.info.tags.remove(k);
        }
        Ok(())
    }

    /// Starts a PutMedia session: the stream must be ACTIVE and below its connection limit.
    /// Returns (incarnation, retention hours).
    pub fn begin_session(&self, session: SessionInfo) -> Result<(u64, u32), ApiError> {
        let mut s = self.lock();
        let max = self.settings.max_sessions_per_stream;
        let e = Self::find(&mut s, &StreamRef::Name(session.stream.clone()))
            .filter(|e| e.info.status == StreamStatus::Active)
            .ok_or_else(ApiError::not_found)?;
        if e.active_sessions >= max {
            return Err(ApiError::new(
                400,
                "ConnectionLimitExceededException",
                "Kinesis Video Streams has throttled the request because you have exceeded the limit of allowed client connections.",
            ));
        }
        e.active_sessions += 1;
        let r = (e.incarnation, e.info.data_retention_in_hours);
        s.sessions.push(session);
        Ok(r)
    }

    pub fn end_session(&self, id: u64, end: SessionEnd) {
        let mut s = self.lock();
        let Some(sess) = s.sessions.iter_mut().find(|x| x.id == id) else {
            return;
        };
        if sess.end.is_some() {
            return;
        }
        sess.end = Some(end);
        sess.ended = Some(SystemTime::now());
        let stream = sess.stream.clone();
        if let Some(e) = s.streams.get_mut(&stream) {
            e.active_sessions = e.active_sessions.saturating_sub(1);
        }
    }

    /// Whether the stream still exists as the same incarnation and is ACTIVE.
    pub fn stream_active(&self, name: &str, incarnation: u64) -> bool {
        self.lock()
            .streams
            .get(name)
            .is_some_and(|e| e.incarnation == incarnation && e.info.status == StreamStatus::Active)
    }

    pub fn update_session(&self, id: u64, f: impl FnOnce(&mut SessionInfo)) {
        let mut s = self.lock();
        if let Some(sess) = s.sessions.iter_mut().find(|x| x.id == id) {
            f(sess);
        }
    }

    /// Adds a fragment record; returns its stream index.
    pub fn add_fragment(&self, stream: &str, mut info: FragmentInfo) -> Option<u64> {
        let mut s = self.lock();
        let e = s.streams.get_mut(stream)?;
        info.index = e.fragments.len() as u64;
        e.fragments.push(info);
        Some(e.fragments.len() as u64 - 1)
    }

    pub fn update_fragment(&self, stream: &str, index: u64, f: impl FnOnce(&mut FragmentInfo)) {
        let mut s = self.lock();
        if let Some(frag) = s
            .streams
            .get_mut(stream)
            .and_then(|e| e.fragments.get_mut(index as usize))
        {
            f(frag);
        }
    }

    /// The fragment of `stream` at `index` (arrival order).
    pub fn fragment(&self, stream: &str, index: usize) -> Option<FragmentInfo> {
        self.lock()
            .streams
            .get(stream)
            .and_then(|e| e.fragments.get(index).cloned())
    }

    pub fn fragments(&self, stream: &str) -> Vec<FragmentInfo> {
        self.lock()
            .streams
            .get(stream)
            .map(|e| e.fragments.clone())
            .unwrap_or_default()
    }

    pub fn sessions(&self) -> Vec<SessionInfo> {
        self.lock().sessions.clone()
    }

    pub fn log_request(&self, r: RequestRecord) {
        let mut s = self.lock();
        if s.requests.len() >= REQUEST_LOG_CAP {
            s.requests.remove(0);
        }
        s.requests.push(r);
    }

    pub fn requests(&self) -> Vec<RequestRecord> {
        self.lock().requests.clone()
    }
}

fn pseudo_random(seed: u64) -> u64 {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    let mut x = t ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (std::process::id() as u64) << 32;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^ (x >> 33)
}

/// Stream names: 1–256 characters of `[a-zA-Z0-9_.-]`.
pub fn validate_stream_name(name: &str) -> Result<(), ApiError> {
    if name.is_empty()
        || name.len() > 256
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err(ApiError::invalid_argument(format!(
            "1 validation error detected: Value '{name}' at 'streamName' failed to satisfy constraint: Member must satisfy regular expression pattern: [a-zA-Z0-9_.-]+"
        )));
    }
    Ok(())
}

fn validate_tag(key: &str, value: &str) -> Result<(), ApiError> {
    if key.is_empty() || key.chars().count() > 128 || value.chars().count() > 256 {
        return Err(ApiError::invalid_argument(
            "Tag keys must have 1 to 128 characters and tag values at most 256.",
        ));
    }
    Ok(())
}
