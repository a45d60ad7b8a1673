//! PutMedia against the local endpoint with a plain chunked HTTP client: the two KVS-SDK files at
//! full speed and paced (real time / 4× real time), ACKed fragment by fragment while the body
//! streams, stored byte-identically; a corrupted copy and the service's other rules answered with
//! the service's ERROR ACKs.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use kvs_local_endpoint::{
    Ack, AckEventType, Config, FragmentState, LocalEndpoint, SessionEnd, StreamStatus,
};

const CPP: &str = "kvs-cpp-test-stream-1_0.mkv";
const JAVA: &str = "kvs-java-clusters.mkv";

fn setup(stream: &str, config: Config) -> LocalEndpoint {
    let ep = start(config);
    ep.create_stream(stream, 2).unwrap();
    ep
}

/// Per fragment: BUFFERING, RECEIVED, PERSISTED in this order, with the file's timecodes.
fn assert_acked_in_order(up: &Upload, expected: &[ExpectedFragment]) {
    for (k, f) in expected.iter().enumerate() {
        let pos = |t: AckEventType| {
            up.acks
                .iter()
                .position(|(_, a)| a.event_type == t && a.fragment_timecode == Some(f.timecode))
                .unwrap_or_else(|| panic!("no {t:?} ACK for fragment {k} ({})", f.timecode))
        };
        let (b, r, p) = (
            pos(AckEventType::Buffering),
            pos(AckEventType::Received),
            pos(AckEventType::Persisted),
        );
        assert!(b < r && r < p, "fragment {k}: ACK order {b} {r} {p}");
        let numbers: Vec<&String> = [b, r, p]
            .iter()
            .map(|&i| up.acks[i].1.fragment_number.as_ref().unwrap())
            .collect();
        assert!(numbers.iter().all(|n| *n == numbers[0] && n.len() == 47));
    }
    let persisted: Vec<u64> = up
        .of_type(AckEventType::Persisted)
        .iter()
        .map(|a| a.fragment_timecode.unwrap())
        .collect();
    let want: Vec<u64> = expected.iter().map(|f| f.timecode).collect();
    assert_eq!(persisted, want, "PERSISTED ACKs, in order");
}

/// Every fragment stored byte-identically, and the stored file playable.
fn assert_stored(ep: &LocalEndpoint, stream: &str, file: &[u8], expected: &[ExpectedFragment]) {
    let frags = ep.fragments(stream);
    assert_eq!(frags.len(), expected.len());
    let mut concatenated = Vec::new();
    for (f, e) in frags.iter().zip(expected) {
        assert_eq!(f.state, FragmentState::Persisted);
        assert_eq!(f.timecode, e.timecode);
        assert_eq!(f.frames_per_track.values().sum::<u64>(), e.blocks);
        let stored = ep.fragment_bytes(stream, f.index).expect("stored");
        assert!(
            stored == file[e.start..e.end],
            "fragment {} differs from the file bytes {}..{}",
            f.index,
            e.start,
            e.end
        );
        concatenated.extend_from_slice(&stored);
    }
    let path = ep.stored_mkv_path(stream).expect("a stored .mkv");
    let on_disk = std::fs::read(&path).unwrap();
    assert!(on_disk.ends_with(&concatenated));
    // Playable: ffprobe decodes every frame of the stored file.
    if let Ok(out) = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"])
        .arg(&path)
        .output()
    {
        let frames: u64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        let blocks: u64 = expected.iter().map(|e| e.blocks).sum();
        assert_eq!(frames, blocks, "ffprobe frames of {}", path.display());
    }
}

async fn stream_file(
    name: &str,
    pacing: Pacing,
    timecode_type: &'static str,
) -> (LocalEndpoint, Upload, Vec<u8>, Vec<ExpectedFragment>) {
    let file = read_media(name);
    let (_, expected) = expected_fragments(&file);
    let ep = setup("media", Config::default());
    let mut req = PutMediaRequest::new(&ep, "media");
    req.timecode_type = timecode_type;
    let up = put_media(&req, schedule(&file, pacing), Duration::from_secs(30)).await;
    assert_eq!(up.status, 200, "{:?}", up.error_body);
    assert_eq!(up.response_end, Ok(()), "the response ends normally");
    (ep, up, file, expected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpp_file_at_full_speed_is_acked_per_fragment_and_stored_byte_identically() {
    let (ep, up, file, expected) = stream_file(
        CPP,
        Pacing::FullSpeed {
            max_chunk: 64 * 1024,
        },
        "ABSOLUTE",
    )
    .await;
    let elapsed = up.started.elapsed();
    assert_eq!(expected.len(), 37);
    assert_acked_in_order(&up, &expected);
    assert_eq!(up.of_type(AckEventType::Persisted).len(), 37);
    assert!(up.of_type(AckEventType::Error).is_empty());
    assert_stored(&ep, "media", &file, &expected);
    let s = &ep.sessions(Some("media"))[0];
    assert_eq!(s.end, Some(SessionEnd::BodyEnded));
    assert_eq!(s.bytes_received, file.len() as u64);
    // Fragments carry the file's metadata tags and absolute producer timestamps.
    let frags = ep.fragments("media");
    assert_eq!(
        frags[1].tags.first().map(|t| t.0.as_str()),
        Some("metadata_key_1")
    );
    assert_eq!(frags[0].producer_timestamp_ms, Some(expected[0].timecode));
    println!(
        "full speed: {} fragments, {} bytes in {:?} = {:.0} fragments/s, {:.1} MB/s",
        expected.len(),
        file.len(),
        elapsed,
        expected.len() as f64 / elapsed.as_secs_f64(),
        file.len() as f64 / elapsed.as_secs_f64() / 1e6
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_file_at_full_speed_is_acked_per_fragment_and_stored_byte_identically() {
    let (ep, up, file, expected) =
        stream_file(JAVA, Pacing::FullSpeed { max_chunk: 4096 }, "RELATIVE").await;
    assert_eq!(expected.len(), 8);
    assert_acked_in_order(&up, &expected);
    assert_stored(&ep, "media", &file, &expected);
    // The global Tags before the first Cluster travel with fragment 0; Cues are not a fragment.
    let frags = ep.fragments("media");
    assert!(frags[0].tags.iter().any(|(n, _)| n == "ENCODER"));
    // RELATIVE: producer timestamp = producer start + timecode.
    let start = frags[0].producer_timestamp_ms.unwrap();
    assert_eq!(
        frags[7].producer_timestamp_ms,
        Some(start + expected[7].timecode)
    );
}

/// The cpp file at 4× real time (~14 s): ACKs interleave with the upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpp_file_paced_4x_real_time_is_acked_while_the_body_streams() {
    let (ep, up, file, expected) = stream_file(CPP, Pacing::Timed { speed: 4.0 }, "ABSOLUTE").await;
    assert_acked_in_order(&up, &expected);
    let done = up.body_done.expect("whole body sent");
    let early = up
        .acks
        .iter()
        .filter(|(t, a)| a.event_type == AckEventType::Persisted && *t < done)
        .count();
    assert!(
        early >= 34,
        "only {early} PERSISTED ACKs before the body ended"
    );
    let span = Duration::from_millis((expected[36].timecode - expected[0].timecode) / 4);
    assert!(done - up.started >= span - Duration::from_millis(100));
    // Each PERSISTED arrives within ~1 s of the next fragment beginning to be sent.
    for k in 0..36 {
        let at = up
            .acks
            .iter()
            .find(|(_, a)| {
                a.event_type == AckEventType::Persisted
                    && a.fragment_timecode == Some(expected[k].timecode)
            })
            .unwrap()
            .0;
        let next_start = up.started
            + Duration::from_millis((expected[k + 1].timecode - expected[0].timecode) / 4);
        assert!(
            at < next_start + Duration::from_secs(1),
            "fragment {k} acked late"
        );
    }
    assert_stored(&ep, "media", &file, &expected);
}

/// The java file at real time (~14 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_file_at_real_time_is_acked_while_the_body_streams() {
    let (ep, up, file, expected) =
        stream_file(JAVA, Pacing::Timed { speed: 1.0 }, "RELATIVE").await;
    assert_acked_in_order(&up, &expected);
    let done = up.body_done.unwrap();
    assert!(done - up.started >= Duration::from_millis(13_900));
    let early = up
        .acks
        .iter()
        .filter(|(t, a)| a.event_type == AckEventType::Persisted && *t < done)
        .count();
    assert!(
        early >= 6,
        "only {early} PERSISTED ACKs before the body ended"
    );
    assert_stored(&ep, "media", &file, &expected);
}

fn error_acks(up: &Upload) -> Vec<&Ack> {
    up.of_type(AckEventType::Error)
}

async fn upload(ep: &LocalEndpoint, stream: &str, body: &[u8]) -> Upload {
    let req = PutMediaRequest::new(ep, stream);
    put_media(
        &req,
        schedule(body, Pacing::FullSpeed { max_chunk: 8192 }),
        Duration::from_secs(15),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_copy_gets_invalid_mkv_data() {
    let mut file = read_media(CPP);
    let (_, expected) = expected_fragments(&file);
    // Destroy the element ID where fragment 10 begins: fragment 9 can never be completed.
    file[expected[10].start] = 0x00;
    let ep = setup("media", Config::default());
    let up = upload(&ep, "media", &file).await;
    assert_eq!(up.status, 200);
    let persisted = up.of_type(AckEventType::Persisted);
    assert_eq!(persisted.len(), 9);
    let errors = error_acks(&up);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].error_id, Some(4006));
    assert_eq!(errors[0].error_code.as_deref(), Some("INVALID_MKV_DATA"));
    assert_eq!(errors[0].fragment_timecode, Some(expected[9].timecode));
    assert_eq!(up.acks.last().unwrap().1.event_type, AckEventType::Error);
    assert_eq!(
        up.response_end,
        Ok(()),
        "the service ends the response after an ERROR"
    );
    let frags = ep.fragments("media");
    assert_eq!(frags[9].state, FragmentState::Failed);
    assert_eq!(frags[9].error_id, Some(4006));
    assert_eq!(
        ep.sessions(Some("media"))[0].end,
        Some(SessionEnd::ErrorAck { error_id: 4006 })
    );

    // Not MKV at all: ERROR without a fragment, as `{"EventType":"ERROR","ErrorCode":"INVALID_MKV_DATA","ErrorId":4006}`.
    let up = upload(&ep, "media", b"this is not matroska at all").await;
    let e = error_acks(&up);
    assert_eq!(e.len(), 1);
    assert_eq!((e[0].error_id, e[0].fragment_timecode), (Some(4006), None));
}

fn assert_single_error(up: &Upload, id: u32, code: &str, timecode: Option<u64>) {
    let e = error_acks(up);
    assert_eq!(e.len(), 1, "ACKs: {:?}", up.acks);
    assert_eq!(e[0].error_id, Some(id));
    assert_eq!(e[0].error_code.as_deref(), Some(code));
    assert_eq!(e[0].fragment_timecode, timecode);
    assert_eq!(up.acks.last().unwrap().1.event_type, AckEventType::Error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_violations_get_the_services_error_acks() {
    let ep = setup(
        "s",
        Config {
            limits: kvs_local_endpoint::Limits {
                max_fragment_bytes: 100_000,
                ..Default::default()
            },
            ..Default::default()
        },
    );
    let frames =
        |n: usize| -> Vec<(u8, i16, usize)> { (0..n).map(|i| (1, (i * 40) as i16, 100)).collect() };

    // Fragment timecode lower than the previous one.
    let body = [
        mkv_header(1),
        mkv_cluster(10_000, &frames(5)),
        mkv_cluster(11_000, &frames(5)),
        mkv_cluster(10_500, &frames(5)),
    ]
    .concat();
    let up = upload(&ep, "s", &body).await;
    assert_eq!(up.of_type(AckEventType::Persisted).len(), 2);
    assert_single_error(
        &up,
        4004,
        "FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS",
        Some(10_500),
    );

    // First frame not after the previous fragment's last frame.
    let body = [
        mkv_header(1),
        mkv_cluster(20_000, &frames(25)),
        mkv_cluster(20_500, &frames(5)),
    ]
    .concat();
    let up = upload(&ep, "s", &body).await;
    assert_single_error(
        &up,
        4004,
        "FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS",
        Some(20_500),
    );

    // More than 3 tracks.
    let body = [
        mkv_header(4),
        mkv_cluster(30_000, &[(1, 0, 10), (2, 0, 10), (3, 0, 10), (4, 0, 10)]),
    ]
    .concat();
    let up = upload(&ep, "s", &body).await;
    assert_single_error(&up, 4012, "MORE_THAN_ALLOWED_TRACKS_FOUND", None);

    // A block of a track Tracks does not declare.
    let body = [
        mkv_header(1),
        mkv_cluster(40_000, &[(1, 0, 10), (2, 40, 10)]),
    ]
    .concat();
    let up = upload(&ep, "s", &body).await;
    assert_single_error(&up, 4010, "TRACK_NUMBER_MISMATCH", Some(40_000));

    // A declared track without frames in a fragment.
    let body = [
        mkv_header(2),
        mkv_cluster(50_000, &[(1, 0, 10), (1, 40, 10)]),
        mkv_cluster(51_000, &[(1, 0, 10)]),
    ]
    .concat();
    let up = upload(&ep, "s", &body).await;
    assert_single_error(&up, 4011, "FRAMES_MISSING_FOR_TRACK", Some(50_000));

    // Over the size limit (100 kB here; the service's is 50 MB).
    let body = [
        mkv_header(1),
        mkv_cluster(
            60_000,
            &(0..30).map(|i| (1, i * 40, 5000)).collect::<Vec<_>>(),
        ),
    ]
    .concat();
    let up = upload(&ep, "s", &body).await;
    assert_single_error(&up, 4001, "MAX_FRAGMENT_SIZE_REACHED", Some(60_000));

    // Over the duration limit (10 s).
    let body = [
        mkv_header(1),
        mkv_cluster(70_000, &[(1, 0, 10), (1, 5000, 10), (1, 10_040, 10)]),
    ]
    .concat();
    let up = upload(&ep, "s", &body).await;
    assert_single_error(&up, 4002, "MAX_FRAGMENT_DURATION_REACHED", Some(70_000));

    // A second segment in one body: the fragment before it is complete, the new header is not
    // allowed.
    let body = [
        mkv_header(1),
        mkv_cluster(80_000, &frames(3)),
        mkv_header(1),
        mkv_cluster(81_000, &frames(3)),
    ]
    .concat();
    let up = upload(&ep, "s", &body).await;
    assert_eq!(up.of_type(AckEventType::Persisted).len(), 1);
    assert_single_error(&up, 4006, "INVALID_MKV_DATA", None);

    // The body ends inside the last fragment: earlier ones persist, the cut one is an error.
    let full = [
        mkv_header(1),
        mkv_cluster(90_000, &frames(5)),
        mkv_cluster(91_000, &frames(5)),
    ]
    .concat();
    let up = upload(&ep, "s", &full[..full.len() - 50]).await;
    assert_eq!(up.of_type(AckEventType::Persisted).len(), 1);
    assert_single_error(&up, 4006, "INVALID_MKV_DATA", Some(91_000));
    // … and a complete last fragment is persisted when the body ends.
    let full = [
        mkv_header(1),
        mkv_cluster(95_000, &frames(5)),
        mkv_cluster(96_000, &frames(5)),
    ]
    .concat();
    let up = upload(&ep, "s", &full).await;
    assert_eq!(up.of_type(AckEventType::Persisted).len(), 2);
    assert!(error_acks(&up).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maximum_connection_duration_ends_the_session_with_4003() {
    let ep = setup(
        "s",
        Config {
            max_connection_duration: Duration::from_millis(1500),
            ..Default::default()
        },
    );
    let body = mkv_stream(1_000_000, 6, 25, 200);
    let req = PutMediaRequest::new(&ep, "s");
    let up = put_media(
        &req,
        schedule(&body, Pacing::Timed { speed: 2.0 }),
        Duration::from_secs(10),
    )
    .await;
    let e = error_acks(&up);
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].error_id, Some(4003));
    assert_eq!(
        e[0].error_code.as_deref(),
        Some("MAX_CONNECTION_DURATION_REACHED")
    );
    let at = up
        .acks
        .iter()
        .find(|(_, a)| a.event_type == AckEventType::Error)
        .unwrap()
        .0;
    assert!(at - up.started >= Duration::from_millis(1450));
    assert!(up.of_type(AckEventType::Persisted).len() >= 2);
    assert_eq!(up.response_end, Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alives_then_the_idle_timeout_ends_the_response() {
    let ep = setup(
        "s",
        Config {
            idle_ack_interval: Duration::from_millis(200),
            idle_timeout: Duration::from_millis(1200),
            ..Default::default()
        },
    );
    let body = mkv_stream(1_000_000, 2, 5, 100);
    let mut pieces = schedule(&body, Pacing::FullSpeed { max_chunk: 100_000 });
    // Keep the body open: a last piece far in the future.
    pieces.push((Duration::from_secs(20), bytes::Bytes::from_static(b"")));
    let req = PutMediaRequest::new(&ep, "s");
    let t0 = Instant::now();
    let up = put_media(&req, pieces, Duration::from_secs(10)).await;
    let idles = up.of_type(AckEventType::Idle);
    assert!(idles.len() >= 3, "IDLE ACKs: {}", idles.len());
    assert!(idles.iter().all(|a| a.fragment_timecode.is_none()));
    assert_eq!(up.response_end, Ok(()));
    assert!(t0.elapsed() >= Duration::from_millis(1200) && t0.elapsed() < Duration::from_secs(5));
    assert_eq!(
        up.of_type(AckEventType::Persisted).len(),
        1,
        "the last fragment never completed"
    );
    assert_eq!(ep.sessions(Some("s"))[0].end, Some(SessionEnd::IdleTimeout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_zero_gets_no_persisted_and_ack_header_zero_gets_no_fragment_acks() {
    let ep = start(Config::default());
    ep.create_stream("noretention", 0).unwrap();
    ep.create_stream("quiet", 2).unwrap();
    let body = mkv_stream(5_000, 3, 5, 100);
    let up = upload(&ep, "noretention", &body).await;
    assert_eq!(up.of_type(AckEventType::Received).len(), 3);
    assert!(up.of_type(AckEventType::Persisted).is_empty());
    assert!(ep.stored_mkv_path("noretention").is_none());
    assert!(
        ep.fragments("noretention")
            .iter()
            .all(|f| f.state == FragmentState::Received)
    );

    let mut req = PutMediaRequest::new(&ep, "quiet");
    req.acks_required = false;
    let up = put_media(
        &req,
        schedule(&body, Pacing::FullSpeed { max_chunk: 1000 }),
        Duration::from_secs(5),
    )
    .await;
    assert!(up.acks.is_empty());
    assert_eq!(
        ep.fragments("quiet")
            .iter()
            .filter(|f| f.state == FragmentState::Persisted)
            .count(),
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn putmedia_request_errors() {
    let ep = start(Config {
        max_putmedia_connections_per_stream: 1,
        stream_activation_delay: Duration::from_millis(300),
        ..Default::default()
    });
    let body = mkv_stream(5_000, 1, 2, 10);
    let up = upload(&ep, "missing", &body).await;
    assert_eq!(
        (
            up.status,
            up.error_type
                .as_deref()
                .map(|t| t.split(':').next().unwrap())
        ),
        (404, Some("ResourceNotFoundException"))
    );
    assert_eq!(
        up.error_body.unwrap()["__type"],
        "ResourceNotFoundException"
    );

    // CREATING is not ACTIVE yet.
    ep.create_stream("s", 2).unwrap();
    assert_eq!(ep.stream("s").unwrap().status, StreamStatus::Creating);
    assert_eq!(upload(&ep, "s", &body).await.status, 404);
    assert!(
        ep.wait_until(Duration::from_secs(2), |ep| ep.stream("s").unwrap().status
            == StreamStatus::Active)
    );

    let mut req = PutMediaRequest::new(&ep, "s");
    req.timecode_type = "SOMETIMES";
    let up = put_media(
        &req,
        schedule(&body, Pacing::FullSpeed { max_chunk: 100 }),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(up.status, 400);
    assert_eq!(up.error_body.unwrap()["__type"], "InvalidArgumentException");

    // One connection per stream here: a second concurrent one is throttled.
    let req = PutMediaRequest::new(&ep, "s");
    let mut pieces = schedule(&body, Pacing::FullSpeed { max_chunk: 100_000 });
    pieces.push((Duration::from_millis(1500), bytes::Bytes::new()));
    let first = tokio::spawn({
        let req = req.clone();
        async move { put_media(&req, pieces, Duration::from_secs(5)).await }
    });
    assert!(ep.wait_until(Duration::from_secs(2), |ep| {
        ep.sessions(Some("s")).iter().any(|s| s.end.is_none())
    }));
    let second = upload(&ep, "s", &body).await;
    assert_eq!(second.status, 400);
    assert_eq!(
        second.error_body.unwrap()["__type"],
        "ConnectionLimitExceededException"
    );
    assert_eq!(first.await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_stream_mid_session_gets_4008() {
    let ep = setup("s", Config::default());
    let body = mkv_stream(1_000_000, 8, 5, 100);
    let req = PutMediaRequest::new(&ep, "s");
    let task = tokio::spawn(async move {
        put_media(
            &req,
            schedule(&body, Pacing::Timed { speed: 4.0 }),
            Duration::from_secs(10),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(600)).await;
    let arn = ep.stream("s").unwrap().arn;
    let c = sdk_client(ep.url(), &ep.credentials(), 1);
    c.delete_stream().stream_arn(arn).send().await.unwrap();
    let up = task.await.unwrap();
    let e = error_acks(&up);
    assert_eq!(e.len(), 1);
    assert_eq!(
        (e[0].error_id, e[0].error_code.as_deref()),
        (Some(4008), Some("STREAM_NOT_ACTIVE"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_the_generated_certificate() {
    let ep = setup(
        "s",
        Config {
            tls: true,
            ..Default::default()
        },
    );
    assert!(ep.url().starts_with("https://127.0.0.1:"));
    let ca = ep.ca_certificate_path().unwrap();
    assert_eq!(ca.extension().unwrap(), "pem");
    assert!(
        ep.env()
            .iter()
            .any(|(k, v)| *k == "KVSSINK_CA_CERT_PATH" && v == &ca.display().to_string())
    );
    let body = mkv_stream(7_000, 3, 5, 100);
    let up = upload(&ep, "s", &body).await;
    assert_eq!(up.status, 200);
    assert_eq!(up.of_type(AckEventType::Persisted).len(), 3);
    // A client that does not trust the certificate cannot connect.
    let mut req = PutMediaRequest::new(&ep, "s");
    req.ca_pem = None;
    let up = put_media(
        &req,
        schedule(&body, Pacing::FullSpeed { max_chunk: 1000 }),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(up.status, 0);
    assert!(
        up.response_end
            .unwrap_err()
            .to_lowercase()
            .contains("certificate")
    );
}
