//! The PutMedia request: headers as the reference element sends them and its SigV4 signature
//! (docs/kvs-protocol.md §4–§5).
//!
//! The body streams for the whole session, so it cannot be hashed: like the reference we sign the
//! SHA-256 of the empty string, and sign every header except `authorization`, `content-type`,
//! `content-length` and `x-amz-security-token` (the token is sent, not signed).

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    SessionTokenMode, SignableBody, SignableRequest, SigningSettings, sign,
};
use aws_sigv4::sign::v4;

/// SHA-256 of the empty string: the payload hash of a streaming PutMedia request.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
pub const SERVICE_NAME: &str = "kinesisvideo";

/// What one PutMedia request is made of.
#[derive(Debug, Clone)]
pub struct PutMediaParams {
    /// The data endpoint from GetDataEndpoint, e.g. `https://s-1234.kinesisvideo.us-west-2.amazonaws.com`.
    pub endpoint: String,
    pub stream_name: String,
    pub user_agent: String,
    pub region: String,
    pub fragment_acks: bool,
    pub absolute_fragment_times: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("invalid PutMedia endpoint '{endpoint}': {detail}")]
    Endpoint { endpoint: String, detail: String },
    #[error("signing the PutMedia request failed: {0}")]
    Signing(String),
}

/// `x-amzn-producer-start-timestamp`: epoch seconds with milliseconds, e.g. `1602077751.449`.
pub fn producer_start_timestamp(now: SystemTime) -> String {
    let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:03}", d.as_secs(), d.subsec_millis())
}

/// The user-agent header: the `user-agent` property first, as the reference.
pub fn user_agent_header(user_agent: &str) -> String {
    format!(
        "{user_agent} kvssink-rs/{} {}/{}",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}

/// The unsigned headers of a PutMedia request, in the reference's set.
pub fn unsigned_headers(params: &PutMediaParams, now: SystemTime) -> Vec<(&'static str, String)> {
    vec![
        ("user-agent", user_agent_header(&params.user_agent)),
        ("x-amzn-stream-name", params.stream_name.clone()),
        (
            "x-amzn-producer-start-timestamp",
            producer_start_timestamp(now),
        ),
        (
            "x-amzn-fragment-acknowledgment-required",
            if params.fragment_acks { "1" } else { "0" }.to_owned(),
        ),
        (
            "x-amzn-fragment-timecode-type",
            if params.absolute_fragment_times {
                "ABSOLUTE"
            } else {
                "RELATIVE"
            }
            .to_owned(),
        ),
        ("transfer-encoding", "chunked".to_owned()),
        ("connection", "keep-alive".to_owned()),
        ("content-type", "application/json".to_owned()),
    ]
}

/// Builds the signed `POST {endpoint}/putMedia` request around `body`.
pub fn build_request(
    params: &PutMediaParams,
    credentials: &Credentials,
    now: SystemTime,
    body: reqwest::Body,
) -> Result<reqwest::Request, RequestError> {
    let url = format!("{}/putMedia", params.endpoint.trim_end_matches('/'));
    let uri: http::Uri =
        url.parse()
            .map_err(|e: http::uri::InvalidUri| RequestError::Endpoint {
                endpoint: params.endpoint.clone(),
                detail: e.to_string(),
            })?;
    let host = uri
        .authority()
        .ok_or_else(|| RequestError::Endpoint {
            endpoint: params.endpoint.clone(),
            detail: "no host".to_owned(),
        })?
        .as_str()
        .to_owned();

    let mut headers = unsigned_headers(params, now);
    headers.push(("host", host));

    let identity = credentials.clone().into();
    let mut settings = SigningSettings::default();
    settings.excluded_headers = Some(vec![
        Cow::Borrowed("authorization"),
        Cow::Borrowed("content-type"),
        Cow::Borrowed("content-length"),
        Cow::Borrowed("x-amz-security-token"),
    ]);
    settings.session_token_mode = SessionTokenMode::Exclude;
    let signing_params = v4::SigningParams::builder()
        .identity(&identity)
        .region(&params.region)
        .name(SERVICE_NAME)
        .time(now)
        .settings(settings)
        .build()
        .map_err(|e| RequestError::Signing(e.to_string()))?
        .into();
    let signable = SignableRequest::new(
        "POST",
        url.as_str(),
        headers.iter().map(|(k, v)| (*k, v.as_str())),
        SignableBody::Precomputed(EMPTY_SHA256.to_owned()),
    )
    .map_err(|e| RequestError::Signing(e.to_string()))?;
    let (instructions, _signature) = sign(signable, &signing_params)
        .map_err(|e| RequestError::Signing(e.to_string()))?
        .into_parts();

    let mut request = http::Request::builder().method("POST").uri(uri);
    for (name, value) in &headers {
        // hyper writes the Host header itself from the URI.
        if *name != "host" {
            request = request.header(*name, value.as_str());
        }
    }
    let mut request = request
        .body(body)
        .map_err(|e| RequestError::Signing(e.to_string()))?;
    instructions.apply_to_request_http1x(&mut request);
    if let Some(token) = credentials.session_token() {
        let mut value = http::HeaderValue::from_str(token)
            .map_err(|_| RequestError::Signing("session token is not a valid header".into()))?;
        value.set_sensitive(true);
        request.headers_mut().insert("x-amz-security-token", value);
    }
    reqwest::Request::try_from(request).map_err(|e| RequestError::Signing(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn params() -> PutMediaParams {
        PutMediaParams {
            endpoint: "http://127.0.0.1:4567".into(),
            stream_name: "cam".into(),
            user_agent: "AWS-SDK-KVS-RS-CLIENT/0.1.0".into(),
            region: "us-west-2".into(),
            fragment_acks: true,
            absolute_fragment_times: true,
        }
    }

    #[test]
    fn producer_timestamp_is_zero_padded() {
        let t = UNIX_EPOCH + Duration::from_millis(1_602_077_751_005);
        assert_eq!(producer_start_timestamp(t), "1602077751.005");
    }

    #[test]
    fn signs_the_reference_header_set() {
        let creds = Credentials::new("AKIDEXAMPLE", "secret", Some("tok".into()), None, "t");
        let now = UNIX_EPOCH + Duration::from_secs(1_602_077_751);
        let req = build_request(&params(), &creds, now, reqwest::Body::from(Vec::new())).unwrap();
        assert_eq!(req.url().as_str(), "http://127.0.0.1:4567/putMedia");
        let h = req.headers();
        let auth = h["authorization"].to_str().unwrap();
        assert!(auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20201007/us-west-2/kinesisvideo/aws4_request"), "{auth}");
        assert!(
            auth.contains("SignedHeaders=connection;host;transfer-encoding;user-agent;x-amz-date;x-amzn-fragment-acknowledgment-required;x-amzn-fragment-timecode-type;x-amzn-producer-start-timestamp;x-amzn-stream-name,"),
            "{auth}"
        );
        assert_eq!(h["x-amz-date"], "20201007T133551Z");
        assert_eq!(h["x-amz-security-token"], "tok");
        assert!(h["x-amz-security-token"].is_sensitive());
        assert_eq!(h["x-amzn-fragment-timecode-type"], "ABSOLUTE");
        assert_eq!(h["transfer-encoding"], "chunked");
        assert!(h.get("x-amz-content-sha256").is_none());
        assert!(!format!("{req:?}").contains("secret"));
    }
}
