//! The control plane through aws-sdk-kinesisvideo with an endpoint override: every operation,
//! typed errors, stream status transitions, control-plane faults and credential failures.

mod common;

use std::time::Duration;

use aws_sdk_kinesisvideo::error::ProvideErrorMetadata;
use aws_sdk_kinesisvideo::operation::create_stream::CreateStreamError;
use aws_sdk_kinesisvideo::operation::delete_stream::DeleteStreamError;
use aws_sdk_kinesisvideo::operation::describe_stream::DescribeStreamError;
use aws_sdk_kinesisvideo::operation::get_data_endpoint::GetDataEndpointError;
use aws_sdk_kinesisvideo::operation::tag_stream::TagStreamError;
use aws_sdk_kinesisvideo::types::{
    ApiName, ComparisonOperator, Status as StreamStatus, StreamNameCondition,
};
use common::*;
use kvs_local_endpoint::{Config, Credentials, HttpFault};

fn status<E>(
    e: &aws_sdk_kinesisvideo::error::SdkError<E, aws_smithy_runtime_api::http::Response>,
) -> u16 {
    e.raw_response().map(|r| r.status().as_u16()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_control_plane_call_and_its_typed_errors() {
    let ep = start(Config::default());
    let c = sdk_client(ep.url(), &ep.credentials(), 1);

    // CreateStream, as the reference element sends it.
    let arn = c
        .create_stream()
        .device_name("Kinesis_Video_Device")
        .stream_name("cam-1")
        .media_type("video/h264,audio/aac")
        .data_retention_in_hours(2)
        .tags("owner", "bench")
        .send()
        .await
        .unwrap()
        .stream_arn
        .unwrap();
    assert!(arn.starts_with("arn:aws:kinesisvideo:us-west-2:123456789012:stream/cam-1/"));
    let e = c
        .create_stream()
        .stream_name("cam-1")
        .send()
        .await
        .unwrap_err();
    assert_eq!(status(&e), 400);
    assert!(matches!(
        e.into_service_error(),
        CreateStreamError::ResourceInUseException(_)
    ));
    let e = c
        .create_stream()
        .stream_name("bad name!")
        .send()
        .await
        .unwrap_err();
    assert!(matches!(
        e.into_service_error(),
        CreateStreamError::InvalidArgumentException(_)
    ));

    // DescribeStream by name and by ARN.
    let info = c
        .describe_stream()
        .stream_name("cam-1")
        .send()
        .await
        .unwrap()
        .stream_info
        .unwrap();
    assert_eq!(info.stream_name(), Some("cam-1"));
    assert_eq!(info.stream_arn(), Some(arn.as_str()));
    assert_eq!(info.status(), Some(&StreamStatus::Active));
    assert_eq!(info.data_retention_in_hours(), Some(2));
    assert_eq!(info.media_type(), Some("video/h264,audio/aac"));
    assert_eq!(info.device_name(), Some("Kinesis_Video_Device"));
    assert_eq!(info.version().map(str::len), Some(20));
    assert_eq!(
        info.kms_key_id(),
        Some("arn:aws:kms:us-west-2:123456789012:alias/aws/kinesisvideo")
    );
    assert!(info.creation_time().is_some());
    let by_arn = c
        .describe_stream()
        .stream_arn(&arn)
        .send()
        .await
        .unwrap()
        .stream_info
        .unwrap();
    assert_eq!(by_arn.version(), info.version());
    let e = c
        .describe_stream()
        .stream_name("nope")
        .send()
        .await
        .unwrap_err();
    assert_eq!(status(&e), 404);
    assert_eq!(e.code(), Some("ResourceNotFoundException"));
    assert!(matches!(
        e.into_service_error(),
        DescribeStreamError::ResourceNotFoundException(_)
    ));
    let e = c.describe_stream().send().await.unwrap_err();
    assert!(matches!(
        e.into_service_error(),
        DescribeStreamError::InvalidArgumentException(_)
    ));

    // ListStreams with a name condition and pagination.
    c.create_stream().stream_name("cam-2").send().await.unwrap();
    c.create_stream().stream_name("door").send().await.unwrap();
    let all = c.list_streams().send().await.unwrap();
    assert_eq!(all.stream_info_list().len(), 3);
    let cams = c
        .list_streams()
        .stream_name_condition(
            StreamNameCondition::builder()
                .comparison_operator(ComparisonOperator::BeginsWith)
                .comparison_value("cam")
                .build(),
        )
        .max_results(1)
        .send()
        .await
        .unwrap();
    assert_eq!(cams.stream_info_list().len(), 1);
    let token = cams.next_token().expect("a second page").to_owned();
    let page2 = c
        .list_streams()
        .stream_name_condition(
            StreamNameCondition::builder()
                .comparison_operator(ComparisonOperator::BeginsWith)
                .comparison_value("cam")
                .build(),
        )
        .next_token(token)
        .send()
        .await
        .unwrap();
    assert_eq!(page2.stream_info_list()[0].stream_name(), Some("cam-2"));
    assert!(page2.next_token().is_none());

    // Tags.
    c.tag_stream()
        .stream_arn(&arn)
        .tags("env", "local")
        .send()
        .await
        .unwrap();
    let tags = c
        .list_tags_for_stream()
        .stream_name("cam-1")
        .send()
        .await
        .unwrap();
    let tags = tags.tags().unwrap();
    assert_eq!(tags.get("owner").map(String::as_str), Some("bench"));
    assert_eq!(tags.get("env").map(String::as_str), Some("local"));
    c.untag_stream()
        .stream_name("cam-1")
        .tag_key_list("owner")
        .send()
        .await
        .unwrap();
    let tags = c
        .list_tags_for_stream()
        .stream_arn(&arn)
        .send()
        .await
        .unwrap();
    assert_eq!(tags.tags().unwrap().len(), 1);
    let mut too_many = c.tag_stream().stream_name("cam-1");
    for i in 0..50 {
        too_many = too_many.tags(format!("k{i}"), "v");
    }
    let e = too_many.send().await.unwrap_err();
    assert!(matches!(
        e.into_service_error(),
        TagStreamError::TagsPerResourceExceededLimitException(_)
    ));
    let e = c
        .tag_stream()
        .stream_name("nope")
        .tags("a", "b")
        .send()
        .await
        .unwrap_err();
    assert!(matches!(
        e.into_service_error(),
        TagStreamError::ResourceNotFoundException(_)
    ));

    // GetDataEndpoint returns this server.
    let dp = c
        .get_data_endpoint()
        .stream_name("cam-1")
        .api_name(ApiName::PutMedia)
        .send()
        .await
        .unwrap();
    assert_eq!(dp.data_endpoint(), Some(ep.url()));
    let e = c
        .get_data_endpoint()
        .stream_name("nope")
        .api_name(ApiName::PutMedia)
        .send()
        .await
        .unwrap_err();
    assert!(matches!(
        e.into_service_error(),
        GetDataEndpointError::ResourceNotFoundException(_)
    ));

    // DeleteStream with a stale version, then for real.
    let e = c
        .delete_stream()
        .stream_arn(&arn)
        .current_version("stale")
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("VersionMismatchException"));
    assert!(matches!(
        e.into_service_error(),
        DeleteStreamError::VersionMismatchException(_)
    ));
    c.delete_stream()
        .stream_arn(&arn)
        .current_version(info.version().unwrap())
        .send()
        .await
        .unwrap();
    let e = c
        .describe_stream()
        .stream_name("cam-1")
        .send()
        .await
        .unwrap_err();
    assert!(matches!(
        e.into_service_error(),
        DescribeStreamError::ResourceNotFoundException(_)
    ));
    let e = c.delete_stream().stream_arn(&arn).send().await.unwrap_err();
    assert!(matches!(
        e.into_service_error(),
        DeleteStreamError::ResourceNotFoundException(_)
    ));

    // The request log saw all of it, with the stream names.
    let log = ep.requests();
    assert!(
        log.iter()
            .any(|r| r.operation == "TagStream" && r.stream.as_deref() == Some("cam-1"))
    );
    assert!(
        log.iter()
            .all(|r| r.access_key_id.as_deref() == Some(ep.credentials().access_key_id.as_str()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_go_through_creating_and_deleting() {
    let ep = start(Config {
        stream_activation_delay: Duration::from_millis(300),
        stream_deletion_delay: Duration::from_millis(300),
        ..Default::default()
    });
    let c = sdk_client(ep.url(), &ep.credentials(), 1);
    let arn = c
        .create_stream()
        .stream_name("s")
        .send()
        .await
        .unwrap()
        .stream_arn
        .unwrap();
    let st = |c: aws_sdk_kinesisvideo::Client| async move {
        c.describe_stream()
            .stream_name("s")
            .send()
            .await
            .map(|o| o.stream_info.unwrap().status.unwrap())
    };
    assert_eq!(st(c.clone()).await.unwrap(), StreamStatus::Creating);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(st(c.clone()).await.unwrap(), StreamStatus::Active);
    c.delete_stream().stream_arn(&arn).send().await.unwrap();
    assert_eq!(st(c.clone()).await.unwrap(), StreamStatus::Deleting);
    let e = c.delete_stream().stream_arn(&arn).send().await.unwrap_err();
    assert!(matches!(
        e.into_service_error(),
        DeleteStreamError::ResourceInUseException(_)
    ));
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(st(c.clone()).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_faults_reach_the_client() {
    let ep = start(Config::default());
    ep.create_stream("s", 2).unwrap();
    let faults = ep.faults();
    let one_try = sdk_client(ep.url(), &ep.credentials(), 1);
    let retrying = sdk_client(ep.url(), &ep.credentials(), 3);

    // 5xx: the SDK's standard retry gets through after two failures…
    faults.fail_requests(2, HttpFault::service_unavailable());
    retrying
        .describe_stream()
        .stream_name("s")
        .send()
        .await
        .unwrap();
    let statuses: Vec<u16> = ep
        .requests()
        .iter()
        .filter(|r| r.operation == "DescribeStream")
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [503, 503, 200]);
    // … and a client without retries sees the 500.
    faults.fail_requests(1, HttpFault::internal_error());
    let e = one_try
        .describe_stream()
        .stream_name("s")
        .send()
        .await
        .unwrap_err();
    assert_eq!(status(&e), 500);

    // Throttling is the service's ClientLimitExceededException.
    faults.fail_requests(1, HttpFault::throttling().for_operation("GetDataEndpoint"));
    one_try
        .describe_stream()
        .stream_name("s")
        .send()
        .await
        .unwrap();
    let e = one_try
        .get_data_endpoint()
        .stream_name("s")
        .api_name(ApiName::PutMedia)
        .send()
        .await
        .unwrap_err();
    assert!(matches!(
        e.into_service_error(),
        GetDataEndpointError::ClientLimitExceededException(_)
    ));

    // 404 for the next 2 calls, then the stream is there again.
    faults.fail_requests(2, HttpFault::not_found());
    for _ in 0..2 {
        let e = one_try
            .describe_stream()
            .stream_name("s")
            .send()
            .await
            .unwrap_err();
        assert!(matches!(
            e.into_service_error(),
            DescribeStreamError::ResourceNotFoundException(_)
        ));
    }
    one_try
        .describe_stream()
        .stream_name("s")
        .send()
        .await
        .unwrap();

    faults.fail_requests(1, HttpFault::not_authorized());
    let e = one_try
        .describe_stream()
        .stream_name("s")
        .send()
        .await
        .unwrap_err();
    assert_eq!(status(&e), 401);
    assert!(matches!(
        e.into_service_error(),
        DescribeStreamError::NotAuthorizedException(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_and_expired_credentials_are_refused() {
    let ep = start(Config {
        credentials: Credentials::new("AKIDTOKEN", "s3cret").with_session_token("token-1"),
        ..Default::default()
    });
    ep.create_stream("s", 2).unwrap();
    let good = sdk_client(ep.url(), &ep.credentials(), 1);
    good.describe_stream()
        .stream_name("s")
        .send()
        .await
        .unwrap();

    let wrong_secret = Credentials::new("AKIDTOKEN", "guess").with_session_token("token-1");
    let e = sdk_client(ep.url(), &wrong_secret, 1)
        .describe_stream()
        .stream_name("s")
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        (status(&e), e.code()),
        (403, Some("InvalidSignatureException"))
    );

    let no_token = Credentials::new("AKIDTOKEN", "s3cret");
    let e = sdk_client(ep.url(), &no_token, 1)
        .describe_stream()
        .stream_name("s")
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        (status(&e), e.code()),
        (403, Some("UnrecognizedClientException"))
    );

    ep.faults().expire_credentials();
    let e = good
        .describe_stream()
        .stream_name("s")
        .send()
        .await
        .unwrap_err();
    assert_eq!((status(&e), e.code()), (403, Some("ExpiredTokenException")));
    let body = mkv_stream(1000, 1, 2, 10);
    let up = put_media(
        &PutMediaRequest::new(&ep, "s"),
        schedule(&body, Pacing::FullSpeed { max_chunk: 100 }),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(up.status, 403);
    assert_eq!(up.error_body.unwrap()["__type"], "ExpiredTokenException");

    // Fresh credentials work again.
    let fresh = Credentials::new("AKIDFRESH", "new-secret");
    ep.add_credentials(fresh.clone());
    sdk_client(ep.url(), &fresh, 1)
        .describe_stream()
        .stream_name("s")
        .send()
        .await
        .unwrap();
}
