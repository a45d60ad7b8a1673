//! Credentials through a live pipeline: each source alone uploads with verified signatures,
//! the reference's precedence holds when several are configured, credentials that expire every
//! 20 s are renewed without losing or repeating a fragment, IoT mistakes give distinct errors,
//! and no secret shows up in any output.

mod common;
use common::pipeline;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use kvs_local_endpoint::{Config, Credentials, IotEndpointConfig, LocalEndpoint};
use pipeline::{Run, RunOptions, assert_video_exactly_once, run, stored_frames};

const STATIC_ENV: [&str; 3] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
];

/// `seconds` of live 30 fps H.264 with a key frame every 0.5 s.
fn video(seconds: u32, name: &str, sink_props: &str) -> String {
    format!(
        "videotestsrc is-live=true num-buffers={} ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15 bframes=0 ! h264parse \
         ! kvssink name=sink stream-name={name} {sink_props}",
        seconds * 30
    )
}

fn endpoint_with_iot(credential_lifetime: Option<Duration>) -> LocalEndpoint {
    LocalEndpoint::start(Config {
        iot: Some(IotEndpointConfig {
            credential_lifetime,
            ..Default::default()
        }),
        ..Config::default()
    })
    .expect("the local endpoint starts")
}

fn key(ak: &str) -> Credentials {
    Credentials::new(ak, &format!("secret-of-{ak}"))
}

/// Writes the reference's credential file.
fn credential_file(dir: &std::path::Path, ak: &str, lifetime: Option<Duration>) -> String {
    let path = dir.join("credential");
    let text = match lifetime {
        None => format!("CREDENTIALS {ak} secret-of-{ak}\n"),
        Some(l) => {
            let exp = gstkvssink_date(SystemTime::now() + l);
            format!("CREDENTIALS {ak} {exp} secret-of-{ak} token-of-{ak}\n")
        }
    };
    // Written whole then renamed, as a rotating writer would.
    let tmp = dir.join("credential.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path.display().to_string()
}

fn gstkvssink_date(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    let out = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Every frame that entered the sink is stored exactly once, every request was signed with a
/// key the endpoint knows (it verifies each signature), and returns the access keys used.
fn assert_uploaded(ep: &LocalEndpoint, name: &str, r: &Run) -> BTreeSet<String> {
    assert_video_exactly_once(ep, name, r);
    let requests: Vec<_> = ep
        .requests()
        .into_iter()
        .filter(|q| q.stream.as_deref() == Some(name))
        .collect();
    assert!(
        requests.iter().all(|q| !matches!(q.status, 401 | 403)),
        "{name}: requests refused for their credentials: {requests:?}"
    );
    requests
        .iter()
        .filter_map(|q| q.access_key_id.clone())
        .collect()
}

fn opts(extra: Vec<(&'static str, String)>, remove: &[&'static str]) -> RunOptions<'static> {
    RunOptions {
        extra_env: extra,
        remove_env: remove.to_vec(),
        ..Default::default()
    }
}

const NO_FILE: &str = "credential-path=/nonexistent/kvs-credential";

#[test]
fn properties_alone() {
    let ep = endpoint_with_iot(None);
    ep.add_credentials(key("AKPROPS"));
    let props = format!("access-key=AKPROPS secret-key=secret-of-AKPROPS {NO_FILE}");
    let r = run(
        &ep,
        &video(2, "props", &props),
        Duration::from_secs(60),
        opts(vec![], &STATIC_ENV),
    );
    assert_eq!(
        assert_uploaded(&ep, "props", &r),
        ["AKPROPS".to_owned()].into()
    );
}

#[test]
fn environment_alone() {
    let ep = endpoint_with_iot(None);
    let r = run(
        &ep,
        &video(2, "env", NO_FILE),
        Duration::from_secs(60),
        RunOptions::default(),
    );
    let env_key = ep
        .env()
        .into_iter()
        .find(|(k, _)| *k == "AWS_ACCESS_KEY_ID")
        .unwrap()
        .1;
    assert_eq!(assert_uploaded(&ep, "env", &r), [env_key].into());
}

#[test]
fn credential_file_alone() {
    let ep = endpoint_with_iot(None);
    ep.add_credentials(Credentials {
        session_token: Some("token-of-AKFILE".into()),
        ..key("AKFILE")
    });
    let dir = tempfile::tempdir().unwrap();
    let path = credential_file(dir.path(), "AKFILE", Some(Duration::from_secs(3600)));
    let r = run(
        &ep,
        &video(2, "file", &format!("credential-path={path}")),
        Duration::from_secs(60),
        opts(vec![], &STATIC_ENV),
    );
    assert_eq!(
        assert_uploaded(&ep, "file", &r),
        ["AKFILE".to_owned()].into()
    );
}

#[test]
fn default_chain_profile_alone() {
    let ep = endpoint_with_iot(None);
    ep.add_credentials(key("AKPROFILE"));
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("credentials");
    std::fs::write(
        &creds,
        "[default]\naws_access_key_id = AKWRONG\naws_secret_access_key = nope\n\n\
         [kvs-camera]\naws_access_key_id = AKPROFILE\naws_secret_access_key = secret-of-AKPROFILE\n",
    )
    .unwrap();
    let config = dir.path().join("config");
    std::fs::write(&config, "").unwrap();
    let r = run(
        &ep,
        &video(2, "profile", NO_FILE),
        Duration::from_secs(60),
        opts(
            vec![
                ("AWS_SHARED_CREDENTIALS_FILE", creds.display().to_string()),
                ("AWS_CONFIG_FILE", config.display().to_string()),
                ("AWS_PROFILE", "kvs-camera".into()),
                ("AWS_EC2_METADATA_DISABLED", "true".into()),
            ],
            &STATIC_ENV,
        ),
    );
    assert_eq!(
        assert_uploaded(&ep, "profile", &r),
        ["AKPROFILE".to_owned()].into()
    );
}

/// A container-credentials endpoint (ECS): answers every request with `body`, and counts them.
fn container_credentials_server(body: String) -> (String, std::sync::Arc<AtomicUsize>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://{}/v2/credentials/kvs",
        listener.local_addr().unwrap()
    );
    let served = std::sync::Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            count.fetch_add(1, Ordering::SeqCst);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (url, served)
}

/// The default chain's HTTP sources (container credentials here; STS, SSO and instance metadata
/// alike) reach their endpoint through the element's own HTTP client: the AWS SDK's is not built.
#[test]
fn default_chain_container_credentials_alone() {
    let ep = endpoint_with_iot(None);
    ep.add_credentials(key("AKCONTAINER").with_session_token("token-of-AKCONTAINER"));
    let expiration = gstkvssink_date(SystemTime::now() + Duration::from_secs(3600));
    let (url, served) = container_credentials_server(format!(
        r#"{{"AccessKeyId":"AKCONTAINER","SecretAccessKey":"secret-of-AKCONTAINER","Token":"token-of-AKCONTAINER","Expiration":"{expiration}"}}"#
    ));
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "").unwrap();
    let r = run(
        &ep,
        &video(2, "container", NO_FILE),
        Duration::from_secs(60),
        opts(
            vec![
                ("AWS_CONTAINER_CREDENTIALS_FULL_URI", url),
                ("AWS_SHARED_CREDENTIALS_FILE", empty.display().to_string()),
                ("AWS_CONFIG_FILE", empty.display().to_string()),
                ("AWS_EC2_METADATA_DISABLED", "true".into()),
            ],
            &["AWS_PROFILE", STATIC_ENV[0], STATIC_ENV[1], STATIC_ENV[2]],
        ),
    );
    assert_eq!(
        assert_uploaded(&ep, "container", &r),
        ["AKCONTAINER".to_owned()].into()
    );
    assert!(served.load(Ordering::SeqCst) >= 1);
}

#[test]
fn iot_certificate_alone() {
    let ep = endpoint_with_iot(None);
    let iot = ep.iot().unwrap();
    let props = format!(
        "iot-certificate=\"{}\" {NO_FILE}",
        iot.structure_string(Some("camera-1")).replace('"', "\\\"")
    );
    let r = run(
        &ep,
        &video(2, "iot", &props),
        Duration::from_secs(60),
        opts(vec![], &STATIC_ENV),
    );
    let used = assert_uploaded(&ep, "iot", &r);
    let minted: BTreeSet<String> = ep
        .iot_requests()
        .into_iter()
        .filter(|q| q.thing_name.as_deref() == Some("camera-1"))
        .filter_map(|q| q.access_key_id)
        .collect();
    assert!(
        !minted.is_empty() && used.is_subset(&minted),
        "{used:?} vs {minted:?}"
    );
}

#[test]
fn precedence_is_iot_then_properties_then_environment_then_file() {
    let ep = endpoint_with_iot(None);
    ep.add_credentials(key("AKPROPS"));
    ep.add_credentials(key("AKFILE"));
    let dir = tempfile::tempdir().unwrap();
    let path = credential_file(dir.path(), "AKFILE", None);
    let file = format!("credential-path={path}");
    let props = format!("access-key=AKPROPS secret-key=secret-of-AKPROPS {file}");

    // Properties, environment and file: the properties.
    let r = run(
        &ep,
        &video(1, "p1", &props),
        Duration::from_secs(60),
        RunOptions::default(),
    );
    assert_eq!(
        assert_uploaded(&ep, "p1", &r),
        ["AKPROPS".to_owned()].into()
    );
    // Environment and file: the environment.
    let r = run(
        &ep,
        &video(1, "p2", &file),
        Duration::from_secs(60),
        RunOptions::default(),
    );
    let used = assert_uploaded(&ep, "p2", &r);
    assert!(!used.contains("AKFILE") && used.len() == 1, "{used:?}");
    // IoT and everything else: IoT.
    let iot = ep
        .iot()
        .unwrap()
        .structure_string(None)
        .replace('"', "\\\"");
    let r = run(
        &ep,
        &video(1, "p3", &format!("iot-certificate=\"{iot}\" {props}")),
        Duration::from_secs(60),
        RunOptions::default(),
    );
    let used = assert_uploaded(&ep, "p3", &r);
    assert!(
        !used.contains("AKPROPS") && !used.contains("AKFILE"),
        "{used:?}"
    );
}

/// Credentials that expire every 20 s, a 90 s realtime upload: sessions rotate to renewed
/// credentials before expiry, and every frame is persisted exactly once.
#[test]
fn credentials_expiring_every_20_s_are_renewed_without_loss() {
    let ep = endpoint_with_iot(Some(Duration::from_secs(20)));
    let iot = ep
        .iot()
        .unwrap()
        .structure_string(None)
        .replace('"', "\\\"");
    let r = run(
        &ep,
        &video(90, "renew", &format!("iot-certificate=\"{iot}\" {NO_FILE}")),
        Duration::from_secs(150),
        opts(vec![], &STATIC_ENV),
    );
    let used = assert_uploaded(&ep, "renew", &r);
    assert!(used.len() >= 4, "renewed at least every 20 s: {used:?}");
    assert!(
        ep.iot_requests().len() >= 5,
        "{:?}",
        ep.iot_requests().len()
    );
    let sessions = ep.sessions(Some("renew"));
    assert!(
        sessions.len() >= 5,
        "one session per credential: {}",
        sessions.len()
    );
}

/// The service answers "expired" (the credential file was rotated): the element reads the file
/// again and goes on; nothing is lost or repeated.
#[test]
fn expired_credentials_answer_rereads_the_file() {
    let ep = endpoint_with_iot(None);
    ep.add_credentials(key("AKOLD"));
    let dir = tempfile::tempdir().unwrap();
    let path = credential_file(dir.path(), "AKOLD", None);
    let dir_path = dir.path().to_owned();
    let faults = ep.faults();
    let ep_ref = &ep;
    let r = run(
        &ep,
        &video(5, "expired", &format!("credential-path={path}")),
        Duration::from_secs(60),
        RunOptions {
            remove_env: STATIC_ENV.to_vec(),
            on_playing: Some(Box::new(move |_| {
                std::thread::sleep(Duration::from_millis(1500));
                // Rotate: the old key expires, a new one is in the file, the connection drops.
                faults.expire_credentials();
                ep_ref.add_credentials(key("AKNEW"));
                credential_file(&dir_path, "AKNEW", None);
                faults.reset_after_bytes(1);
            })),
            ..Default::default()
        },
    );
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(r.eos);
    assert!(r.dropped.is_empty(), "{:?}", r.dropped);
    assert_eq!(
        stored_frames(&ep, "expired").get(&1).copied(),
        r.frames.get("video_0").copied()
    );
    let requests = ep.requests();
    assert!(
        requests
            .iter()
            .any(|q| q.error_type.as_deref() == Some("ExpiredTokenException")),
        "the expired answer was given: {requests:?}"
    );
    assert!(
        requests
            .iter()
            .any(|q| q.access_key_id.as_deref() == Some("AKNEW") && q.status < 400),
        "the new key was used"
    );
}

/// Static credentials cannot be renewed: "expired" ends in one clear error.
#[test]
fn expired_static_credentials_end_in_one_clear_error() {
    let ep = endpoint_with_iot(None);
    let faults = ep.faults();
    let r = run(
        &ep,
        &video(5, "expired-static", NO_FILE),
        Duration::from_secs(60),
        RunOptions {
            on_playing: Some(Box::new(move |_| {
                std::thread::sleep(Duration::from_millis(1500));
                faults.expire_credentials();
                faults.reset_after_bytes(1);
            })),
            ..Default::default()
        },
    );
    assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
    assert!(
        r.errors[0].contains("expired") && r.errors[0].contains("cannot be refreshed"),
        "{:?}",
        r.errors
    );
}

/// A wrong CA, a client certificate the endpoint does not trust, an unknown role alias: the
/// start fails with three different errors, each naming what to fix.
#[test]
fn iot_mistakes_fail_the_start_with_distinct_actionable_errors() {
    common::init();
    let ep = endpoint_with_iot(None);
    let iot = ep.iot().unwrap();
    let foreign = ep.iot_untrusted_client_cert().unwrap();
    let start = |overrides: &[(&str, String)]| -> String {
        let mut s = gst::Structure::builder("iot-certificate");
        for k in [
            "endpoint",
            "cert-path",
            "key-path",
            "ca-path",
            "role-aliases",
        ] {
            let v = overrides
                .iter()
                .find(|(o, _)| *o == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| iot.field(k).unwrap());
            s = s.field(k, v);
        }
        let sink = gst::ElementFactory::make("kvssink")
            .property("stream-name", "iot-errors")
            .property("iot-certificate", s.build())
            .build()
            .unwrap();
        let bus = gst::Bus::new();
        sink.set_bus(Some(&bus));
        assert!(sink.set_state(gst::State::Ready).is_err(), "{overrides:?}");
        let msg = bus
            .iter_filtered(&[gst::MessageType::Error])
            .next()
            .expect("an error message");
        let gst::MessageView::Error(e) = msg.view() else {
            unreachable!()
        };
        let _ = sink.set_state(gst::State::Null);
        e.error().to_string()
    };
    use gst::prelude::*;
    let wrong_ca = start(&[("ca-path", foreign.ca_path.display().to_string())]);
    let wrong_cert = start(&[
        ("cert-path", foreign.cert_path.display().to_string()),
        ("key-path", foreign.key_path.display().to_string()),
    ]);
    let wrong_alias = start(&[("role-aliases", "no-such-alias".into())]);
    assert!(
        wrong_ca.contains(&foreign.ca_path.display().to_string()),
        "{wrong_ca}"
    );
    assert!(
        wrong_cert.contains(&foreign.cert_path.display().to_string()),
        "{wrong_cert}"
    );
    assert!(wrong_alias.contains("no-such-alias"), "{wrong_alias}");
    eprintln!(
        "wrong CA: {wrong_ca}\nwrong certificate: {wrong_cert}\nunknown alias: {wrong_alias}"
    );
    assert!(
        wrong_ca != wrong_cert && wrong_cert != wrong_alias && wrong_ca != wrong_alias,
        "distinct: {wrong_ca} / {wrong_cert} / {wrong_alias}"
    );
}

/// HTTPS with a private CA from `KVSSINK_CA_CERT_PATH` (file or directory) uploads; a wrong
/// path fails the start naming the variable; without the CA the certificate is refused.
#[test]
fn private_ca_from_kvssink_ca_cert_path() {
    let ep = LocalEndpoint::start(Config {
        tls: true,
        ..Config::default()
    })
    .unwrap();
    let ca = ep
        .env()
        .into_iter()
        .find(|(k, _)| *k == "KVSSINK_CA_CERT_PATH")
        .expect("the TLS endpoint names its CA")
        .1;
    assert!(
        ep.env()
            .iter()
            .any(|(k, v)| *k == "CONTROL_PLANE_URI" && v.starts_with("https://"))
    );
    let r = run(
        &ep,
        &video(2, "tls-file", ""),
        Duration::from_secs(60),
        RunOptions::default(),
    );
    assert_uploaded(&ep, "tls-file", &r);

    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(&ca, dir.path().join("local-ca.pem")).unwrap();
    let r = run(
        &ep,
        &video(2, "tls-dir", ""),
        Duration::from_secs(60),
        opts(
            vec![("KVSSINK_CA_CERT_PATH", dir.path().display().to_string())],
            &[],
        ),
    );
    assert_uploaded(&ep, "tls-dir", &r);

    let r = run(
        &ep,
        &video(1, "tls-wrong", ""),
        Duration::from_secs(30),
        opts(
            vec![("KVSSINK_CA_CERT_PATH", "/nonexistent/ca.pem".into())],
            &[],
        ),
    );
    assert!(
        r.errors
            .iter()
            .any(|e| e.contains("KVSSINK_CA_CERT_PATH=/nonexistent/ca.pem")),
        "{:?}",
        r.errors
    );

    let r = run(
        &ep,
        &video(1, "tls-untrusted", "restart-on-error=false"),
        Duration::from_secs(30),
        opts(vec![], &["KVSSINK_CA_CERT_PATH"]),
    );
    assert!(
        r.errors
            .iter()
            .any(|e| e.contains("not trusted") && e.contains("KVSSINK_CA_CERT_PATH")),
        "a certificate of an unknown CA is refused, saying what to do: {:?}",
        r.errors
    );
    assert!(ep.fragments("tls-untrusted").is_empty());
}

/// `tests/common/no_instance_metadata.rs` ran before `main`: the default chain, reached by the
/// tests that configure no other source, never asks the instance-metadata address, also under a
/// plain `cargo test`.
#[test]
fn tests_run_with_instance_metadata_disabled() {
    assert_eq!(
        std::env::var("AWS_EC2_METADATA_DISABLED").as_deref(),
        Ok("true")
    );
}
