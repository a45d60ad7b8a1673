//! The KVS control plane, through aws-sdk-kinesisvideo: DescribeStream → CreateStream (only when
//! the stream is missing and creation is allowed) → TagStream (only with tags) →
//! GetDataEndpoint(PUT_MEDIA), as the reference element does (docs/kvs-protocol.md §3).
//!
//! The SDK's own retries are off: the uploader retries with its own backoff, so that a retry
//! never blocks cancellation and every failure is classified once here — fatal (wrong
//! credentials, missing stream that may not be created, invalid arguments) or transient
//! (throttling, 5xx, timeouts, connection failures).

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_kinesisvideo::Client;
use aws_sdk_kinesisvideo::config::IdentityCache;
use aws_sdk_kinesisvideo::config::http::HttpResponse;
use aws_sdk_kinesisvideo::config::retry::RetryConfig;
use aws_sdk_kinesisvideo::config::timeout::TimeoutConfig;
use aws_sdk_kinesisvideo::config::{BehaviorVersion, Region};
use aws_sdk_kinesisvideo::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kinesisvideo::types::{ApiName, Status};

use super::credentials::KvsCredentials;
use super::transport::CaBundle;

/// PIC STATUS codes carried by `stream-error` (docs/kvs-protocol.md §1.6).
pub mod status {
    pub const NOT_AUTHORIZED: u32 = 0x5200_0010;
    pub const DESCRIBE_STREAM_CALL_FAILED: u32 = 0x5200_0011;
    pub const STREAM_IS_BEING_DELETED: u32 = 0x5200_0013;
    pub const CREATE_STREAM_CALL_FAILED: u32 = 0x5200_0019;
    pub const GET_STREAMING_ENDPOINT_CALL_FAILED: u32 = 0x5200_002b;
    pub const PUT_STREAM_CALL_FAILED: u32 = 0x5200_002d;
    pub const TAG_STREAM_CALL_FAILED: u32 = 0x5200_003d;
}

/// What the stream must look like.
#[derive(Debug, Clone)]
pub struct StreamSpec {
    pub stream_name: String,
    pub allow_create: bool,
    pub retention_hours: u32,
    /// e.g. `video/h264,audio/aac`.
    pub media_type: String,
    pub tags: Vec<(String, String)>,
}

/// Connection settings of the control plane.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    pub region: String,
    /// Endpoint override (`CONTROL_PLANE_URI` and friends), `None` for the service's.
    pub endpoint: Option<String>,
    pub connect_timeout: Duration,
    pub completion_timeout: Duration,
    /// Authorities trusted beyond the system's (`KVSSINK_CA_CERT_PATH`).
    pub ca: Option<CaBundle>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    pub arn: String,
    pub data_endpoint: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("{operation} failed: {code}: {message} (HTTP {status})")]
    Service {
        operation: &'static str,
        code: String,
        message: String,
        status: u16,
    },
    #[error("{operation} failed: {detail}")]
    Transport {
        operation: &'static str,
        detail: String,
    },
    #[error(
        "stream '{0}' does not exist and allow-create-stream is false: create it or set allow-create-stream=true"
    )]
    StreamNotFound(String),
    #[error(
        "{operation} failed: the server's TLS certificate is not trusted ({detail}); if the endpoint uses a private CA, point KVSSINK_CA_CERT_PATH at its PEM file or directory"
    )]
    UntrustedCertificate {
        operation: &'static str,
        detail: String,
    },
    #[error("stream '{0}' is being deleted")]
    StreamDeleting(String),
    #[error("stream '{0}' is {1}, waiting for it to become ACTIVE")]
    StreamNotActive(String, String),
    #[error("{0} answered without the expected field {1}")]
    Malformed(&'static str, &'static str),
}

impl ControlError {
    /// Whether retrying cannot help.
    pub fn is_fatal(&self) -> bool {
        match self {
            ControlError::Service { code, status, .. } => {
                matches!(
                    code.as_str(),
                    "NotAuthorizedException"
                        | "AccessDeniedException"
                        | "UnrecognizedClientException"
                        | "InvalidSignatureException"
                        | "InvalidArgumentException"
                        | "AccountStreamLimitExceededException"
                        | "DeviceStreamLimitExceededException"
                        | "InvalidDeviceException"
                        | "ResourceNotFoundException"
                ) || (*status >= 400
                    && *status < 500
                    && !matches!(*status, 408 | 429)
                    && !code.contains("Limit")
                    && !code.contains("Throttl")
                    && code != "ResourceInUseException"
                    && code != "ExpiredTokenException")
            }
            ControlError::StreamNotFound(_)
            | ControlError::StreamDeleting(_)
            | ControlError::UntrustedCertificate { .. } => true,
            ControlError::Transport { .. }
            | ControlError::StreamNotActive(..)
            | ControlError::Malformed(..) => false,
        }
    }

    /// The service refused the credentials as expired: new ones may help.
    pub fn is_expired_credentials(&self) -> bool {
        matches!(self, ControlError::Service { code, .. } if code == "ExpiredTokenException")
    }

    /// The reference SDK's STATUS for `stream-error`.
    pub fn status(&self) -> u32 {
        let op_status = |op: &str| match op {
            "CreateStream" => status::CREATE_STREAM_CALL_FAILED,
            "TagStream" => status::TAG_STREAM_CALL_FAILED,
            "GetDataEndpoint" => status::GET_STREAMING_ENDPOINT_CALL_FAILED,
            _ => status::DESCRIBE_STREAM_CALL_FAILED,
        };
        match self {
            ControlError::Service {
                code, operation, ..
            } => {
                if matches!(
                    code.as_str(),
                    "NotAuthorizedException"
                        | "AccessDeniedException"
                        | "UnrecognizedClientException"
                        | "InvalidSignatureException"
                ) {
                    status::NOT_AUTHORIZED
                } else {
                    op_status(operation)
                }
            }
            ControlError::Transport { operation, .. }
            | ControlError::UntrustedCertificate { operation, .. } => op_status(operation),
            ControlError::StreamNotFound(_) | ControlError::StreamNotActive(..) => {
                status::DESCRIBE_STREAM_CALL_FAILED
            }
            ControlError::StreamDeleting(_) => status::STREAM_IS_BEING_DELETED,
            ControlError::Malformed(op, _) => op_status(op),
        }
    }
}

fn classify<E>(operation: &'static str, err: SdkError<E, HttpResponse>) -> ControlError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match &err {
        SdkError::ServiceError(service) => {
            let e = service.err();
            ControlError::Service {
                operation,
                code: e.code().unwrap_or("UnknownError").to_owned(),
                message: e.message().unwrap_or("").to_owned(),
                status: service.raw().status().as_u16(),
            }
        }
        _ => {
            let detail = aws_sdk_kinesisvideo::error::DisplayErrorContext(&err).to_string();
            match super::transport::refusal(&detail) {
                Some(reason) => ControlError::UntrustedCertificate {
                    operation,
                    detail: reason,
                },
                None => ControlError::Transport { operation, detail },
            }
        }
    }
}

pub struct ControlPlane {
    client: Client,
}

impl ControlPlane {
    pub fn new(config: &ControlConfig, credentials: KvsCredentials) -> Result<Self, String> {
        let mut builder = aws_sdk_kinesisvideo::Config::builder()
            .behavior_version(BehaviorVersion::v2026_01_12())
            .region(Region::new(config.region.clone()))
            .credentials_provider(credentials)
            // Every call asks KvsCredentials, which caches and refreshes by itself.
            .identity_cache(IdentityCache::no_cache())
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(config.connect_timeout)
                    .operation_timeout(config.completion_timeout)
                    .build(),
            )
            // Our HTTP client, always: the SDK's own is not built (sdk_http).
            .http_client(super::transport::control_client(
                config.ca.as_ref(),
                config.connect_timeout,
            )?);
        if let Some(endpoint) = &config.endpoint {
            builder = builder.endpoint_url(endpoint.clone());
        }
        Ok(Self {
            client: Client::from_conf(builder.build()),
        })
    }

    /// Makes sure the stream exists (creating and tagging it as configured) and returns its ARN.
    pub async fn ensure_stream(&self, spec: &StreamSpec) -> Result<String, ControlError> {
        let described = self
            .client
            .describe_stream()
            .stream_name(&spec.stream_name)
            .send()
            .await;
        let arn = match described {
            Ok(out) => {
                let info = out
                    .stream_info()
                    .ok_or(ControlError::Malformed("DescribeStream", "StreamInfo"))?;
                match info.status() {
                    Some(Status::Active) | None => {}
                    Some(Status::Deleting) => {
                        return Err(ControlError::StreamDeleting(spec.stream_name.clone()));
                    }
                    Some(other) => {
                        return Err(ControlError::StreamNotActive(
                            spec.stream_name.clone(),
                            other.as_str().to_owned(),
                        ));
                    }
                }
                info.stream_arn()
                    .ok_or(ControlError::Malformed("DescribeStream", "StreamARN"))?
                    .to_owned()
            }
            Err(e) => match classify("DescribeStream", e) {
                ControlError::Service { code, .. } if code == "ResourceNotFoundException" => {
                    if !spec.allow_create {
                        return Err(ControlError::StreamNotFound(spec.stream_name.clone()));
                    }
                    tracing::info!(stream = %spec.stream_name, "stream not found, creating it");
                    let created = self
                        .client
                        .create_stream()
                        .device_name("Kinesis_Video_Device")
                        .stream_name(&spec.stream_name)
                        .media_type(&spec.media_type)
                        .data_retention_in_hours(spec.retention_hours.min(i32::MAX as u32) as i32)
                        .send()
                        .await
                        .map_err(|e| classify("CreateStream", e))?;
                    let arn = created
                        .stream_arn()
                        .ok_or(ControlError::Malformed("CreateStream", "StreamARN"))?
                        .to_owned();
                    // A new stream is CREATING for a moment; the next attempt will see ACTIVE.
                    return Err(ControlError::StreamNotActive(
                        arn.rsplit('/')
                            .nth(1)
                            .unwrap_or(&spec.stream_name)
                            .to_owned(),
                        "CREATING".to_owned(),
                    ));
                }
                other => return Err(other),
            },
        };
        if !spec.tags.is_empty() {
            let tags: HashMap<String, String> = spec.tags.iter().cloned().collect();
            self.client
                .tag_stream()
                .stream_arn(&arn)
                .set_tags(Some(tags))
                .send()
                .await
                .map_err(|e| classify("TagStream", e))?;
        }
        Ok(arn)
    }

    /// The PutMedia endpoint of the stream.
    pub async fn data_endpoint(&self, stream_name: &str) -> Result<String, ControlError> {
        let out = self
            .client
            .get_data_endpoint()
            .stream_name(stream_name)
            .api_name(ApiName::PutMedia)
            .send()
            .await
            .map_err(|e| classify("GetDataEndpoint", e))?;
        out.data_endpoint()
            .map(str::to_owned)
            .ok_or(ControlError::Malformed("GetDataEndpoint", "DataEndpoint"))
    }
}

/// The control-plane endpoint override from the environment: `CONTROL_PLANE_URI` (reference),
/// then the SDK's standard `AWS_ENDPOINT_URL_KINESIS_VIDEO` and `AWS_ENDPOINT_URL`.
pub fn endpoint_from_env(env: impl Fn(&str) -> Option<String>) -> Option<String> {
    [
        "CONTROL_PLANE_URI",
        "AWS_ENDPOINT_URL_KINESIS_VIDEO",
        "AWS_ENDPOINT_URL",
    ]
    .iter()
    .find_map(|k| env(k).filter(|v| !v.trim().is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(code: &str, status: u16) -> ControlError {
        ControlError::Service {
            operation: "DescribeStream",
            code: code.into(),
            message: String::new(),
            status,
        }
    }

    #[test]
    fn classification() {
        assert!(service("NotAuthorizedException", 401).is_fatal());
        assert_eq!(
            service("NotAuthorizedException", 401).status(),
            status::NOT_AUTHORIZED
        );
        assert!(!service("ClientLimitExceededException", 400).is_fatal());
        assert!(!service("InternalFailure", 500).is_fatal());
        assert!(!service("ResourceInUseException", 400).is_fatal());
        assert!(service("InvalidArgumentException", 400).is_fatal());
        assert!(ControlError::StreamNotFound("s".into()).is_fatal());
        assert!(
            !ControlError::Transport {
                operation: "GetDataEndpoint",
                detail: "connection refused".into()
            }
            .is_fatal()
        );
    }

    #[test]
    fn endpoint_env_precedence() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(
            endpoint_from_env(env(&[
                ("AWS_ENDPOINT_URL", "http://b"),
                ("CONTROL_PLANE_URI", "http://a")
            ])),
            Some("http://a".into())
        );
        assert_eq!(
            endpoint_from_env(env(&[("AWS_ENDPOINT_URL", "http://b")])),
            Some("http://b".into())
        );
        assert_eq!(endpoint_from_env(env(&[])), None);
    }
}
