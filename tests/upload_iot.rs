//! The AWS IoT credentials provider: `gstkvssink::upload::iot::fetch` against the local endpoint's
//! IoT stand-in (mutual TLS), the credentials it mints signing requests the endpoint accepts, each
//! misconfiguration giving its own error, and credentials expiring after their lifetime.

mod common;
use common::endpoint as endpoint_common;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_kinesisvideo::error::ProvideErrorMetadata;
use endpoint_common::*;
use gstkvssink::upload::iot::{self, IotConfig, IotCredentials, IotError};
use kvs_local_endpoint::iot::DEFAULT_ROLE_ALIAS;
use kvs_local_endpoint::{
    AckEventType, Config, Credentials, HttpFault, IOT_OPERATION, IotEndpointConfig, IotInfo,
    LocalEndpoint,
};

fn start_iot(iot: IotEndpointConfig) -> LocalEndpoint {
    let ep = start(Config {
        iot: Some(iot),
        ..Default::default()
    });
    ep.create_stream("cam", 2).unwrap();
    ep
}

/// The `iot-certificate` fields of the endpoint, with some replaced.
fn config(info: &IotInfo, overrides: &[(&str, &str)]) -> IotConfig {
    IotConfig::from_fields(
        |k| match overrides.iter().find(|(o, _)| *o == k) {
            Some((_, v)) => Some((*v).to_owned()),
            None => info.field(k),
        },
        "cam",
    )
    .unwrap()
}

fn local_creds(c: &IotCredentials) -> Credentials {
    Credentials::new(
        c.credentials.access_key_id(),
        c.credentials.secret_access_key(),
    )
    .with_session_token(c.credentials.session_token().unwrap())
}

async fn describe(ep: &LocalEndpoint, creds: &Credentials) -> Result<(), (u16, String)> {
    sdk_client(ep.url(), creds, 1)
        .describe_stream()
        .stream_name("cam")
        .send()
        .await
        .map(|_| ())
        .map_err(|e| {
            (
                e.raw_response().map(|r| r.status().as_u16()).unwrap_or(0),
                e.code().unwrap_or("").to_owned(),
            )
        })
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetched_credentials_sign_requests_the_endpoint_accepts() {
    let ep = start_iot(IotEndpointConfig::default());
    let info = ep.iot().unwrap();
    assert!(info.endpoint.starts_with("127.0.0.1:"), "{}", info.endpoint);
    assert_eq!(info.role_alias, DEFAULT_ROLE_ALIAS);

    let before = SystemTime::now();
    let creds = iot::fetch(&config(&info, &[])).await.unwrap();
    let ak = creds.credentials.access_key_id().to_owned();
    assert!(ak.starts_with("ASIA") && ak.len() == 20, "{ak}");
    assert_eq!(creds.credentials.expiry(), Some(creds.expiration));
    // The default lifetime is one hour, rounded up to a whole second.
    let life = creds.expiration.duration_since(before).unwrap();
    assert!(
        life >= Duration::from_secs(3599) && life <= Duration::from_secs(3602),
        "{life:?}"
    );
    assert_eq!(
        ep.credential_expiration(&ak),
        Some(Some(creds.expiration)),
        "the endpoint expires them when it said"
    );
    let debug = format!("{creds:?}");
    assert!(!debug.contains(creds.credentials.secret_access_key()));
    assert!(!debug.contains(creds.credentials.session_token().unwrap()));

    let log = ep.iot_requests();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].status, 200);
    assert_eq!(log[0].method, "GET");
    assert_eq!(log[0].role_alias.as_deref(), Some(DEFAULT_ROLE_ALIAS));
    assert_eq!(
        log[0].thing_name.as_deref(),
        Some("cam"),
        "thing name = stream name"
    );
    assert_eq!(log[0].access_key_id.as_deref(), Some(ak.as_str()));

    describe(&ep, &local_creds(&creds)).await.unwrap();
    let last = ep.requests().pop().unwrap();
    assert_eq!(
        (last.operation.as_str(), last.status),
        ("DescribeStream", 200)
    );
    assert_eq!(last.access_key_id.as_deref(), Some(ak.as_str()));

    // The token is part of the credentials: without it the key is unknown.
    let no_token = Credentials::new(&ak, creds.credentials.secret_access_key());
    assert_eq!(
        describe(&ep, &no_token).await,
        Err((403, "UnrecognizedClientException".to_owned()))
    );

    // An explicit https:// prefix and a thing name of its own; each fetch mints new credentials.
    let endpoint = format!("https://{}", info.endpoint);
    let again = iot::fetch(&config(
        &info,
        &[("endpoint", &endpoint), ("iot-thing-name", "thing-42")],
    ))
    .await
    .unwrap();
    assert_ne!(again.credentials.access_key_id(), ak);
    assert_eq!(ep.iot_requests()[1].thing_name.as_deref(), Some("thing-42"));
    describe(&ep, &local_creds(&again)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_path_that_does_not_sign_the_server_is_reported_as_untrusted_server() {
    let ep = start_iot(IotEndpointConfig::default());
    let info = ep.iot().unwrap();
    let other = ep.iot_untrusted_client_cert().unwrap();
    let e = iot::fetch(&config(&info, &[("ca-path", path_str(&other.ca_path))]))
        .await
        .unwrap_err();
    assert!(matches!(e, IotError::ServerUntrusted { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains(path_str(&other.ca_path)), "{msg}");
    assert!(msg.contains("ca-path"), "{msg}");
    assert!(!e.is_transient());
    assert!(ep.iot_requests().is_empty(), "no request got through");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_of_another_ca_is_refused_in_the_handshake() {
    let ep = start_iot(IotEndpointConfig::default());
    let info = ep.iot().unwrap();
    let other = ep.iot_untrusted_client_cert().unwrap();
    let e = iot::fetch(&config(
        &info,
        &[
            ("cert-path", path_str(&other.cert_path)),
            ("key-path", path_str(&other.key_path)),
        ],
    ))
    .await
    .unwrap_err();
    assert!(matches!(e, IotError::ClientCertRejected { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains(path_str(&other.cert_path)), "{msg}");
    assert!(msg.contains(path_str(&other.key_path)), "{msg}");
    assert!(msg.contains("iot:AssumeRoleWithCertificate"), "{msg}");
    assert!(!e.is_transient());
    assert!(ep.iot_requests().is_empty());
    // The client sees the failed handshake before the server's task has recorded it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while ep.iot_tls_rejections().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(ep.iot_tls_rejections().len(), 1);

    // A certificate minted by the endpoint's CA is accepted.
    let minted = ep.iot_mint_client_cert("second-thing").unwrap();
    iot::fetch(&config(
        &info,
        &[
            ("cert-path", path_str(&minted.cert_path)),
            ("key-path", path_str(&minted.key_path)),
        ],
    ))
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_role_alias_and_thing_name_get_the_service_answers() {
    let ep = start_iot(IotEndpointConfig {
        role_aliases: vec!["kvs-alias".into()],
        thing_names: vec!["cam".into(), "door".into()],
        ..Default::default()
    });
    let info = ep.iot().unwrap();
    let e = iot::fetch(&config(&info, &[("role-aliases", "no-such-alias")]))
        .await
        .unwrap_err();
    assert!(matches!(e, IotError::UnknownRoleAlias { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("'no-such-alias'"), "{msg}");
    assert!(msg.contains("Role alias does not exist"), "{msg}");
    assert!(!e.is_transient());

    let e = iot::fetch(&config(&info, &[("iot-thing-name", "garage")]))
        .await
        .unwrap_err();
    assert!(matches!(e, IotError::ThingNameRejected { .. }), "{e:?}");
    assert!(e.to_string().contains("'garage'"), "{e}");

    iot::fetch(&config(&info, &[("iot-thing-name", "door")]))
        .await
        .unwrap();
    let log = ep.iot_requests();
    let seen: Vec<_> = log
        .iter()
        .map(|r| {
            (
                r.role_alias.as_deref().unwrap(),
                r.thing_name.as_deref().unwrap(),
                r.status,
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("no-such-alias", "cam", 404),
            ("kvs-alias", "garage", 403),
            ("kvs-alias", "door", 200)
        ]
    );
    assert_eq!(log[0].message.as_deref(), Some("Role alias does not exist"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_that_cannot_be_used_are_named() {
    let ep = start_iot(IotEndpointConfig::default());
    let info = ep.iot().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing-cert.pem");
    let e = iot::fetch(&config(&info, &[("cert-path", path_str(&missing))]))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, IotError::ReadFile { field: "cert-path", path, .. } if *path == missing),
        "{e:?}"
    );
    assert!(e.to_string().contains("missing-cert.pem"));

    // A certificate where the key should be.
    let e = iot::fetch(&config(&info, &[("key-path", path_str(&info.cert_path))]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &e,
            IotError::NotPem {
                field: "key-path",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains(path_str(&info.cert_path)));

    // A key that is not the certificate's.
    let other = ep.iot_untrusted_client_cert().unwrap();
    let e = iot::fetch(&config(&info, &[("key-path", path_str(&other.key_path))]))
        .await
        .unwrap_err();
    assert!(matches!(&e, IotError::ClientIdentity { .. }), "{e:?}");
    assert!(e.to_string().contains(path_str(&other.key_path)));

    // A CA file with a name that does not end in .pem is fine (the reference insists on .pem).
    let ca = dir.path().join("AmazonRootCA1.crt");
    std::fs::copy(&info.ca_path, &ca).unwrap();
    iot::fetch(&config(&info, &[("ca-path", path_str(&ca))]))
        .await
        .unwrap();
    assert!(
        ep.iot_requests().len() == 1,
        "only the last call reached the endpoint"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_timeouts_and_refused_connections_are_transient() {
    let ep = start_iot(IotEndpointConfig::default());
    let info = ep.iot().unwrap();
    ep.faults().fail_requests(
        1,
        HttpFault::service_unavailable().for_operation(IOT_OPERATION),
    );
    // An unscoped control-plane fault does not touch the IoT endpoint.
    ep.faults().fail_requests(1, HttpFault::internal_error());
    let e = iot::fetch(&config(&info, &[])).await.unwrap_err();
    assert!(
        matches!(e, IotError::Unavailable { status: 503, .. }),
        "{e:?}"
    );
    assert!(e.is_transient());
    iot::fetch(&config(&info, &[])).await.unwrap();

    // A server that accepts TCP and never speaks TLS.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    let started = Instant::now();
    let e = iot::fetch(&config(
        &info,
        &[
            ("endpoint", &silent_addr),
            ("connection-timeout", "0.3"),
            ("completion-timeout", "5"),
        ],
    ))
    .await
    .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "bounded by connection-timeout"
    );
    assert!(
        matches!(
            e,
            IotError::Timeout {
                phase: "connection-timeout",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.is_transient());
    drop(silent);

    // Nobody listening.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let e = iot::fetch(&config(&info, &[("endpoint", &closed)]))
        .await
        .unwrap_err();
    assert!(matches!(e, IotError::Connect { .. }), "{e:?}");
    assert!(e.is_transient());
}

/// Sleeps until `t` has passed (bounded: `t` is at most a few seconds away).
async fn sleep_past(t: SystemTime) {
    let wait = t
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        .min(Duration::from_secs(5));
    tokio::time::sleep(wait + Duration::from_millis(150)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minted_credentials_expire_after_their_lifetime() {
    let ep = start_iot(IotEndpointConfig {
        credential_lifetime: Some(Duration::from_secs(2)),
        ..Default::default()
    });
    let info = ep.iot().unwrap();
    let before = SystemTime::now();
    let creds = iot::fetch(&config(&info, &[])).await.unwrap();
    let life = creds.expiration.duration_since(before).unwrap();
    assert!(
        life >= Duration::from_secs(2) && life <= Duration::from_secs(3),
        "{life:?}"
    );
    let local = local_creds(&creds);
    describe(&ep, &local).await.unwrap();

    // A PutMedia session that starts before the expiry streams on past it; ~4 s of media.
    let body = mkv_stream(1000, 5, 10, 100);
    let mut req = PutMediaRequest::new(&ep, "cam");
    req.credentials = local.clone();
    let up = put_media(
        &req,
        schedule(&body, Pacing::Timed { speed: 1.0 }),
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(up.status, 200, "{:?}", up.error_body);
    assert!(
        SystemTime::now() > creds.expiration,
        "the session outlived the credentials"
    );
    assert_eq!(up.of_type(AckEventType::Persisted).len(), 5);
    assert!(up.of_type(AckEventType::Error).is_empty());

    sleep_past(creds.expiration).await;
    assert_eq!(
        describe(&ep, &local).await,
        Err((403, "ExpiredTokenException".to_owned()))
    );
    let up = put_media(
        &req,
        schedule(
            &mkv_stream(10_000, 1, 2, 10),
            Pacing::FullSpeed { max_chunk: 100 },
        ),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(up.status, 403);
    assert_eq!(up.error_body.unwrap()["__type"], "ExpiredTokenException");

    // Fetching again gives working credentials.
    let fresh = iot::fetch(&config(&info, &[])).await.unwrap();
    describe(&ep, &local_creds(&fresh)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_and_added_credentials_expire_after_the_configured_lifetime() {
    let ep = start(Config {
        credentials: Credentials::new("AKIDSHORT", "short-secret"),
        credential_lifetime: Some(Duration::from_secs(2)),
        ..Default::default()
    });
    ep.create_stream("cam", 2).unwrap();
    let configured = ep.credentials();
    let expiry = ep
        .credential_expiration("AKIDSHORT")
        .unwrap()
        .expect("expires");
    describe(&ep, &configured).await.unwrap();

    let added = Credentials::new("AKIDADDED", "added-secret");
    ep.add_credentials(added.clone());
    let long = Credentials::new("AKIDLONG", "long-secret").with_session_token("tok");
    ep.add_credentials_expiring(long.clone(), Duration::from_secs(60));
    describe(&ep, &added).await.unwrap();

    sleep_past(expiry).await;
    assert_eq!(
        describe(&ep, &configured).await,
        Err((403, "ExpiredTokenException".to_owned()))
    );
    sleep_past(ep.credential_expiration("AKIDADDED").unwrap().unwrap()).await;
    assert_eq!(
        describe(&ep, &added).await,
        Err((403, "ExpiredTokenException".to_owned()))
    );
    describe(&ep, &long).await.unwrap();

    // The fault still expires everything at once.
    ep.faults().expire_credentials();
    assert_eq!(
        describe(&ep, &long).await,
        Err((403, "ExpiredTokenException".to_owned()))
    );
}
