//! The endpoint's page at `/_local/` (unsigned, not part of the KVS API): the streams, their
//! fragments with sizes and ACK history, and a live player.
//!
//! Owns: serving the page (`page/index.html`, `page/page.js`, hand-written, compiled in) and
//! `GET /_local/streams/<name>/hls?PlaybackMode=LIVE|ON_DEMAND`, which opens a 12-hour HLS
//! session without a signature (LIVE: the newest fragments; ON_DEMAND: everything stored) and
//! answers as GetHLSStreamingSessionURL does. The page's player reads that session's playlists
//! and feeds the fMP4 segments to Media Source Extensions; the demo prints such a URL for
//! `ffplay`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Response};
use serde_json::{Map, Value, json};

use super::hls;
use super::model::ApiError;
use super::server::{ResponseBody, Service, full};

const INDEX_HTML: &str = include_str!("page/index.html");
const PAGE_JS: &str = include_str!("page/page.js");

/// Answers the page's paths; `None` for the other `/_local/` paths.
pub(crate) fn serve(
    service: &Arc<Service>,
    path: &str,
    query: &str,
) -> Option<Result<Response<ResponseBody>, ApiError>> {
    match path {
        "/_local/" | "/_local/index.html" => {
            return Some(Ok(text("text/html; charset=utf-8", INDEX_HTML)));
        }
        "/_local/page.js" => return Some(Ok(text("text/javascript; charset=utf-8", PAGE_JS))),
        _ => {}
    }
    let name = path
        .strip_prefix("/_local/streams/")
        .and_then(|rest| rest.strip_suffix("/hls"))?;
    Some(session(service, name, query))
}

fn session(service: &Service, name: &str, query: &str) -> Result<Response<ResponseBody>, ApiError> {
    let mode = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("PlaybackMode="))
        .unwrap_or("LIVE");
    let mut body = Map::new();
    body.insert("StreamName".into(), json!(name));
    body.insert("PlaybackMode".into(), json!(mode));
    if mode == "ON_DEMAND" {
        // Everything stored: from the stream's first fragment (server time) until now.
        let first = service
            .registry
            .fragments(name)
            .first()
            .map(|f| f.server_timestamp)
            .unwrap_or_else(SystemTime::now);
        let secs = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64()
        };
        body.insert(
            "HLSFragmentSelector".into(),
            json!({
                "FragmentSelectorType": "SERVER_TIMESTAMP",
                "TimestampRange": {
                    "StartTimestamp": secs(first) - 1.0,
                    "EndTimestamp": secs(SystemTime::now() + Duration::from_secs(1)),
                }
            }),
        );
    }
    // The longest session the service allows (12 h), so the page's player keeps playing.
    body.insert("Expires".into(), json!(43_200));
    let url = hls::create_session(service, &body)?;
    let v: Value = json!({ "HLSStreamingSessionURL": url });
    Ok(text(
        "application/json",
        serde_json::to_string(&v).expect("JSON values serialize"),
    ))
}

fn text(content_type: &'static str, body: impl Into<bytes::Bytes>) -> Response<ResponseBody> {
    let mut resp = Response::new(full(body));
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static(content_type));
    resp.headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-store"));
    resp
}
