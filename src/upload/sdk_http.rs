//! The AWS SDK's HTTP client over reqwest: the control plane and aws-config's credential
//! providers send through it, so that they use the TLS settings of PutMedia
//! ([`super::transport`]: the pins of `KVSSINK_CA_CERT_PATH`), which the SDK's own client cannot
//! take, and so that the element carries one HTTP and TLS stack instead of two (the SDK's
//! `default-https-client` is not built: README, "Size"). Requests and answers are small JSON
//! documents, read whole.

use aws_sdk_kinesisvideo::config::SharedHttpClient;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::http::Response;
use aws_smithy_types::body::SdkBody;

/// An SDK HTTP client that sends with `client`.
pub fn shared(client: reqwest::Client) -> SharedHttpClient {
    SharedHttpClient::new(ReqwestClient(client))
}

#[derive(Debug, Clone)]
struct ReqwestClient(reqwest::Client);

impl HttpClient for ReqwestClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(ReqwestConnector {
            client: self.0.clone(),
            // reqwest bounds a request as a whole: the time to connect plus the time to read
            // (the SDK's read timeout bounds each wait for the answer; the answers are small).
            // A connect timeout alone is the reqwest client's own (see transport).
            timeout: settings
                .read_timeout()
                .map(|read| read + settings.connect_timeout().unwrap_or_default()),
        })
    }
}

#[derive(Debug, Clone)]
struct ReqwestConnector {
    client: reqwest::Client,
    timeout: Option<std::time::Duration>,
}

fn connector_error(e: reqwest::Error) -> ConnectorError {
    if e.is_timeout() {
        ConnectorError::timeout(e.into())
    } else if e.is_connect() || e.is_request() || e.is_body() {
        ConnectorError::io(e.into())
    } else {
        ConnectorError::other(e.into(), None)
    }
}

impl HttpConnector for ReqwestConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let this = self.clone();
        HttpConnectorFuture::new(async move {
            let request = request
                .try_into_http1x()
                .map_err(|e| ConnectorError::user(e.into()))?;
            let (parts, body) = request.into_parts();
            let body = body.bytes().map(|b| b.to_vec()).unwrap_or_default();
            let mut send = this
                .client
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body);
            if let Some(t) = this.timeout {
                send = send.timeout(t);
            }
            let answer = send.send().await.map_err(connector_error)?;
            let status = answer.status();
            let headers = answer.headers().clone();
            let bytes = answer.bytes().await.map_err(connector_error)?;
            let mut response = http::Response::new(SdkBody::from(bytes));
            *response.status_mut() = status;
            *response.headers_mut() = headers;
            Response::try_from(response).map_err(|e| ConnectorError::other(e.into(), None))
        })
    }
}
