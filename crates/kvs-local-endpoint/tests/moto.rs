//! The same control-plane calls against the local endpoint and against moto (a third-party
//! implementation, from PyPI), comparing the shapes of the answers: HTTP status, error type, and
//! the JSON structure (keys and value types) of successful answers. moto runs from a venv this
//! test creates under the target directory; the test is skipped, with the reason printed, only if
//! that venv cannot be installed.
//!
//! Only the calls moto implements are compared (moto 5.2.5 has no TagStream/UntagStream/
//! ListTagsForStream routes).

mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use kvs_local_endpoint::{Config, Credentials};
use serde_json::{Value, json};

const MOTO: &str = "moto[server]==5.2.5";

/// Finds or creates the venv; `Err` says why moto cannot be had.
fn moto_venv() -> Result<PathBuf, String> {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("moto-venv");
    let server = venv.join("bin/moto_server");
    if server.exists() {
        return Ok(server);
    }
    let run = |cmd: &mut Command| -> Result<(), String> {
        let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{cmd:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            ))
        }
    };
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", MOTO]))?;
    server
        .exists()
        .then_some(server)
        .ok_or_else(|| "moto_server missing after install".into())
}

struct Moto {
    child: Child,
    url: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_moto(server: &Path) -> Moto {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(server)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto_server starts");
    let moto = Moto {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto_server did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    moto
}

/// Keys and value types, recursively; arrays by their first element.
fn shape(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
        Value::Array(a) => Value::Array(a.first().map(shape).into_iter().collect()),
        Value::String(_) => json!("string"),
        Value::Number(_) => json!("number"),
        Value::Bool(_) => json!("bool"),
        Value::Null => json!("null"),
    }
}

/// Drops `key` from every object.
fn without(v: &Value, key: &str) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| *k != key)
                .map(|(k, v)| (k.clone(), without(v, key)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(|v| without(v, key)).collect()),
        other => other.clone(),
    }
}

/// (status, error type) of an answer, or (200, shape).
fn answer((status, error_type, body): (u16, Option<String>, Value)) -> (u16, Value) {
    if status == 200 {
        return (status, shape(&body));
    }
    let from_header = error_type.map(|t| t.split(':').next().unwrap().to_owned());
    let from_body = body["__type"]
        .as_str()
        .map(|t| t.rsplit('#').next().unwrap().to_owned());
    (status, json!(from_header.or(from_body)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_answers_have_the_shapes_moto_gives() {
    let server = match tokio::task::spawn_blocking(moto_venv).await.unwrap() {
        Ok(s) => s,
        Err(why) => {
            println!("SKIPPED: cannot install {MOTO}: {why}");
            return;
        }
    };
    let moto = start_moto(&server);
    let creds = Credentials::new("AKIDEXAMPLE", "secret");
    let ep = start(Config {
        credentials: creds.clone(),
        ..Default::default()
    });

    // Each step: (path, body). `{arn}` is replaced by the ARN each side returned.
    let steps: Vec<(&str, Value)> = vec![
        (
            "/createStream",
            json!({"DeviceName": "Kinesis_Video_Device", "StreamName": "cmp", "MediaType": "video/h264", "DataRetentionInHours": 2}),
        ),
        (
            "/createStream",
            json!({"StreamName": "cmp", "DataRetentionInHours": 2}),
        ),
        ("/describeStream", json!({"StreamName": "cmp"})),
        ("/describeStream", json!({"StreamARN": "{arn}"})),
        ("/describeStream", json!({"StreamName": "missing"})),
        ("/listStreams", json!({})),
        ("/listStreams", json!({"MaxResults": 1})),
        (
            "/getDataEndpoint",
            json!({"StreamName": "cmp", "APIName": "PUT_MEDIA"}),
        ),
        (
            "/getDataEndpoint",
            json!({"StreamName": "missing", "APIName": "PUT_MEDIA"}),
        ),
        ("/deleteStream", json!({"StreamARN": "{arn}"})),
        ("/describeStream", json!({"StreamName": "cmp"})),
    ];
    let mut arns = [String::new(), String::new()];
    let mut compared = 0;
    for (path, body) in &steps {
        let mut results = Vec::new();
        for (i, url) in [ep.url(), moto.url.as_str()].into_iter().enumerate() {
            let body = serde_json::from_str::<Value>(&body.to_string().replace("{arn}", &arns[i]))
                .unwrap();
            let r = raw_call(url, &creds, path, &body).await;
            if let Some(a) = r.2["StreamARN"].as_str() {
                arns[i] = a.to_owned();
            }
            results.push(r);
        }
        let ours = answer(results[0].clone());
        let theirs = answer(results[1].clone());
        // moto leaves out KmsKeyId when none was given; the service reports its default key
        // (`arn:aws:kms:<region>:<account>:alias/aws/kinesisvideo`), and so do we.
        let info = ours
            .1
            .get("StreamInfo")
            .or(ours.1.get("StreamInfoList").and_then(|l| l.get(0)));
        if let Some(info) = info {
            assert_eq!(info["KmsKeyId"], "string", "{path}: KmsKeyId");
        }
        let ours = (ours.0, without(&ours.1, "KmsKeyId"));
        assert_eq!(
            ours, theirs,
            "{path} {body}: ours {:?} / moto {:?}",
            results[0], results[1]
        );
        compared += 1;
    }
    assert_eq!(compared, steps.len());
    // Same answer, and the data endpoint is ours (moto's points at AWS).
    assert_eq!(ep.requests().len(), steps.len());
}
