//! Entry points for the cargo-fuzz targets in `fuzz/` into the local endpoint's private request
//! handling (feature `fuzzing`; not a stable API).

use std::time::Duration;

use serde_json::Value;

use super::control::{self, Operation};
use super::model::{ApiError, Registry, RegistrySettings};

/// The control plane without the HTTP server: the registry of one endpoint.
#[derive(Debug)]
pub struct ControlPlane {
    registry: Registry,
}

impl Default for ControlPlane {
    fn default() -> Self {
        ControlPlane {
            registry: Registry::new(RegistrySettings {
                region: "us-west-2".into(),
                account_id: "123456789012".into(),
                activation_delay: Duration::ZERO,
                deletion_delay: Duration::ZERO,
                max_sessions_per_stream: 5,
            }),
        }
    }
}

impl ControlPlane {
    /// Handles `POST <path>` with `body` as the server does after authentication; `None` for a
    /// path that is no operation (the server's 404). Also returns the stream the request log
    /// would name.
    pub fn request(
        &self,
        path: &str,
        body: &[u8],
    ) -> Option<(Option<String>, Result<Value, ApiError>)> {
        let op = Operation::from_path(path)?;
        let mut stream = None;
        let result = control::parse_body(body).and_then(|b| {
            stream = control::stream_of(&b);
            control::handle(&self.registry, op, &b, "https://127.0.0.1:1")
        });
        Some((stream, result))
    }
}
