//! The control plane: the restJson1 operations of `kinesisvideo` (API version 2017-09-30).
//!
//! Owns: request validation and the JSON shapes of CreateStream, DescribeStream, ListStreams,
//! DeleteStream, TagStream, UntagStream, ListTagsForStream and GetDataEndpoint, at the paths
//! `aws-sdk-kinesisvideo` and the C producer use (`POST /describeStream`, …). Errors are
//! [`ApiError`]s, which the server turns into the service's answer (status, `x-amzn-ErrorType`,
//! `{"__type", "Message"}`).

use std::collections::BTreeMap;
use std::time::UNIX_EPOCH;

use serde_json::{Map, Value, json};

use super::model::{ApiError, CreateStream, Registry, StreamInfo, StreamRef};

/// A control-plane operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    CreateStream,
    DescribeStream,
    ListStreams,
    DeleteStream,
    TagStream,
    UntagStream,
    ListTagsForStream,
    GetDataEndpoint,
}

impl Operation {
    pub fn from_path(path: &str) -> Option<Self> {
        Some(match path {
            "/createStream" => Operation::CreateStream,
            "/describeStream" => Operation::DescribeStream,
            "/listStreams" => Operation::ListStreams,
            "/deleteStream" => Operation::DeleteStream,
            "/tagStream" => Operation::TagStream,
            "/untagStream" => Operation::UntagStream,
            "/listTagsForStream" => Operation::ListTagsForStream,
            "/getDataEndpoint" => Operation::GetDataEndpoint,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Operation::CreateStream => "CreateStream",
            Operation::DescribeStream => "DescribeStream",
            Operation::ListStreams => "ListStreams",
            Operation::DeleteStream => "DeleteStream",
            Operation::TagStream => "TagStream",
            Operation::UntagStream => "UntagStream",
            Operation::ListTagsForStream => "ListTagsForStream",
            Operation::GetDataEndpoint => "GetDataEndpoint",
        }
    }
}

const API_NAMES: &[&str] = &[
    "PUT_MEDIA",
    "GET_MEDIA",
    "LIST_FRAGMENTS",
    "GET_MEDIA_FOR_FRAGMENT_LIST",
    "GET_HLS_STREAMING_SESSION_URL",
    "GET_DASH_STREAMING_SESSION_URL",
    "GET_CLIP",
    "GET_IMAGES",
];

/// API names the service knows but this endpoint does not serve: GetDataEndpoint refuses them
/// (InvalidArgumentException) rather than hand out a URL that would only answer
/// UnknownOperationException.
const NOT_SERVED: &[&str] = &["GET_DASH_STREAMING_SESSION_URL", "GET_IMAGES"];

/// The request body, parsed. Also used to name the stream in the request log.
pub fn parse_body(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(ApiError::new(
            400,
            "SerializationException",
            "Could not parse the request body as a JSON object.",
        )),
    }
}

/// The stream a request names, for the request log.
pub fn stream_of(body: &Map<String, Value>) -> Option<String> {
    if let Some(Value::String(n)) = body.get("StreamName") {
        return Some(n.clone());
    }
    match body.get("StreamARN") {
        Some(Value::String(a)) => a.split('/').nth(1).map(str::to_owned),
        _ => None,
    }
}

/// Runs one operation.
pub fn handle(
    registry: &Registry,
    op: Operation,
    body: &Map<String, Value>,
    data_endpoint: &str,
) -> Result<Value, ApiError> {
    match op {
        Operation::CreateStream => {
            let req = CreateStream {
                name: req_string(body, "StreamName")?,
                device_name: opt_string(body, "DeviceName")?,
                media_type: opt_string(body, "MediaType")?,
                kms_key_id: opt_string(body, "KmsKeyId")?,
                data_retention_in_hours: match body.get("DataRetentionInHours") {
                    None | Some(Value::Null) => 0,
                    Some(v) => v
                        .as_u64()
                        .and_then(|h| u32::try_from(h).ok())
                        .ok_or_else(|| {
                            ApiError::invalid_argument(
                                "DataRetentionInHours must be a non-negative integer.",
                            )
                        })?,
                },
                tags: opt_map(body, "Tags")?.unwrap_or_default(),
            };
            if let Some(d) = &req.device_name
                && (d.is_empty() || d.len() > 128)
            {
                return Err(ApiError::invalid_argument(
                    "DeviceName must have 1 to 128 characters.",
                ));
            }
            if let Some(m) = &req.media_type
                && !valid_media_type(m)
            {
                return Err(ApiError::invalid_argument(format!(
                    "1 validation error detected: Value '{m}' at 'mediaType' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\w\\-\\.\\+]+/[\\w\\-\\.\\+]+(,[\\w\\-\\.\\+]+/[\\w\\-\\.\\+]+)*"
                )));
            }
            let info = registry.create_stream(req)?;
            Ok(json!({ "StreamARN": info.arn }))
        }
        Operation::DescribeStream => {
            let info = registry.describe(&stream_ref(body)?)?;
            Ok(json!({ "StreamInfo": stream_info_json(&info) }))
        }
        Operation::ListStreams => {
            let max = match body.get("MaxResults") {
                None | Some(Value::Null) => 10_000,
                Some(v) => v
                    .as_u64()
                    .filter(|m| (1..=10_000).contains(m))
                    .ok_or_else(|| {
                        ApiError::invalid_argument("MaxResults must be between 1 and 10000.")
                    })? as usize,
            };
            let after = opt_string(body, "NextToken")?;
            let prefix = match body.get("StreamNameCondition") {
                None | Some(Value::Null) => None,
                Some(Value::Object(c)) => {
                    match c.get("ComparisonOperator").and_then(Value::as_str) {
                        None | Some("BEGINS_WITH") => {}
                        Some(other) => {
                            return Err(ApiError::invalid_argument(format!(
                                "Unsupported ComparisonOperator {other}."
                            )));
                        }
                    }
                    c.get("ComparisonValue")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                }
                Some(_) => return Err(serialization("StreamNameCondition")),
            };
            let all: Vec<StreamInfo> = registry
                .list()
                .into_iter()
                .filter(|s| {
                    prefix
                        .as_ref()
                        .is_none_or(|p| s.name.starts_with(p.as_str()))
                })
                .filter(|s| after.as_ref().is_none_or(|a| s.name.as_str() > a.as_str()))
                .collect();
            let page: Vec<Value> = all.iter().take(max).map(stream_info_json).collect();
            let mut out = json!({ "StreamInfoList": page });
            if all.len() > max {
                out["NextToken"] = Value::String(all[max - 1].name.clone());
            }
            Ok(out)
        }
        Operation::DeleteStream => {
            let arn = req_string(body, "StreamARN")?;
            validate_arn(&arn)?;
            registry.delete(&arn, opt_string(body, "CurrentVersion")?.as_deref())?;
            Ok(json!({}))
        }
        Operation::TagStream => {
            let r = stream_ref(body)?;
            let tags = opt_map(body, "Tags")?
                .ok_or_else(|| ApiError::invalid_argument("Tags must be specified."))?;
            registry.tag(&r, tags)?;
            Ok(json!({}))
        }
        Operation::UntagStream => {
            let r = stream_ref(body)?;
            let keys: Vec<String> = match body.get("TagKeyList") {
                Some(Value::Array(a)) if !a.is_empty() => a
                    .iter()
                    .map(|k| {
                        k.as_str()
                            .map(str::to_owned)
                            .ok_or_else(|| serialization("TagKeyList"))
                    })
                    .collect::<Result<_, _>>()?,
                Some(Value::Array(_)) | None | Some(Value::Null) => {
                    return Err(ApiError::invalid_argument(
                        "TagKeyList must have 1 to 50 keys.",
                    ));
                }
                Some(_) => return Err(serialization("TagKeyList")),
            };
            registry.untag(&r, &keys)?;
            Ok(json!({}))
        }
        Operation::ListTagsForStream => {
            let info = registry.describe(&stream_ref(body)?)?;
            Ok(json!({ "Tags": info.tags }))
        }
        Operation::GetDataEndpoint => {
            let api = req_string(body, "APIName")?;
            if !API_NAMES.contains(&api.as_str()) {
                return Err(ApiError::invalid_argument(format!(
                    "1 validation error detected: Value '{api}' at 'aPIName' failed to satisfy constraint: Member must satisfy enum value set: [{}]",
                    API_NAMES.join(", ")
                )));
            }
            registry.describe(&stream_ref(body)?)?;
            if NOT_SERVED.contains(&api.as_str()) {
                return Err(ApiError::invalid_argument(format!(
                    "This local KVS endpoint does not serve {api} (no MPEG-DASH, no images); it serves PUT_MEDIA, GET_MEDIA, LIST_FRAGMENTS, GET_MEDIA_FOR_FRAGMENT_LIST, GET_HLS_STREAMING_SESSION_URL and GET_CLIP."
                )));
            }
            Ok(json!({ "DataEndpoint": data_endpoint }))
        }
    }
}

/// DescribeStream's `StreamInfo`.
pub fn stream_info_json(info: &StreamInfo) -> Value {
    let mut m = Map::new();
    if let Some(d) = &info.device_name {
        m.insert("DeviceName".into(), d.clone().into());
    }
    m.insert("StreamName".into(), info.name.clone().into());
    m.insert("StreamARN".into(), info.arn.clone().into());
    if let Some(t) = &info.media_type {
        m.insert("MediaType".into(), t.clone().into());
    }
    m.insert("KmsKeyId".into(), info.kms_key_id.clone().into());
    m.insert("Version".into(), info.version.clone().into());
    m.insert("Status".into(), info.status.as_str().into());
    let created = info
        .creation_time
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as f64
        / 1000.0;
    m.insert("CreationTime".into(), json!(created));
    m.insert(
        "DataRetentionInHours".into(),
        info.data_retention_in_hours.into(),
    );
    Value::Object(m)
}

fn serialization(field: &str) -> ApiError {
    ApiError::new(
        400,
        "SerializationException",
        format!("Unexpected value type for {field}."),
    )
}

pub(crate) fn opt_string(body: &Map<String, Value>, key: &str) -> Result<Option<String>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(serialization(key)),
    }
}

fn req_string(body: &Map<String, Value>, key: &str) -> Result<String, ApiError> {
    opt_string(body, key)?.ok_or_else(|| {
        ApiError::invalid_argument(format!(
            "1 validation error detected: Value null at '{}' failed to satisfy constraint: Member must not be null",
            lower_first(key)
        ))
    })
}

fn opt_map(
    body: &Map<String, Value>,
    key: &str,
) -> Result<Option<BTreeMap<String, String>>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| {
                v.as_str()
                    .map(|v| (k.clone(), v.to_owned()))
                    .ok_or_else(|| serialization(key))
            })
            .collect::<Result<_, _>>()
            .map(Some),
        Some(_) => Err(serialization(key)),
    }
}

pub(crate) fn stream_ref(body: &Map<String, Value>) -> Result<StreamRef, ApiError> {
    match (
        opt_string(body, "StreamName")?,
        opt_string(body, "StreamARN")?,
    ) {
        (Some(n), None) => {
            super::model::validate_stream_name(&n)?;
            Ok(StreamRef::Name(n))
        }
        (None, Some(a)) => {
            validate_arn(&a)?;
            Ok(StreamRef::Arn(a))
        }
        (Some(_), Some(_)) => Err(ApiError::invalid_argument(
            "Specify either StreamName or StreamARN, but not both.",
        )),
        (None, None) => Err(ApiError::invalid_argument(
            "Either StreamName or StreamARN must be specified.",
        )),
    }
}

/// `arn:aws:kinesisvideo:[a-z0-9-]+:[0-9]+:[a-z]+/[a-zA-Z0-9_.-]+/[0-9]+`
fn validate_arn(arn: &str) -> Result<(), ApiError> {
    let ok = (|| {
        let rest = arn.strip_prefix("arn:aws:kinesisvideo:")?;
        let (region, rest) = rest.split_once(':')?;
        let (account, resource) = rest.split_once(':')?;
        let mut parts = resource.split('/');
        let (kind, name, ts) = (parts.next()?, parts.next()?, parts.next()?);
        let valid = !region.is_empty()
            && region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !account.is_empty()
            && account.bytes().all(|b| b.is_ascii_digit())
            && !kind.is_empty()
            && kind.bytes().all(|b| b.is_ascii_lowercase())
            && super::model::validate_stream_name(name).is_ok()
            && !ts.is_empty()
            && ts.bytes().all(|b| b.is_ascii_digit())
            && parts.next().is_none();
        valid.then_some(())
    })()
    .is_some();
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid_argument(format!(
            "1 validation error detected: Value '{arn}' at 'streamARN' failed to satisfy constraint: Member must satisfy regular expression pattern: arn:aws:kinesisvideo:[a-z0-9-]+:[0-9]+:[a-z]+/[a-zA-Z0-9_.-]+/[0-9]+"
        )))
    }
}

fn valid_media_type(m: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'+'))
    };
    !m.is_empty()
        && m.len() <= 128
        && m.split(',')
            .all(|t| t.split_once('/').is_some_and(|(a, b)| part(a) && part(b)))
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}
