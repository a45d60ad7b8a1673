//! Placeholder until the AWS IoT credentials provider lands (same interface).
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;

#[derive(Clone)]
pub struct IotConfig {
    pub endpoint: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub ca_path: PathBuf,
    pub role_alias: String,
    pub thing_name: String,
    pub connect_timeout: Duration,
    pub completion_timeout: Duration,
}

impl std::fmt::Debug for IotConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IotConfig")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IotError {
    #[error("the AWS IoT credentials provider is not available in this build")]
    Unavailable,
}

impl IotError {
    pub fn is_transient(&self) -> bool {
        false
    }
}

pub struct IotCredentials {
    pub credentials: Credentials,
    pub expiration: SystemTime,
}

impl IotConfig {
    pub fn from_fields(
        _get: impl Fn(&str) -> Option<String>,
        _stream_name: &str,
    ) -> Result<Self, IotError> {
        Err(IotError::Unavailable)
    }
}

pub async fn fetch(_config: &IotConfig) -> Result<IotCredentials, IotError> {
    Err(IotError::Unavailable)
}
