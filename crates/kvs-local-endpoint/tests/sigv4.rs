//! SigV4: the reference element's captured requests (`cpp-putmedia-capture.txt`, secret key
//! `secret`) verify, and any altered byte is rejected — by the verifier alone and by the running
//! endpoint when the captured request is replayed byte for byte over TCP.

mod common;

use std::time::Duration;

use common::*;
use kvs_local_endpoint::sigv4::{self, AuthError, KeyInfo, RequestParts, VerifyParams};
use kvs_local_endpoint::{Config, Credentials};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn capture() -> String {
    let p = media("cpp-putmedia-capture.txt");
    std::fs::read_to_string(p).expect("the capture")
}

/// (path, headers, body) of a captured request.
type Captured = (String, Vec<(String, String)>, Vec<u8>);

/// Every request in the capture: PutMedia first.
fn captured_requests() -> Vec<Captured> {
    let text = capture();
    let mut out = Vec::new();
    // PutMedia: the header block after the request line.
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[1].starts_with("POST /putMedia HTTP/1.1"));
    let headers = lines[2..]
        .iter()
        .take_while(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    out.push(("/putMedia".to_owned(), headers, Vec::new()));
    // Control plane: "==== POST /op", headers, JSON body of content-length bytes.
    for block in text.split("==== POST ").skip(1) {
        let mut it = block.split_inclusive('\n');
        let path = it.next().unwrap().trim().to_owned();
        let mut headers = Vec::new();
        let mut rest = String::new();
        for l in it.by_ref() {
            if l.starts_with('{') {
                rest.push_str(l);
                break;
            }
            let (n, v) = l.split_once(':').unwrap();
            headers.push((n.trim().to_owned(), v.trim().to_owned()));
        }
        rest.extend(it);
        let len: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .unwrap()
            .1
            .parse()
            .unwrap();
        out.push((path, headers, rest.as_bytes()[..len].to_vec()));
    }
    out
}

fn verify(
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
    secret: &str,
) -> Result<String, AuthError> {
    let refs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let hash = if path == "/putMedia" {
        sigv4::EMPTY_SHA256.to_owned()
    } else {
        sigv4::sha256_hex(body)
    };
    let parts = RequestParts {
        method: "POST",
        path,
        query: "",
        headers: &refs,
        payload_sha256: &hash,
    };
    let date = headers
        .iter()
        .find(|(n, _)| n == "X-Amz-Date")
        .unwrap()
        .1
        .clone();
    let params = VerifyParams {
        service: "kinesisvideo",
        region: Some("us-west-2"),
        now: sigv4::parse_amz_date(&date).unwrap() + Duration::from_secs(30),
        max_skew: Some(Duration::from_secs(300)),
    };
    sigv4::verify(&parts, &params, |ak| {
        (ak == "AKIDEXAMPLE").then(|| KeyInfo {
            secret_access_key: secret.to_owned(),
            session_token: None,
            expired: false,
        })
    })
}

#[test]
fn captured_requests_verify_and_every_tampering_is_rejected() {
    let reqs = captured_requests();
    assert_eq!(reqs.len(), 6, "PutMedia + 5 control-plane requests");
    for (path, headers, body) in &reqs {
        assert_eq!(
            verify(path, headers, body, "secret").as_deref(),
            Ok("AKIDEXAMPLE"),
            "{path}"
        );
        assert_eq!(
            verify(path, headers, body, "secreT"),
            Err(AuthError::SignatureMismatch)
        );

        // One byte changed in each signed header value.
        let auth = &headers
            .iter()
            .find(|(n, _)| n == "Authorization")
            .unwrap()
            .1;
        let signed: Vec<String> = auth
            .split("SignedHeaders=")
            .nth(1)
            .unwrap()
            .split(',')
            .next()
            .unwrap()
            .split(';')
            .map(str::to_owned)
            .collect();
        for name in &signed {
            let mut h = headers.clone();
            let v = &mut h
                .iter_mut()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .unwrap()
                .1;
            let mut chars: Vec<char> = v.chars().collect();
            let i = chars.len().saturating_sub(2);
            chars[i] = match chars[i] {
                d @ '0'..='9' => char::from(b'0' + (d as u8 - b'0' + 1) % 10),
                'x' => 'y',
                _ => 'x',
            };
            *v = chars.into_iter().collect();
            assert_eq!(
                verify(path, &h, body, "secret"),
                Err(AuthError::SignatureMismatch),
                "{path}: altered {name}"
            );
        }
        // One byte changed in the signature.
        let mut h = headers.clone();
        let a = &mut h.iter_mut().find(|(n, _)| n == "Authorization").unwrap().1;
        let flipped = if a.ends_with('0') { '1' } else { '0' };
        a.pop();
        a.push(flipped);
        assert_eq!(
            verify(path, &h, body, "secret"),
            Err(AuthError::SignatureMismatch)
        );
        // One byte changed in a control-plane body.
        if !body.is_empty() {
            let mut b = body.clone();
            let i = b.iter().position(|&c| c == b'"').unwrap() + 1;
            b[i] ^= 0x20;
            assert_eq!(
                verify(path, headers, &b, "secret"),
                Err(AuthError::SignatureMismatch)
            );
        }
    }
    // Unsigned headers may change: content-type is not signed by the reference element.
    let (path, mut headers, body) = reqs[0].clone();
    headers
        .iter_mut()
        .find(|(n, _)| n == "content-type")
        .unwrap()
        .1 = "text/plain".into();
    assert!(verify(&path, &headers, &body, "secret").is_ok());
}

#[test]
fn freshness_scope_and_key_are_checked() {
    let (path, headers, body) = captured_requests().remove(0);
    let refs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let parts = RequestParts {
        method: "POST",
        path: &path,
        query: "",
        headers: &refs,
        payload_sha256: sigv4::EMPTY_SHA256,
    };
    let _ = body;
    let signed_at = sigv4::parse_amz_date("20261122T013743Z").unwrap();
    let key = |_: &str| {
        Some(KeyInfo {
            secret_access_key: "secret".into(),
            session_token: None,
            expired: false,
        })
    };
    let params = |now, region| VerifyParams {
        service: "kinesisvideo",
        region,
        now,
        max_skew: Some(Duration::from_secs(300)),
    };
    let late = sigv4::verify(
        &parts,
        &params(signed_at + Duration::from_secs(301), Some("us-west-2")),
        key,
    );
    assert!(
        matches!(late, Err(AuthError::SignatureExpired { .. })),
        "{late:?}"
    );
    assert_eq!(late.unwrap_err().error_type(), "InvalidSignatureException");
    let wrong_region = sigv4::verify(&parts, &params(signed_at, Some("eu-west-1")), key);
    assert!(matches!(wrong_region, Err(AuthError::Scope(_))));
    let unknown = sigv4::verify(&parts, &params(signed_at, Some("us-west-2")), |_| None);
    assert_eq!(unknown, Err(AuthError::UnknownAccessKey));
    assert_eq!(
        AuthError::UnknownAccessKey.error_type(),
        "UnrecognizedClientException"
    );
    let expired = sigv4::verify(&parts, &params(signed_at, Some("us-west-2")), |_| {
        Some(KeyInfo {
            secret_access_key: "secret".into(),
            session_token: None,
            expired: true,
        })
    });
    assert_eq!(expired, Err(AuthError::ExpiredToken));
}

/// The captured PutMedia request, replayed byte for byte (its Host, Connection,
/// Transfer-Encoding and Expect headers included) against the running endpoint.
async fn replay_capture(tamper: bool) -> String {
    let ep = start(Config {
        credentials: Credentials::new("AKIDEXAMPLE", "secret"),
        // The capture was signed on 2026-11-22; freshness is checked by the unit test above.
        max_clock_skew: None,
        ..Default::default()
    });
    ep.create_stream("test", 2).unwrap();
    let text = capture();
    let mut head = String::new();
    for l in text.lines().skip(1).take_while(|l| !l.is_empty()) {
        head.push_str(l);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    if tamper {
        head = head.replace(
            "x-amzn-producer-start-timestamp: 1795311463.672",
            "x-amzn-producer-start-timestamp: 1795311463.673",
        );
    }
    let mut s = tokio::net::TcpStream::connect(ep.addr()).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
    let sessions = ep.sessions(Some("test"));
    let log = ep.requests();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].access_key_id.as_deref(), Some("AKIDEXAMPLE"));
    assert_eq!(log[0].status, if tamper { 403 } else { 200 });
    assert_eq!(sessions.len(), usize::from(!tamper));
    answer
}

#[tokio::test]
async fn the_endpoint_accepts_the_captured_request_and_rejects_a_tampered_one() {
    let ok = replay_capture(false).await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    let bad = replay_capture(true).await;
    assert!(bad.starts_with("HTTP/1.1 403"), "{bad}");
    assert!(
        bad.to_ascii_lowercase()
            .contains("x-amzn-errortype: invalidsignatureexception"),
        "{bad}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_or_foreign_signatures_are_answered_like_the_service() {
    let ep = start(Config::default());
    ep.create_stream("s", 2).unwrap();
    let body = mkv_stream(1000, 1, 2, 10);
    let mut req = PutMediaRequest::new(&ep, "s");
    req.signing_time = Some(std::time::SystemTime::now() - Duration::from_secs(600));
    let up = put_media(
        &req,
        schedule(&body, Pacing::FullSpeed { max_chunk: 100 }),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(up.status, 403);
    let body_json = up.error_body.unwrap();
    assert_eq!(body_json["__type"], "InvalidSignatureException");
    assert!(
        body_json["Message"]
            .as_str()
            .unwrap()
            .starts_with("Signature expired")
    );

    let mut req = PutMediaRequest::new(&ep, "s");
    req.credentials = Credentials::new("AKIDSOMEONEELSE", "x");
    let up = put_media(
        &req,
        schedule(&body, Pacing::FullSpeed { max_chunk: 100 }),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(up.status, 403);
    assert_eq!(
        up.error_body.unwrap()["__type"],
        "UnrecognizedClientException"
    );

    // The request log names the access key, never a secret or a signature.
    let log = serde_json::to_string(&ep.requests()).unwrap();
    assert!(log.contains(&ep.credentials().access_key_id));
    assert!(!log.contains(&ep.credentials().secret_access_key));
    assert!(!log.contains("Signature="));
}
