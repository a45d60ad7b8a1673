//! Helpers shared by the `local_*` tests of the local KVS endpoint: an SDK client pointed at it,
//! a plain chunked PutMedia client (reqwest + aws-sigv4, independent of the endpoint's code), an
//! independent whole-file Matroska splitter to check fragments against, and MKV builders for
//! rule tests. Compiled as its own (empty) test target too, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use kvs_local_endpoint::{Ack, Config, Credentials, LocalEndpoint};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

#[path = "../../../../tests/common/no_instance_metadata.rs"]
mod no_instance_metadata;

pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// A file of the repository's `tests/data` (provenance in its README).
pub fn media(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data")
        .join(name)
}

pub fn read_media(name: &str) -> Vec<u8> {
    std::fs::read(media(name)).unwrap_or_else(|e| panic!("reading {name}: {e}"))
}

pub fn start(config: Config) -> LocalEndpoint {
    LocalEndpoint::start(config).expect("endpoint starts")
}

/// An SDK client pointed at `url` with an endpoint override.
pub fn sdk_client(
    url: &str,
    creds: &Credentials,
    max_attempts: u32,
) -> aws_sdk_kinesisvideo::Client {
    let c = aws_credential_types::Credentials::new(
        &creds.access_key_id,
        &creds.secret_access_key,
        creds.session_token.clone(),
        None,
        "local-test",
    );
    let conf = aws_sdk_kinesisvideo::Config::builder()
        .behavior_version(aws_sdk_kinesisvideo::config::BehaviorVersion::latest())
        .region(aws_sdk_kinesisvideo::config::Region::new("us-west-2"))
        .credentials_provider(c)
        .endpoint_url(url)
        .retry_config(
            aws_sdk_kinesisvideo::config::retry::RetryConfig::standard()
                .with_max_attempts(max_attempts)
                .with_initial_backoff(Duration::from_millis(10)),
        )
        .build();
    aws_sdk_kinesisvideo::Client::from_conf(conf)
}

/// A fragment as found by a whole-file walk: metadata Tags before a Cluster + the Cluster.
#[derive(Debug, Clone)]
pub struct ExpectedFragment {
    pub timecode: u64,
    pub start: usize,
    pub end: usize,
    /// SimpleBlocks in the Cluster.
    pub blocks: u64,
}

fn vint(b: &[u8], keep_marker: bool) -> (u64, usize, bool) {
    let len = b[0].leading_zeros() as usize + 1;
    let mask: u8 = if len >= 8 { 0 } else { 0xFF >> len };
    let first = if keep_marker { b[0] } else { b[0] & mask };
    let mut v = first as u64;
    let mut ones = b[0] & mask == mask;
    for &x in &b[1..len] {
        v = v << 8 | x as u64;
        ones &= x == 0xFF;
    }
    (v, len, ones)
}

/// Independent of the endpoint's incremental splitter: walks a complete file's top level.
/// Returns (end of the header = start of the first Tags/Cluster, fragments).
pub fn expected_fragments(b: &[u8]) -> (usize, Vec<ExpectedFragment>) {
    const CLUSTER: u64 = 0x1F43B675;
    const TAGS: u64 = 0x1254C367;
    const TOP: [u64; 8] = [
        0x1549A966, 0x1654AE6B, CLUSTER, TAGS, 0x114D9B74, 0x1C53BB6B, 0x1043A770, 0x1941A469,
    ];
    let (_, l, _) = vint(b, true);
    let (size, sl, _) = vint(&b[l..], false);
    let mut i = l + sl + size as usize;
    let (_, l, _) = vint(&b[i..], true);
    let (_, sl, _) = vint(&b[i + l..], false);
    i += l + sl;
    let mut header_end = None;
    let mut pending_start = None;
    let mut out: Vec<ExpectedFragment> = Vec::new();
    while i < b.len() {
        let (id, il, _) = vint(&b[i..], true);
        let (size, sl, unknown) = vint(&b[i + il..], false);
        let body = i + il + sl;
        let mut blocks = 0;
        let end = if id == CLUSTER {
            let limit = if unknown {
                b.len()
            } else {
                body + size as usize
            };
            let mut j = body;
            while j < limit {
                let (cid, cl, _) = vint(&b[j..], true);
                if unknown && TOP.contains(&cid) {
                    break;
                }
                if cid == 0xA3 {
                    blocks += 1;
                }
                let (cs, csl, _) = vint(&b[j + cl..], false);
                j += cl + csl + cs as usize;
            }
            j
        } else {
            body + size as usize
        };
        match id {
            TAGS => {
                header_end.get_or_insert(i);
                let eofr = b[i..end]
                    .windows(32)
                    .any(|w| w == b"AWS_KINESISVIDEO_END_OF_FRAGMENT");
                match out.last_mut() {
                    // An end-of-fragment tag closes the fragment before it.
                    Some(last) if eofr && last.end == i => last.end = end,
                    _ => {
                        pending_start.get_or_insert(i);
                    }
                }
            }
            CLUSTER => {
                header_end.get_or_insert(i);
                // Cluster Timecode is the first child in both files.
                assert_eq!(b[body], 0xE7);
                let (n, nl, _) = vint(&b[body + 1..], false);
                let tc = b[body + 1 + nl..body + 1 + nl + n as usize]
                    .iter()
                    .fold(0u64, |a, &x| a << 8 | x as u64);
                out.push(ExpectedFragment {
                    timecode: tc,
                    start: pending_start.take().unwrap_or(i),
                    end,
                    blocks,
                });
            }
            _ => {}
        }
        i = end;
    }
    (header_end.unwrap_or(b.len()), out)
}

/// How the client paces its upload.
#[derive(Debug, Clone, Copy)]
pub enum Pacing {
    /// As fast as the connection takes it, in chunks of pseudo-random size up to this many bytes.
    FullSpeed { max_chunk: usize },
    /// Each fragment's bytes spread over its duration (next fragment's timecode − its own),
    /// divided by `speed` (1.0 = real time).
    Timed { speed: f64 },
}

#[derive(Debug, Clone)]
pub struct PutMediaRequest {
    pub url: String,
    pub credentials: Credentials,
    pub stream: String,
    pub timecode_type: &'static str,
    pub producer_start: String,
    pub acks_required: bool,
    /// Signed at this time instead of now.
    pub signing_time: Option<SystemTime>,
    /// PEM of the only CA to trust (TLS endpoints).
    pub ca_pem: Option<Vec<u8>>,
}

impl PutMediaRequest {
    pub fn new(ep: &LocalEndpoint, stream: &str) -> Self {
        PutMediaRequest {
            url: ep.url().to_owned(),
            credentials: ep.credentials(),
            stream: stream.to_owned(),
            timecode_type: "ABSOLUTE",
            producer_start: format!(
                "{:.3}",
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap()
                    .as_secs_f64()
            ),
            acks_required: true,
            signing_time: None,
            ca_pem: ep.ca_certificate_path().map(|p| std::fs::read(p).unwrap()),
        }
    }
}

/// What the client saw.
#[derive(Debug)]
pub struct Upload {
    pub status: u16,
    pub error_type: Option<String>,
    pub error_body: Option<serde_json::Value>,
    /// ACKs with the time they were parsed.
    pub acks: Vec<(Instant, Ack)>,
    /// How the ACK stream ended: `Ok` (response complete) or the client's error text.
    pub response_end: Result<(), String>,
    pub started: Instant,
    /// When the last body byte was handed to the connection (None: not all was sent).
    pub body_done: Option<Instant>,
    pub bytes_sent: u64,
    /// Text of the error the body sender saw, if any.
    pub send_error: Option<String>,
}

impl Upload {
    pub fn of_type(&self, t: kvs_local_endpoint::AckEventType) -> Vec<&Ack> {
        self.acks
            .iter()
            .map(|(_, a)| a)
            .filter(|a| a.event_type == t)
            .collect()
    }
}

/// A schedule: (time offset from start, bytes) pieces that make up the body.
pub fn schedule(body: &[u8], pacing: Pacing) -> Vec<(Duration, Bytes)> {
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move |max: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        1 + (rng % max as u64) as usize
    };
    let all = Bytes::copy_from_slice(body);
    match pacing {
        Pacing::FullSpeed { max_chunk } => {
            let mut out = Vec::new();
            let mut i = 0;
            while i < all.len() {
                let n = next(max_chunk).min(all.len() - i);
                out.push((Duration::ZERO, all.slice(i..i + n)));
                i += n;
            }
            out
        }
        Pacing::Timed { speed } => {
            let (header_end, frags) = expected_fragments(body);
            let t0 = frags[0].timecode;
            let mut out = vec![(Duration::ZERO, all.slice(0..header_end))];
            for (k, f) in frags.iter().enumerate() {
                let start_ms = (f.timecode - t0) as f64 / speed;
                let dur_ms = match frags.get(k + 1) {
                    Some(n) => (n.timecode - f.timecode) as f64 / speed,
                    None => 0.0,
                };
                let mut i = f.start;
                while i < f.end {
                    let n = next(16 * 1024).min(f.end - i);
                    let frac = (i - f.start) as f64 / (f.end - f.start) as f64;
                    let at = Duration::from_secs_f64((start_ms + frac * dur_ms) / 1000.0);
                    out.push((at, all.slice(i..i + n)));
                    i += n;
                }
            }
            if let Some(last) = frags.last()
                && last.end < all.len()
            {
                let at = out.last().unwrap().0;
                out.push((at, all.slice(last.end..)));
            }
            out
        }
    }
}

fn sign(
    req: &mut http::Request<reqwest::Body>,
    creds: &Credentials,
    time: SystemTime,
    payload_hash: &str,
) {
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    let identity = aws_credential_types::Credentials::new(
        &creds.access_key_id,
        &creds.secret_access_key,
        creds.session_token.clone(),
        None,
        "local-test",
    )
    .into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region("us-west-2")
        .name("kinesisvideo")
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let headers: Vec<(&str, &str)> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str(), v.to_str().unwrap()))
        .collect();
    let signable = SignableRequest::new(
        req.method().as_str(),
        req.uri().to_string(),
        headers.into_iter(),
        SignableBody::Precomputed(payload_hash.to_owned()),
    )
    .unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    instructions.apply_to_request_http1x(req);
}

pub fn http_client(ca_pem: Option<&[u8]>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .http1_only()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(0);
    if let Some(pem) = ca_pem {
        b = b.tls_certs_only([reqwest::Certificate::from_pem(pem).unwrap()]);
    }
    b.build().unwrap()
}

/// Streams `pieces` to `/putMedia` as a chunked body while reading ACKs; gives up after `limit`.
pub async fn put_media(
    req: &PutMediaRequest,
    pieces: Vec<(Duration, Bytes)>,
    limit: Duration,
) -> Upload {
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(2);
    let body = reqwest::Body::wrap_stream(ReceiverStream::new(rx));
    let mut hreq = http::Request::builder()
        .method("POST")
        .uri(format!("{}/putMedia", req.url))
        .header("x-amzn-stream-name", &req.stream)
        .header("x-amzn-fragment-timecode-type", req.timecode_type)
        .header("x-amzn-producer-start-timestamp", &req.producer_start)
        .header(
            "x-amzn-fragment-acknowledgment-required",
            if req.acks_required { "1" } else { "0" },
        )
        .header("user-agent", "kvssink-rs-local-test/1.0")
        .body(body)
        .unwrap();
    sign(
        &mut hreq,
        &req.credentials,
        req.signing_time.unwrap_or_else(SystemTime::now),
        EMPTY_SHA256,
    );
    let started = Instant::now();
    let sender = tokio::spawn(async move {
        let mut sent = 0u64;
        for (at, piece) in pieces {
            tokio::time::sleep_until((started + at).into()).await;
            let n = piece.len() as u64;
            if let Err(e) = tx.send(Ok(piece)).await {
                return (sent, None, Some(e.to_string()));
            }
            sent += n;
        }
        (sent, Some(Instant::now()), None)
    });
    let client = http_client(req.ca_pem.as_deref());
    let run = async {
        let resp = match client
            .execute(reqwest::Request::try_from(hreq).unwrap())
            .await
        {
            Ok(r) => r,
            Err(e) => {
                return (0, None, None, Vec::new(), Err(format!("{e:?}")));
            }
        };
        let status = resp.status().as_u16();
        if status != 200 {
            let et = resp
                .headers()
                .get("x-amzn-errortype")
                .map(|v| v.to_str().unwrap().to_owned());
            let body = resp
                .bytes()
                .await
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            return (status, et, body, Vec::new(), Ok(()));
        }
        let mut resp = resp;
        let mut buf = Vec::<u8>::new();
        let mut acks = Vec::new();
        let end = loop {
            match resp.chunk().await {
                Ok(Some(c)) => {
                    buf.extend_from_slice(&c);
                    let mut it = serde_json::Deserializer::from_slice(&buf).into_iter::<Ack>();
                    loop {
                        match it.next() {
                            Some(Ok(a)) => acks.push((Instant::now(), a)),
                            Some(Err(e)) if e.is_eof() => break,
                            Some(Err(e)) => panic!("bad ACK JSON: {e}"),
                            None => break,
                        }
                    }
                    let off = it.byte_offset();
                    buf.drain(..off);
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(format!("{e:?}")),
            }
        };
        (status, None, None, acks, end)
    };
    let (status, error_type, error_body, acks, response_end) = tokio::time::timeout(limit, run)
        .await
        .unwrap_or_else(|_| (0, None, None, Vec::new(), Err("test timeout".into())));
    // The body sender has nothing more to do once the response ended.
    let (bytes_sent, body_done, send_error) =
        match tokio::time::timeout(Duration::from_millis(500), sender).await {
            Ok(Ok(r)) => r,
            _ => (
                0,
                None,
                Some("sender still blocked after the response ended".into()),
            ),
        };
    Upload {
        status,
        error_type,
        error_body,
        acks,
        response_end,
        started,
        body_done,
        bytes_sent,
        send_error,
    }
}

/// A signed control-plane call with a raw JSON body; returns (status, x-amzn-ErrorType, JSON).
pub async fn raw_call(
    url: &str,
    creds: &Credentials,
    op_path: &str,
    body: &serde_json::Value,
) -> (u16, Option<String>, serde_json::Value) {
    let bytes = serde_json::to_vec(body).unwrap();
    let hash = {
        use sha2::Digest;
        sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let mut req = http::Request::builder()
        .method("POST")
        .uri(format!("{url}{op_path}"))
        .header("content-type", "application/json")
        .body(reqwest::Body::from(bytes))
        .unwrap();
    sign(&mut req, creds, SystemTime::now(), &hash);
    let resp = http_client(None)
        .execute(reqwest::Request::try_from(req).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let et = resp
        .headers()
        .get("x-amzn-errortype")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = resp.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, et, json)
}

// ---- MKV builders for rule tests ------------------------------------------------------------

fn size_vint(n: usize) -> Vec<u8> {
    let mut v = (n as u64 | 1 << 56).to_be_bytes().to_vec();
    v[0] = 0x01;
    v
}

pub fn element(id: &[u8], body: &[u8]) -> Vec<u8> {
    let mut v = id.to_vec();
    v.extend(size_vint(body.len()));
    v.extend_from_slice(body);
    v
}

pub fn uint_element(id: &[u8], value: u64) -> Vec<u8> {
    element(id, &value.to_be_bytes())
}

/// EBML header + unknown-size Segment + Info + Tracks with `tracks` video tracks numbered 1..=n.
pub fn mkv_header(tracks: u64) -> Vec<u8> {
    let ebml = element(
        &[0x1A, 0x45, 0xDF, 0xA3],
        &[
            element(&[0x42, 0x82], b"matroska"),
            uint_element(&[0x42, 0x87], 2),
        ]
        .concat(),
    );
    let segment = [
        0x18, 0x53, 0x80, 0x67, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
    ];
    let info = element(
        &[0x15, 0x49, 0xA9, 0x66],
        &[
            uint_element(&[0x2A, 0xD7, 0xB1], 1_000_000),
            element(&[0x4D, 0x80], b"test"),
        ]
        .concat(),
    );
    let entries: Vec<u8> = (1..=tracks)
        .flat_map(|n| {
            element(
                &[0xAE],
                &[
                    uint_element(&[0xD7], n),
                    uint_element(&[0x73, 0xC5], n),
                    uint_element(&[0x83], 1),
                    element(&[0x86], b"V_MPEG4/ISO/AVC"),
                ]
                .concat(),
            )
        })
        .collect();
    let tracks = element(&[0x16, 0x54, 0xAE, 0x6B], &entries);
    [ebml, segment.to_vec(), info, tracks].concat()
}

/// An unknown-size Cluster at `timecode` with one block per (track, relative timecode, size).
pub fn mkv_cluster(timecode: u64, blocks: &[(u8, i16, usize)]) -> Vec<u8> {
    let mut v = vec![
        0x1F, 0x43, 0xB6, 0x75, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
    ];
    v.extend(uint_element(&[0xE7], timecode));
    for (i, &(track, rel, size)) in blocks.iter().enumerate() {
        let mut body = vec![0x80 | track];
        body.extend(rel.to_be_bytes());
        body.push(if i == 0 { 0x80 } else { 0 });
        body.extend(std::iter::repeat_n(0xAB, size));
        v.extend(element(&[0xA3], &body));
    }
    v
}

/// A simple video stream: `n` fragments of `frames` frames 40 ms apart, 1 s per fragment.
pub fn mkv_stream(start_tc: u64, n: u64, frames: usize, frame_size: usize) -> Vec<u8> {
    let mut v = mkv_header(1);
    for k in 0..n {
        let blocks: Vec<(u8, i16, usize)> = (0..frames)
            .map(|i| (1, (i * 40) as i16, frame_size))
            .collect();
        v.extend(mkv_cluster(start_tc + k * 1000, &blocks));
    }
    v
}
