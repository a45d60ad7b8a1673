//! Playback of stored fragments as the service's archived-media API offers it: HLS sessions
//! (`GetHLSStreamingSessionURL` and the unsigned `/hls/v1/…` URLs of a session) and `GetClip`.
//!
//! Owns: HLS sessions (a random session token → stream, playback mode, fragment selector,
//! expiry, playlist length), the playlists (master → one media playlist carrying video and
//! AAC audio together), the init and media segments (each KVS fragment remuxed by
//! [`super::remux`] into fMP4 and cached), and GetClip's MP4. The API facts used are in
//! `docs/kvs-playback-hls.md`.
//!
//! Choices where this endpoint differs from the service (documented there too): one media
//! playlist holds both tracks (the service gives each track its own); the init segment URL
//! carries the `FragmentNumber` of the first fragment of a stored file, and a new stored file
//! (new codec configuration, new incarnation of the stream) starts with `EXT-X-DISCONTINUITY` and
//! its own `EXT-X-MAP`; the media timeline starts at 0 at the first fragment of each stored file;
//! `MPEG_TS` is refused; G.711 audio is left out.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use rand::RngExt as _;
use serde_json::{Map, Value};

use super::model::{ApiError, FragmentInfo, FragmentState, StreamRef};
use super::remux::{self, Fragmented};
use super::server::{ResponseBody, Service, full};
use super::store::{Store, StoredLocation};

/// Path prefix of a session's unsigned URLs.
pub(crate) const HLS_PREFIX: &str = "/hls/v1/";
/// Remuxed fragments kept in memory.
const CACHE_ENTRIES: usize = 128;
/// A LIVE session needs a fragment this recent.
const LIVE_MAX_AGE: Duration = Duration::from_secs(30);
/// GetClip: at most this many fragments (our limit) and this much media (the service's).
const CLIP_MAX_FRAGMENTS: usize = 1000;
const CLIP_MAX_BYTES: u64 = 100 * 1024 * 1024;

/// The signed operations of this module, by request path.
pub(crate) fn operation(path: &str) -> Option<&'static str> {
    match path {
        "/getHLSStreamingSessionURL" => Some("GetHLSStreamingSessionURL"),
        "/getClip" => Some("GetClip"),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PlaybackMode {
    Live,
    LiveReplay,
    OnDemand,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimestampKind {
    Producer,
    Server,
}

/// Which fragments a session or clip takes: by which timestamp, in which range (ms since epoch).
#[derive(Debug, Clone, Copy)]
struct Selector {
    kind: TimestampKind,
    start_ms: Option<u64>,
    end_ms: Option<u64>,
}

#[derive(Debug, Clone)]
struct Session {
    stream: String,
    mode: PlaybackMode,
    selector: Selector,
    created: SystemTime,
    expires: SystemTime,
    max_results: usize,
}

/// HLS sessions and remuxed fragments.
#[derive(Debug, Default)]
pub(crate) struct Playback {
    sessions: Mutex<HashMap<String, Session>>,
    cache: Mutex<Cache>,
}

#[derive(Debug, Default)]
struct Cache {
    entries: HashMap<(PathBuf, u64), Arc<Fragmented>>,
    order: VecDeque<(PathBuf, u64)>,
}

impl Playback {
    fn session(&self, token: &str) -> Result<Session, ApiError> {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        match sessions.get(token) {
            Some(s) if SystemTime::now() < s.expires => Ok(s.clone()),
            Some(_) => Err(ApiError::new(
                403,
                "NotAuthorizedException",
                "The HLS streaming session has expired.",
            )),
            None => Err(ApiError::new(
                403,
                "NotAuthorizedException",
                "The session token is not valid.",
            )),
        }
    }

    fn add_session(&self, session: Session) -> String {
        const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut rng = rand::rng();
        let token: String = (0..64)
            .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
            .collect();
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let now = SystemTime::now();
        sessions.retain(|_, s| now < s.expires);
        sessions.insert(token.clone(), session);
        token
    }

    /// A stored fragment remuxed (from the cache or now; blocking).
    fn remuxed(&self, header: &[u8], loc: &StoredLocation) -> Result<Arc<Fragmented>, ApiError> {
        let key = (loc.path.clone(), loc.offset);
        if let Some(f) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entries
            .get(&key)
        {
            return Ok(f.clone());
        }
        let mut mkv = header.to_vec();
        mkv.extend_from_slice(&Store::read(loc).map_err(internal)?);
        let f = Arc::new(remux::fragmented(mkv).map_err(remux_error)?);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.entries.insert(key.clone(), f.clone()).is_none() {
            cache.order.push_back(key);
        }
        while cache.order.len() > CACHE_ENTRIES {
            if let Some(old) = cache.order.pop_front() {
                cache.entries.remove(&old);
            }
        }
        Ok(f)
    }
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(500, "InternalFailure", e.to_string())
}

fn remux_error(e: remux::RemuxError) -> ApiError {
    match e {
        remux::RemuxError::NoVideo => ApiError::new(
            400,
            "UnsupportedStreamMediaTypeException",
            "The stream's media is not H.264 or H.265 video (track 1) with optional AAC audio.",
        ),
        e => ApiError::new(500, "InternalFailure", format!("remuxing failed: {e}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Signed operations

/// Runs GetHLSStreamingSessionURL or GetClip (already authenticated).
pub(crate) async fn handle(
    service: Arc<Service>,
    operation: &str,
    body: Map<String, Value>,
) -> Result<Response<ResponseBody>, ApiError> {
    match operation {
        "GetHLSStreamingSessionURL" => {
            let url = create_session(&service, &body)?;
            let json = serde_json::json!({ "HLSStreamingSessionURL": url });
            Ok(respond(
                200,
                "application/json",
                serde_json::to_vec(&json).expect("JSON values serialize"),
            ))
        }
        "GetClip" => {
            let mp4 = tokio::task::spawn_blocking(move || get_clip(&service, &body))
                .await
                .map_err(internal)??;
            Ok(respond(200, "video/mp4", mp4))
        }
        _ => Err(ApiError::new(404, "UnknownOperationException", "")),
    }
}

/// GetHLSStreamingSessionURL: validates the request and opens a session; returns its URL.
pub(crate) fn create_session(
    service: &Service,
    body: &Map<String, Value>,
) -> Result<String, ApiError> {
    let stream = stream_name(service, body)?;
    let mode = match opt_str(body, "PlaybackMode")?.unwrap_or("LIVE") {
        "LIVE" => PlaybackMode::Live,
        "LIVE_REPLAY" => PlaybackMode::LiveReplay,
        "ON_DEMAND" => PlaybackMode::OnDemand,
        other => return Err(enum_error("PlaybackMode", other)),
    };
    match opt_str(body, "ContainerFormat")?.unwrap_or("FRAGMENTED_MP4") {
        "FRAGMENTED_MP4" => {}
        "MPEG_TS" => {
            return Err(ApiError::invalid_argument(
                "This local endpoint serves HLS as FRAGMENTED_MP4 only; MPEG_TS is not implemented.",
            ));
        }
        other => return Err(enum_error("ContainerFormat", other)),
    }
    for (field, allowed) in [
        (
            "DiscontinuityMode",
            &["ALWAYS", "NEVER", "ON_DISCONTINUITY"][..],
        ),
        ("DisplayFragmentTimestamp", &["ALWAYS", "NEVER"][..]),
    ] {
        if let Some(v) = opt_str(body, field)?
            && !allowed.contains(&v)
        {
            return Err(enum_error(field, v));
        }
    }
    let selector = selector(body.get("HLSFragmentSelector"), "HLSFragmentSelector")?;
    let expires = match body.get("Expires") {
        None | Some(Value::Null) => 300,
        Some(v) => match v.as_u64() {
            Some(n) if (300..=43_200).contains(&n) => n,
            _ => {
                return Err(ApiError::invalid_argument(
                    "Expires must be between 300 and 43200 seconds.",
                ));
            }
        },
    };
    let max_results = match body.get("MaxMediaPlaylistFragmentResults") {
        None | Some(Value::Null) => match mode {
            PlaybackMode::OnDemand => 1000,
            _ => 5,
        },
        Some(v) => match v.as_u64() {
            Some(n) if (1..=5000).contains(&n) => n as usize,
            _ => {
                return Err(ApiError::invalid_argument(
                    "MaxMediaPlaylistFragmentResults must be between 1 and 5000.",
                ));
            }
        },
    };
    match mode {
        PlaybackMode::Live if selector.start_ms.is_some() || selector.end_ms.is_some() => {
            return Err(ApiError::invalid_argument(
                "TimestampRange must not be set when PlaybackMode is LIVE.",
            ));
        }
        PlaybackMode::LiveReplay if selector.start_ms.is_none() => {
            return Err(ApiError::invalid_argument(
                "LIVE_REPLAY needs a TimestampRange with a StartTimestamp.",
            ));
        }
        PlaybackMode::OnDemand => check_range(&selector, Duration::from_secs(24 * 3600))?,
        _ => {}
    }
    let session = Session {
        stream: stream.clone(),
        mode,
        selector,
        created: SystemTime::now(),
        expires: SystemTime::now() + Duration::from_secs(expires),
        max_results,
    };
    let now_ms = unix_ms(SystemTime::now());
    let frags = persisted(service, &stream);
    let available = match mode {
        PlaybackMode::Live => frags
            .iter()
            .any(|f| unix_ms(f.server_timestamp) + LIVE_MAX_AGE.as_millis() as u64 >= now_ms),
        _ => !select(&session, &frags).is_empty(),
    };
    if !available {
        return Err(ApiError::new(
            404,
            "ResourceNotFoundException",
            match mode {
                PlaybackMode::Live => "No fragments were ingested in the last 30 seconds.",
                _ => "No fragments were found in the requested timestamp range.",
            },
        ));
    }
    let token = service.playback.add_session(session);
    Ok(format!(
        "{}{HLS_PREFIX}getHLSMasterPlaylist.m3u8?SessionToken={token}",
        service.data_endpoint.trim_end_matches('/')
    ))
}

/// GetClip: the selected fragments of one stored file, remuxed into one MP4 (blocking).
fn get_clip(service: &Service, body: &Map<String, Value>) -> Result<Vec<u8>, ApiError> {
    let stream = stream_name(service, body)?;
    let selector = match body.get("ClipFragmentSelector") {
        Some(v @ Value::Object(_)) => selector(Some(v), "ClipFragmentSelector")?,
        _ => {
            return Err(ApiError::invalid_argument(
                "ClipFragmentSelector is required.",
            ));
        }
    };
    check_range(&selector, Duration::from_secs(24 * 3600))?;
    let frags = persisted(service, &stream);
    let chosen: Vec<&FragmentInfo> = frags.iter().filter(|f| in_range(f, &selector)).collect();
    let Some(first) = chosen.first() else {
        return Err(ApiError::new(
            404,
            "ResourceNotFoundException",
            "No fragments were found in the requested timestamp range.",
        ));
    };
    let path = &first.stored.as_ref().expect("persisted").path;
    // One stored file: a clip has one codec configuration.
    let chosen: Vec<_> = chosen
        .iter()
        .filter(|f| f.stored.as_ref().is_some_and(|s| &s.path == path))
        .collect();
    let bytes: u64 = chosen.iter().map(|f| f.size).sum();
    if chosen.len() > CLIP_MAX_FRAGMENTS || bytes > CLIP_MAX_BYTES {
        return Err(ApiError::invalid_argument(format!(
            "The clip would hold {} fragments ({bytes} bytes); the limits are {CLIP_MAX_FRAGMENTS} fragments and {CLIP_MAX_BYTES} bytes.",
            chosen.len()
        )));
    }
    let mut mkv = file_header(&frags, path)?;
    for f in chosen {
        mkv.extend_from_slice(
            &Store::read(f.stored.as_ref().expect("persisted")).map_err(internal)?,
        );
    }
    remux::clip(mkv).map_err(remux_error)
}

// ---------------------------------------------------------------------------------------------
// Session URLs (unsigned, token checked)

/// Serves `GET /hls/v1/<action>?SessionToken=…`.
pub(crate) async fn serve_session(
    service: Arc<Service>,
    path: &str,
    query: &str,
) -> Result<Response<ResponseBody>, ApiError> {
    let action = path.strip_prefix(HLS_PREFIX).unwrap_or_default().to_owned();
    let params = parse_query(query);
    let token = params
        .get("SessionToken")
        .ok_or_else(|| ApiError::invalid_argument("SessionToken is required."))?
        .clone();
    let session = service.playback.session(&token)?;
    let fragment_number = params.get("FragmentNumber").cloned();
    let service2 = service.clone();
    let work = move || -> Result<Response<ResponseBody>, ApiError> {
        let service = service2;
        match action.as_str() {
            "getHLSMasterPlaylist.m3u8" => {
                Ok(playlist(master_playlist(&service, &session, &token)?))
            }
            "getHLSMediaPlaylist.m3u8" => Ok(playlist(media_playlist(&service, &session, &token)?)),
            "getMP4InitFragment.mp4" => {
                let frags = persisted(&service, &session.stream);
                let f = match &fragment_number {
                    Some(n) => find(&frags, n)?,
                    None => select(&session, &frags)
                        .last()
                        .copied()
                        .ok_or_else(ApiError::not_found)?,
                };
                let (first, _) = file_start(&service, &frags, f)?;
                Ok(respond(200, "video/mp4", first.init.to_vec()))
            }
            "getMP4MediaFragment.mp4" => {
                let n = fragment_number
                    .ok_or_else(|| ApiError::invalid_argument("FragmentNumber is required."))?;
                let frags = persisted(&service, &session.stream);
                let f = find(&frags, &n)?;
                let (first, header) = file_start(&service, &frags, f)?;
                let this = service
                    .playback
                    .remuxed(&header, f.stored.as_ref().expect("persisted"))?;
                let position = frags.iter().position(|x| x.index == f.index).unwrap_or(0);
                let media = this
                    .media_segment(first.first_ns(), (position as u32).wrapping_mul(16) + 1)
                    .map_err(remux_error)?;
                Ok(respond(200, "video/mp4", media))
            }
            "getTSFragment.ts" => Err(ApiError::invalid_argument(
                "This local endpoint serves FRAGMENTED_MP4 sessions only.",
            )),
            _ => Err(ApiError::new(
                404,
                "ResourceNotFoundException",
                "Unknown HLS action.",
            )),
        }
    };
    tokio::task::spawn_blocking(work).await.map_err(internal)?
}

fn master_playlist(service: &Service, session: &Session, token: &str) -> Result<String, ApiError> {
    let frags = persisted(service, &session.stream);
    let chosen = select(session, &frags);
    let mut attrs = String::new();
    let bandwidth = chosen
        .iter()
        .map(|f| f.size * 8 * 1000 / duration_ms(f, &frags).max(1))
        .max()
        .unwrap_or(1_000_000);
    attrs.push_str(&format!("BANDWIDTH={bandwidth}"));
    if let Some(last) = chosen.last()
        && let Ok((first, _)) = file_start(service, &frags, last)
    {
        attrs.push_str(&format!(",CODECS=\"{}\"", first.codecs()));
        if let Some((w, h)) = first.resolution() {
            attrs.push_str(&format!(",RESOLUTION={w}x{h}"));
        }
    }
    Ok(format!(
        "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n#EXT-X-STREAM-INF:{attrs}\ngetHLSMediaPlaylist.m3u8?SessionToken={token}\n"
    ))
}

fn media_playlist(service: &Service, session: &Session, token: &str) -> Result<String, ApiError> {
    if service
        .registry
        .describe(&StreamRef::Name(session.stream.clone()))
        .is_err()
    {
        return Err(ApiError::not_found());
    }
    let frags = persisted(service, &session.stream);
    let chosen = select(session, &frags);
    let durations: Vec<u64> = chosen.iter().map(|f| duration_ms(f, &frags)).collect();
    let target = durations
        .iter()
        .max()
        .copied()
        .unwrap_or(1000)
        .div_ceil(1000);
    let sequence = chosen
        .first()
        .and_then(|f| frags.iter().position(|x| x.index == f.index))
        .unwrap_or(frags.len());
    let mut out = format!(
        "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:{target}\n#EXT-X-MEDIA-SEQUENCE:{sequence}\n#EXT-X-INDEPENDENT-SEGMENTS\n"
    );
    if session.mode == PlaybackMode::OnDemand {
        out.push_str("#EXT-X-PLAYLIST-TYPE:VOD\n");
    }
    let mut file: Option<&PathBuf> = None;
    for (f, d) in chosen.iter().zip(&durations) {
        let path = &f.stored.as_ref().expect("persisted").path;
        if file != Some(path) {
            if file.is_some() {
                out.push_str("#EXT-X-DISCONTINUITY\n");
            }
            let first = frags
                .iter()
                .find(|x| x.stored.as_ref().is_some_and(|s| &s.path == path))
                .expect("the fragment itself is in the file");
            out.push_str(&format!(
                "#EXT-X-MAP:URI=\"getMP4InitFragment.mp4?SessionToken={token}&FragmentNumber={}\"\n",
                first.fragment_number
            ));
            file = Some(path);
        }
        out.push_str(&format!(
            "#EXTINF:{}.{:03},\ngetMP4MediaFragment.mp4?SessionToken={token}&FragmentNumber={}\n",
            d / 1000,
            d % 1000,
            f.fragment_number
        ));
    }
    let ended = match session.mode {
        PlaybackMode::OnDemand => true,
        PlaybackMode::Live => false,
        // Past the range's end and the window shows its last fragment.
        PlaybackMode::LiveReplay => {
            let last_in_range = frags
                .iter()
                .rfind(|f| in_range(f, &session.selector))
                .map(|f| f.index);
            session.selector.end_ms.is_some_and(|end| {
                frags
                    .iter()
                    .any(|f| timestamp_ms(f, session.selector.kind) >= end)
            }) && chosen.last().map(|f| f.index) == last_in_range
        }
    };
    if ended {
        out.push_str("#EXT-X-ENDLIST\n");
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Fragments

/// The stream's persisted fragments, in arrival order.
fn persisted(service: &Service, stream: &str) -> Vec<FragmentInfo> {
    service
        .registry
        .fragments(stream)
        .into_iter()
        .filter(|f| f.state == FragmentState::Persisted && f.stored.is_some())
        .collect()
}

fn find<'a>(frags: &'a [FragmentInfo], number: &str) -> Result<&'a FragmentInfo, ApiError> {
    frags
        .iter()
        .find(|f| f.fragment_number == number)
        .ok_or_else(|| {
            ApiError::new(
                404,
                "ResourceNotFoundException",
                format!("No persisted fragment {number} in the session's stream."),
            )
        })
}

/// The session's fragments: LIVE the newest; ON_DEMAND the first in the range; LIVE_REPLAY a
/// window that starts with the first in the range and moves on in real time (the replay
/// position is the range's start plus the time since the session began).
fn select<'a>(session: &Session, frags: &'a [FragmentInfo]) -> Vec<&'a FragmentInfo> {
    let newest = |v: Vec<&'a FragmentInfo>| {
        let skip = v.len().saturating_sub(session.max_results);
        v[skip..].to_vec()
    };
    let in_range = frags.iter().filter(|f| in_range(f, &session.selector));
    match session.mode {
        PlaybackMode::Live => newest(frags.iter().collect()),
        PlaybackMode::OnDemand => in_range.take(session.max_results).collect(),
        PlaybackMode::LiveReplay => {
            let kind = session.selector.kind;
            let elapsed = SystemTime::now()
                .duration_since(session.created)
                .unwrap_or_default()
                .as_millis() as u64;
            let position = session.selector.start_ms.unwrap_or(0) + elapsed;
            let v: Vec<_> = in_range.collect();
            let first_window = v
                .get(session.max_results.saturating_sub(1))
                .map_or(u64::MAX, |f| timestamp_ms(f, kind));
            let horizon = position.max(first_window);
            newest(
                v.into_iter()
                    .filter(|f| timestamp_ms(f, kind) <= horizon)
                    .collect(),
            )
        }
    }
}

fn timestamp_ms(f: &FragmentInfo, kind: TimestampKind) -> u64 {
    match (kind, f.producer_timestamp_ms) {
        (TimestampKind::Producer, Some(ms)) => ms,
        _ => unix_ms(f.server_timestamp),
    }
}

/// Whether the fragment overlaps the selector's range.
fn in_range(f: &FragmentInfo, s: &Selector) -> bool {
    let start = timestamp_ms(f, s.kind);
    let end = start + f.duration_ms;
    s.start_ms.is_none_or(|a| end >= a) && s.end_ms.is_none_or(|b| start <= b)
}

/// A fragment's playing time: up to the next fragment of the same session, or its frames' span
/// plus one frame.
fn duration_ms(f: &FragmentInfo, frags: &[FragmentInfo]) -> u64 {
    let next = frags
        .iter()
        .skip_while(|x| x.index != f.index)
        .nth(1)
        .filter(|n| n.session_id == f.session_id);
    match (
        next.and_then(|n| n.producer_timestamp_ms),
        f.producer_timestamp_ms,
    ) {
        (Some(b), Some(a)) if b > a && b - a <= f.duration_ms * 2 + 2000 => b - a,
        _ => {
            let frames = f.frames_per_track.get(&1).copied().unwrap_or(1).max(2) - 1;
            f.duration_ms + f.duration_ms / frames
        }
    }
}

/// The header (EBML, Segment, Info, Tracks) of the stored file at `path`: its bytes before the
/// first fragment stored in it.
fn file_header(frags: &[FragmentInfo], path: &PathBuf) -> Result<Vec<u8>, ApiError> {
    let offset = frags
        .iter()
        .filter_map(|f| f.stored.as_ref())
        .filter(|s| &s.path == path)
        .map(|s| s.offset)
        .min()
        .ok_or_else(ApiError::not_found)?;
    Store::read(&StoredLocation {
        path: path.clone(),
        offset: 0,
        len: offset,
    })
    .map_err(internal)
}

/// The first fragment of `f`'s stored file, remuxed (its init segment and time origin), and the
/// file's header.
fn file_start(
    service: &Service,
    frags: &[FragmentInfo],
    f: &FragmentInfo,
) -> Result<(Arc<Fragmented>, Vec<u8>), ApiError> {
    let path = &f.stored.as_ref().expect("persisted").path;
    let header = file_header(frags, path)?;
    let first = frags
        .iter()
        .filter_map(|x| x.stored.as_ref())
        .filter(|s| &s.path == path)
        .min_by_key(|s| s.offset)
        .expect("the fragment itself is in the file");
    Ok((service.playback.remuxed(&header, first)?, header))
}

// ---------------------------------------------------------------------------------------------
// Request fields

fn stream_name(service: &Service, body: &Map<String, Value>) -> Result<String, ApiError> {
    let r = match (opt_str(body, "StreamName")?, opt_str(body, "StreamARN")?) {
        (Some(n), None) => StreamRef::Name(n.to_owned()),
        (None, Some(a)) => StreamRef::Arn(a.to_owned()),
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid_argument(
                "Specify either StreamName or StreamARN, but not both.",
            ));
        }
        (None, None) => {
            return Err(ApiError::invalid_argument(
                "Either StreamName or StreamARN must be specified.",
            ));
        }
    };
    let info = service.registry.describe(&r)?;
    if info.data_retention_in_hours == 0 {
        return Err(ApiError::new(
            400,
            "NoDataRetentionException",
            "The stream has no data retention: nothing is stored to play back.",
        ));
    }
    Ok(info.name)
}

fn opt_str<'a>(body: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::new(
            400,
            "SerializationException",
            format!("{key} must be a string."),
        )),
    }
}

fn enum_error(field: &str, value: &str) -> ApiError {
    ApiError::invalid_argument(format!("'{value}' is not a valid {field}."))
}

/// `{FragmentSelectorType, TimestampRange: {StartTimestamp, EndTimestamp}}`; timestamps are epoch
/// seconds (the SDKs' encoding) or RFC 3339-less numeric strings.
fn selector(v: Option<&Value>, field: &str) -> Result<Selector, ApiError> {
    let empty = Map::new();
    let obj = match v {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(o)) => o,
        Some(_) => {
            return Err(ApiError::new(
                400,
                "SerializationException",
                format!("{field} must be an object."),
            ));
        }
    };
    let kind = match opt_str(obj, "FragmentSelectorType")?.unwrap_or("SERVER_TIMESTAMP") {
        "PRODUCER_TIMESTAMP" => TimestampKind::Producer,
        "SERVER_TIMESTAMP" => TimestampKind::Server,
        other => return Err(enum_error("FragmentSelectorType", other)),
    };
    let (start_ms, end_ms) = match obj.get("TimestampRange") {
        None | Some(Value::Null) => (None, None),
        Some(Value::Object(r)) => (
            timestamp(r.get("StartTimestamp"))?,
            timestamp(r.get("EndTimestamp"))?,
        ),
        Some(_) => {
            return Err(ApiError::new(
                400,
                "SerializationException",
                "TimestampRange must be an object.",
            ));
        }
    };
    Ok(Selector {
        kind,
        start_ms,
        end_ms,
    })
}

fn timestamp(v: Option<&Value>) -> Result<Option<u64>, ApiError> {
    let secs = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.parse::<f64>().ok(),
        Some(_) => None,
    };
    match secs {
        Some(s) if s >= 0.0 => Ok(Some((s * 1000.0).round() as u64)),
        _ => Err(ApiError::new(
            400,
            "SerializationException",
            "Timestamps must be epoch seconds.",
        )),
    }
}

/// ON_DEMAND and GetClip: both ends given, start before end, at most `max` apart.
fn check_range(s: &Selector, max: Duration) -> Result<(), ApiError> {
    match (s.start_ms, s.end_ms) {
        (Some(a), Some(b)) if a < b && b - a <= max.as_millis() as u64 => Ok(()),
        (Some(a), Some(b)) if a >= b => Err(ApiError::invalid_argument(
            "StartTimestamp must be earlier than EndTimestamp.",
        )),
        (Some(_), Some(_)) => Err(ApiError::invalid_argument(
            "The timestamp range must not exceed 24 hours.",
        )),
        _ => Err(ApiError::invalid_argument(
            "A TimestampRange with StartTimestamp and EndTimestamp is required.",
        )),
    }
}

fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

fn playlist(text: String) -> Response<ResponseBody> {
    respond(200, "application/vnd.apple.mpegurl", text.into_bytes())
}

fn respond(
    status: u16,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<ResponseBody> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let h = resp.headers_mut();
    h.insert("content-type", HeaderValue::from_static(content_type));
    // The page's player and browser-based players fetch these from other origins.
    h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_need_both_ends_in_order_within_a_day() {
        let s = |a, b| Selector {
            kind: TimestampKind::Producer,
            start_ms: a,
            end_ms: b,
        };
        let day = Duration::from_secs(24 * 3600);
        assert!(check_range(&s(Some(1), Some(2)), day).is_ok());
        assert!(check_range(&s(Some(2), Some(1)), day).is_err());
        assert!(check_range(&s(Some(1), None), day).is_err());
        assert!(check_range(&s(Some(0), Some(day.as_millis() as u64 + 1)), day).is_err());
    }

    #[test]
    fn timestamps_are_epoch_seconds() {
        assert_eq!(
            timestamp(Some(&serde_json::json!(1.5))).unwrap(),
            Some(1500)
        );
        assert!(timestamp(Some(&serde_json::json!("yesterday"))).is_err());
    }
}
