//! No secret in any output: a fully verbose `gst-launch-1.0 -v -m` run (our categories at
//! level 9, every bus message printed) through the built plugin, with credentials from the
//! properties, the credential file and the IoT provider, including runs that fail for their
//! credentials, plus the local endpoint's trace-level logs. The secret access keys, session
//! tokens, the IoT private key and request signatures must appear nowhere.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvs_local_endpoint::{Config, Credentials, IotEndpointConfig, LocalEndpoint};

const SECRET: &str = "LeakCanarySecretKey0123456789abcdefABCDEF";
const TOKEN: &str = "LeakCanarySessionTokenZZZ9876543210";
const FILE_SECRET: &str = "LeakCanaryFileSecret55555";
const FILE_TOKEN: &str = "LeakCanaryFileToken44444";

/// Collects the endpoint's `tracing` output.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs `gst-launch-1.0 -v -m` of 2 s of video into kvssink with `props`; all its output.
fn launch(ep: &LocalEndpoint, props: &str, extra_env: &[(&str, &str)]) -> String {
    let (mut cmd, _dir) = common::gst_tool("gst-launch-1.0");
    cmd.args(["-v", "-m", "-e"]);
    let line = format!(
        "videotestsrc is-live=true num-buffers=60 ! video/x-raw,width=320,height=240,framerate=30/1 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15 ! h264parse \
         ! kvssink name=sink {props}"
    );
    cmd.args(line.split_whitespace());
    for (k, v) in ep.env() {
        cmd.env(k, v);
    }
    for k in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
    ] {
        cmd.env_remove(k);
    }
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd.env("GST_DEBUG", "kvssink*:9")
        .env("GST_DEBUG_NO_COLOR", "1")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    let out = cmd.output().expect("gst-launch-1.0 runs");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn no_secret_in_any_output_of_a_verbose_run() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");

    let ep = LocalEndpoint::start(Config {
        credentials: Credentials {
            access_key_id: "AKIDLEAKTEST".into(),
            secret_access_key: SECRET.into(),
            session_token: Some(TOKEN.into()),
        },
        iot: Some(IotEndpointConfig {
            credential_lifetime: Some(Duration::from_secs(3600)),
            ..Default::default()
        }),
        ..Config::default()
    })
    .unwrap();
    ep.add_credentials(Credentials {
        access_key_id: "AKIDFILETEST".into(),
        secret_access_key: FILE_SECRET.into(),
        session_token: Some(FILE_TOKEN.into()),
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("credential");
    std::fs::write(
        &file,
        format!("CREDENTIALS AKIDFILETEST 2099-01-01T00:00:00Z {FILE_SECRET} {FILE_TOKEN}\n"),
    )
    .unwrap();
    let iot = ep.iot().unwrap();
    let key_pem = std::fs::read_to_string(&iot.key_path).unwrap();
    let key_body: Vec<&str> = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 16)
        .collect();
    assert!(!key_body.is_empty());

    let mut output = String::new();
    // Properties; the file; IoT.
    let props = format!(
        "stream-name=leak-props access-key=AKIDLEAKTEST secret-key={SECRET} session-token={TOKEN}"
    );
    let out = launch(&ep, &props, &[]);
    assert!(out.contains("PERSISTED"), "the run streamed: {out}");
    output += &out;
    let out = launch(
        &ep,
        &format!("stream-name=leak-file credential-path={}", file.display()),
        &[],
    );
    assert!(out.contains("PERSISTED"), "the run streamed: {out}");
    output += &out;
    let iot_prop = format!(
        "iot-certificate={}",
        iot.structure_string(None).replace(' ', "")
    );
    let out = launch(&ep, &format!("stream-name=leak-iot {iot_prop}"), &[]);
    assert!(out.contains("PERSISTED"), "the run streamed: {out}");
    output += &out;
    // Refused: a wrong secret, then expired credentials.
    let out = launch(
        &ep,
        &format!(
            "stream-name=leak-wrong access-key=AKIDLEAKTEST secret-key={SECRET}x session-token={TOKEN}"
        ),
        &[],
    );
    assert!(out.contains("ERROR"), "the wrong secret failed: {out}");
    output += &out;
    ep.faults().expire_credentials();
    let out = launch(&ep, &props.replace("leak-props", "leak-expired"), &[]);
    assert!(
        out.contains("expired"),
        "the expired credentials failed: {out}"
    );
    output += &out;

    output += &String::from_utf8_lossy(&captured.0.lock().unwrap());
    assert!(
        output.contains("AKIDLEAKTEST"),
        "the access key id may show"
    );
    for secret in [SECRET, TOKEN, FILE_SECRET, FILE_TOKEN, "Signature="]
        .into_iter()
        .chain(key_body.iter().copied())
    {
        let at = output.find(secret);
        assert!(
            at.is_none(),
            "'{secret}' leaked: …{}…",
            &output[at.unwrap().saturating_sub(300)..(at.unwrap() + 100).min(output.len())]
        );
    }
}
