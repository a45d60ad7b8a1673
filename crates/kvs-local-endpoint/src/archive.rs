//! The archived-media reads of `kinesis-video-archived-media`: ListFragments
//! (`POST /listFragments`) and GetMediaForFragmentList (`POST /getMediaForFragmentList`).
//!
//! Owns: listing the stream's persisted fragments (number, size, producer and server timestamps,
//! length) in a timestamp range, with pages of `MaxResults` (1–1000, default 100) and an opaque
//! `NextToken`; and the `video/webm` body of the fragments a list names, one chunk each
//! ([`super::chunk`], GetMediaForFragmentList's tag names) in the order asked.
//!
//! Choices where the service is not specified: fragments are listed in arrival order (the
//! service promises no order); a fragment is in a range when its start timestamp is in it (both
//! ends included); the `FragmentSelector` may be left out (all persisted fragments), with a
//! `NextToken` the selector of the first page still applies; a list naming a fragment that is not
//! persisted on the stream is refused as a whole with `ResourceNotFoundException` before any
//! media is sent.

use bytes::Bytes;
use http::Response;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use super::chunk::{self, Flavor};
use super::control;
use super::media::{HeaderCache, media_response, producer_ms, stored_chunk};
use super::model::{ApiError, FragmentInfo, FragmentState};
use super::server::{ResponseBody, Service};

pub(crate) const LIST_FRAGMENTS: &str = "/listFragments";
pub(crate) const GET_MEDIA_FOR_FRAGMENT_LIST: &str = "/getMediaForFragmentList";

const MAX_FRAGMENT_LIST: usize = 1000;

fn seconds_value(ms: u64) -> Value {
    json!(ms as f64 / 1000.0)
}

fn timestamp(v: Option<&Value>, name: &str) -> Result<u64, ApiError> {
    match v.and_then(Value::as_f64) {
        Some(s) if s.is_finite() && s >= 0.0 => Ok((s * 1000.0).round() as u64),
        _ => Err(ApiError::invalid_argument(format!(
            "{name} must be a timestamp."
        ))),
    }
}

/// `(server, start ms, end ms)` of the `FragmentSelector`, if any.
fn selector(body: &Map<String, Value>) -> Result<Option<(bool, u64, u64)>, ApiError> {
    let sel = match body.get("FragmentSelector") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(s)) => s,
        Some(_) => {
            return Err(ApiError::invalid_argument(
                "FragmentSelector must be an object.",
            ));
        }
    };
    let server = match control::opt_string(sel, "FragmentSelectorType")?.as_deref() {
        Some("SERVER_TIMESTAMP") => true,
        Some("PRODUCER_TIMESTAMP") => false,
        other => {
            return Err(ApiError::invalid_argument(format!(
                "1 validation error detected: Value '{}' at 'fragmentSelector.fragmentSelectorType' failed to satisfy constraint: Member must satisfy enum value set: [PRODUCER_TIMESTAMP, SERVER_TIMESTAMP]",
                other.unwrap_or("null")
            )));
        }
    };
    let range = match sel.get("TimestampRange") {
        Some(Value::Object(r)) => r,
        _ => return Err(ApiError::invalid_argument("TimestampRange is required.")),
    };
    let start = timestamp(range.get("StartTimestamp"), "StartTimestamp")?;
    let end = timestamp(range.get("EndTimestamp"), "EndTimestamp")?;
    if start > end {
        return Err(ApiError::invalid_argument(
            "StartTimestamp must be before EndTimestamp.",
        ));
    }
    Ok(Some((server, start, end)))
}

fn fragment_json(f: &FragmentInfo) -> Value {
    json!({
        "FragmentNumber": f.fragment_number,
        "FragmentSizeInBytes": f.size,
        "ProducerTimestamp": seconds_value(producer_ms(f)),
        "ServerTimestamp": seconds_value(chunk::unix_ms(f.server_timestamp)),
        "FragmentLengthInMilliseconds": f.duration_ms,
    })
}

/// ListFragments.
pub(crate) fn list_fragments(
    service: &Service,
    body: &Map<String, Value>,
) -> Result<Value, ApiError> {
    let info = service.registry.describe(&control::stream_ref(body)?)?;
    let max = match body.get("MaxResults") {
        None | Some(Value::Null) => 100,
        Some(v) => v
            .as_u64()
            .filter(|m| (1..=1000).contains(m))
            .ok_or_else(|| ApiError::invalid_argument("MaxResults must be between 1 and 1000."))?
            as usize,
    };
    let from = match control::opt_string(body, "NextToken")? {
        None => 0,
        Some(t) => t
            .strip_prefix("F")
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| ApiError::invalid_argument("Invalid NextToken."))?,
    };
    let range = selector(body)?;
    let matching: Vec<FragmentInfo> = service
        .registry
        .fragments(&info.name)
        .into_iter()
        .filter(|f| f.state == FragmentState::Persisted && f.index as usize >= from)
        .filter(|f| {
            range.is_none_or(|(server, start, end)| {
                let t = if server {
                    chunk::unix_ms(f.server_timestamp)
                } else {
                    producer_ms(f)
                };
                (start..=end).contains(&t)
            })
        })
        .collect();
    let page: Vec<Value> = matching.iter().take(max).map(fragment_json).collect();
    let mut out = json!({ "Fragments": page });
    if matching.len() > max {
        out["NextToken"] = Value::String(format!("F{}", matching[max].index));
    }
    Ok(out)
}

/// GetMediaForFragmentList.
pub(crate) fn get_media_for_fragment_list(
    service: &Service,
    body: &Map<String, Value>,
    request_id: &str,
) -> Result<Response<ResponseBody>, ApiError> {
    let info = service.registry.describe(&control::stream_ref(body)?)?;
    let numbers: Vec<String> = match body.get("Fragments") {
        Some(Value::Array(a)) if !a.is_empty() && a.len() <= MAX_FRAGMENT_LIST => a
            .iter()
            .map(|n| {
                n.as_str()
                    .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                    .map(str::to_owned)
                    .ok_or_else(|| {
                        ApiError::invalid_argument("Fragments must be fragment numbers.")
                    })
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(ApiError::invalid_argument(format!(
                "Fragments must list 1 to {MAX_FRAGMENT_LIST} fragment numbers."
            )));
        }
    };
    let all = service.registry.fragments(&info.name);
    let mut selected = Vec::with_capacity(numbers.len());
    for n in &numbers {
        match all
            .iter()
            .find(|f| &f.fragment_number == n && f.state == FragmentState::Persisted)
        {
            Some(f) => selected.push(f.clone()),
            None => {
                return Err(ApiError::new(
                    404,
                    "ResourceNotFoundException",
                    format!("Fragment {n} was not found on the stream."),
                ));
            }
        }
    }
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let mut headers = HeaderCache::new();
        for f in selected {
            let Some((start, blocks)) = stored_chunk(&f, &mut headers, Flavor::FragmentList).await
            else {
                tracing::warn!(fragment = %f.fragment_number, "stored fragment is gone");
                return;
            };
            if tx.send(start).await.is_err() {
                return;
            }
            for b in blocks {
                if tx.send(b).await.is_err() {
                    return;
                }
            }
        }
    });
    Ok(media_response(rx, request_id))
}
