//! Each PutMedia fault and what a plain chunked client sees because of it. (Control-plane faults
//! and expired credentials are in `control_plane.rs`.)

mod common;

use std::time::Duration;

use common::*;
use kvs_local_endpoint::{
    AckDrop, AckEventType, Config, Disconnect, FragmentState, HttpFault, LocalEndpoint, SessionEnd,
    Trigger,
};

const CPP: &str = "kvs-cpp-test-stream-1_0.mkv";

fn endpoint() -> LocalEndpoint {
    let ep = start(Config::default());
    ep.create_stream("s", 2).unwrap();
    ep
}

async fn upload_cpp(ep: &LocalEndpoint) -> (Upload, Vec<ExpectedFragment>) {
    let file = read_media(CPP);
    let (_, expected) = expected_fragments(&file);
    let req = PutMediaRequest::new(ep, "s");
    let up = put_media(
        &req,
        schedule(
            &file,
            Pacing::FullSpeed {
                max_chunk: 32 * 1024,
            },
        ),
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(up.status, 200);
    (up, expected)
}

fn persisted(up: &Upload) -> Vec<u64> {
    up.of_type(AckEventType::Persisted)
        .iter()
        .map(|a| a.fragment_timecode.unwrap())
        .collect()
}

fn timecodes(e: &[ExpectedFragment]) -> Vec<u64> {
    e.iter().map(|f| f.timecode).collect()
}

fn session_end(ep: &LocalEndpoint) -> Option<SessionEnd> {
    ep.sessions(Some("s"))[0].end.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_after_bytes_cuts_the_response_mid_stream() {
    let ep = endpoint();
    let file = read_media(CPP);
    let (_, expected) = expected_fragments(&file);
    // In the middle of fragment 12: fragments 0..=10 are complete (fragment 11 closes when
    // fragment 12's first element arrives).
    let n = (expected[12].start + 1000) as u64;
    ep.faults().close_after_bytes(n);
    let (up, _) = upload_cpp(&ep).await;
    assert_eq!(persisted(&up), timecodes(&expected[..12]));
    let err = up.response_end.as_ref().expect_err("the response is cut");
    assert!(
        !err.contains("ConnectionReset"),
        "a FIN, not a reset: {err}"
    );
    assert_eq!(
        session_end(&ep),
        Some(SessionEnd::Disconnected(Disconnect::Close))
    );
    assert_eq!(ep.sessions(Some("s"))[0].bytes_received, n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_after_bytes_resets_the_connection() {
    let ep = endpoint();
    ep.faults().reset_after_bytes(200_000);
    let (up, expected) = upload_cpp(&ep).await;
    let err = up
        .response_end
        .as_ref()
        .expect_err("the connection is reset");
    assert!(
        err.contains("ConnectionReset") || err.contains("reset"),
        "{err}"
    );
    assert_eq!(persisted(&up), timecodes(&expected[..1]));
    assert_eq!(
        session_end(&ep),
        Some(SessionEnd::Disconnected(Disconnect::Reset))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_at_fragment_k_before_its_buffering_ack() {
    for (how, k) in [(Disconnect::Close, 5u64), (Disconnect::Reset, 3)] {
        let ep = endpoint();
        ep.faults().disconnect(Trigger::Fragment(k), how);
        let (up, expected) = upload_cpp(&ep).await;
        assert_eq!(
            persisted(&up),
            timecodes(&expected[..k as usize]),
            "{how:?}"
        );
        let buffering = up.of_type(AckEventType::Buffering);
        assert_eq!(buffering.len(), k as usize, "no BUFFERING for fragment {k}");
        assert!(up.response_end.is_err());
        assert_eq!(session_end(&ep), Some(SessionEnd::Disconnected(how)));
        let frags = ep.fragments("s");
        assert_eq!(frags[k as usize].state, FragmentState::Failed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stall_stops_reading_and_acking_for_a_while() {
    let ep = endpoint();
    let stall = Duration::from_millis(1500);
    ep.faults().stall(Trigger::Bytes(1_000_000), stall);
    let (up, expected) = upload_cpp(&ep).await;
    assert_eq!(persisted(&up), timecodes(&expected), "nothing is lost");
    assert_eq!(up.response_end, Ok(()));
    let gap = up.acks.windows(2).map(|w| w[1].0 - w[0].0).max().unwrap();
    assert!(
        gap >= stall - Duration::from_millis(50),
        "largest ACK gap {gap:?}"
    );
    assert!(up.acks.last().unwrap().0 - up.started >= stall);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_acks_arrive_late_but_complete() {
    let ep = endpoint();
    let delay = Duration::from_millis(600);
    ep.faults().delay_acks(delay);
    let (up, expected) = upload_cpp(&ep).await;
    let first = up.acks.first().unwrap().0 - up.started;
    assert!(first >= delay, "first ACK after {first:?}");
    assert_eq!(persisted(&up), timecodes(&expected));
    // The body was sent long before its last ACK came back.
    let last = up.acks.last().unwrap().0;
    assert!(last - up.body_done.unwrap() >= delay - Duration::from_millis(100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_acks_never_reach_the_client() {
    let ep = endpoint();
    ep.faults().drop_acks(AckDrop {
        event_types: vec![AckEventType::Persisted],
        ..Default::default()
    });
    ep.faults().drop_acks(AckDrop {
        event_types: vec![],
        fragment: Some(7),
        count: None,
    });
    let (up, expected) = upload_cpp(&ep).await;
    assert!(up.of_type(AckEventType::Persisted).is_empty());
    let received = up.of_type(AckEventType::Received);
    assert_eq!(received.len(), 36);
    assert!(
        received
            .iter()
            .all(|a| a.fragment_timecode != Some(expected[7].timecode))
    );
    // The server did persist everything and knows what it dropped.
    let frags = ep.fragments("s");
    assert!(frags.iter().all(|f| f.state == FragmentState::Persisted));
    assert!(frags[7].acks.iter().all(|a| !a.sent));
    assert!(
        frags[0]
            .acks
            .iter()
            .any(|a| a.ack.event_type == AckEventType::Persisted && !a.sent)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_ack_for_fragment_k_with_a_chosen_error_id() {
    let ep = endpoint();
    ep.faults().error_ack(4, 5000);
    let (up, expected) = upload_cpp(&ep).await;
    assert_eq!(persisted(&up), timecodes(&expected[..4]));
    let errors = up.of_type(AckEventType::Error);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].error_id, Some(5000));
    assert_eq!(errors[0].error_code.as_deref(), Some("INTERNAL_ERROR"));
    assert_eq!(errors[0].fragment_timecode, Some(expected[4].timecode));
    assert_eq!(up.acks.last().unwrap().1.event_type, AckEventType::Error);
    assert_eq!(up.response_end, Ok(()));
    assert_eq!(
        session_end(&ep),
        Some(SessionEnd::ErrorAck { error_id: 5000 })
    );

    // One-shot: the retry goes through.
    let (up, expected) = upload_cpp(&ep).await;
    assert_eq!(persisted(&up), timecodes(&expected));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn putmedia_can_be_refused_at_the_http_level() {
    let ep = endpoint();
    ep.faults().fail_requests(
        1,
        HttpFault::new(400, "ConnectionLimitExceededException", "too many")
            .for_operation("PutMedia"),
    );
    let body = mkv_stream(1000, 1, 2, 10);
    let req = PutMediaRequest::new(&ep, "s");
    let up = put_media(
        &req,
        schedule(&body, Pacing::FullSpeed { max_chunk: 100 }),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(up.status, 400, "{:?}", up.response_end);
    assert_eq!(
        up.error_body.unwrap()["__type"],
        "ConnectionLimitExceededException"
    );
    let up = put_media(
        &req,
        schedule(&body, Pacing::FullSpeed { max_chunk: 100 }),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(up.status, 200);
}
