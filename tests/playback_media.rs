//! The playback APIs of the local endpoint through the real AWS SDK clients
//! (`aws-sdk-kinesisvideomedia`, `aws-sdk-kinesisvideoarchivedmedia`): what a live kvssink
//! upload persisted is read back frame for frame by GetMedia while it is being uploaded (NOW),
//! by GetMedia EARLIEST afterwards, and by ListFragments (paged) + GetMediaForFragmentList;
//! the start selectors; every playback call is signed and refused with a wrong secret like the
//! control plane. The returned Matroska is parsed here by a small incremental reader of our own
//! (independent of the endpoint's), element by element as it arrives.
//!
//! `getmedia_latency_benchmark` (ignored: a measurement, not a check) prints the p50/p99 of
//! "frame enters kvssink → its block is readable by a GetMedia consumer" over a 20 s upload:
//! `cargo nextest run --all-features --test playback_media --run-ignored ignored-only
//! --no-capture`.
mod common;
use common::endpoint as endpoint_common;
use common::pipeline;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_kinesisvideoarchivedmedia as archived;
use aws_sdk_kinesisvideomedia as media;
use aws_smithy_types::DateTime;
use endpoint_common::{PutMediaRequest, mkv_stream, put_media, raw_call, schedule, sdk_client};
use kvs_local_endpoint::{
    AckEventType, Config, Credentials, FragmentInfo, FragmentState, LocalEndpoint,
};
use pipeline::{Entries, RunOptions, record_entries, run};

const FRAGMENT_NUMBER: &str = "AWS_KINESISVIDEO_FRAGMENT_NUMBER";
const SERVER_TIMESTAMP: &str = "AWS_KINESISVIDEO_SERVER_TIMESTAMP";
const PRODUCER_TIMESTAMP: &str = "AWS_KINESISVIDEO_PRODUCER_TIMESTAMP";
const MILLIS_BEHIND_NOW: &str = "AWS_KINESISVIDEO_MILLIS_BEHIND_NOW";
const CONTINUATION_TOKEN: &str = "AWS_KINESISVIDEO_CONTINUATION_TOKEN";

// ---- SDK clients -------------------------------------------------------------------------

fn media_client(url: &str, creds: &Credentials) -> media::Client {
    let c = aws_credential_types::Credentials::new(
        &creds.access_key_id,
        &creds.secret_access_key,
        creds.session_token.clone(),
        None,
        "local-test",
    );
    let conf = media::Config::builder()
        .behavior_version(media::config::BehaviorVersion::latest())
        .region(media::config::Region::new("us-west-2"))
        .credentials_provider(c)
        .endpoint_url(url)
        .retry_config(media::config::retry::RetryConfig::standard().with_max_attempts(1))
        .build();
    media::Client::from_conf(conf)
}

fn archived_client(url: &str, creds: &Credentials) -> archived::Client {
    let c = aws_credential_types::Credentials::new(
        &creds.access_key_id,
        &creds.secret_access_key,
        creds.session_token.clone(),
        None,
        "local-test",
    );
    let conf = archived::Config::builder()
        .behavior_version(archived::config::BehaviorVersion::latest())
        .region(archived::config::Region::new("us-west-2"))
        .credentials_provider(c)
        .endpoint_url(url)
        .retry_config(archived::config::retry::RetryConfig::standard().with_max_attempts(1))
        .build();
    archived::Client::from_conf(conf)
}

/// The data endpoint GetDataEndpoint gives for `api`.
async fn data_endpoint(ep: &LocalEndpoint, stream: &str, api: &str) -> String {
    sdk_client(ep.url(), &ep.credentials(), 1)
        .get_data_endpoint()
        .stream_name(stream)
        .api_name(api.into())
        .send()
        .await
        .unwrap_or_else(|e| panic!("GetDataEndpoint {api}: {e:?}"))
        .data_endpoint
        .unwrap()
}

fn selector(
    kind: media::types::StartSelectorType,
    f: impl FnOnce(
        media::types::builders::StartSelectorBuilder,
    ) -> media::types::builders::StartSelectorBuilder,
) -> media::types::StartSelector {
    f(media::types::StartSelector::builder().start_selector_type(kind))
        .build()
        .unwrap()
}

// ---- An incremental Matroska reader of the chunks -----------------------------------------

/// A frame of a chunk and when the reader had all of it.
#[derive(Debug, Clone)]
struct Frame {
    track: u64,
    /// Absolute timecode (ms: the producer's TimecodeScale is 1 ms).
    timecode: i64,
    at: SystemTime,
}

/// One fragment's chunk: its tags (before and after the Cluster) and frames.
#[derive(Debug, Default, Clone)]
struct Chunk {
    tags: Vec<(String, String)>,
    cluster_timecode: Option<u64>,
    frames: Vec<Frame>,
}

impl Chunk {
    fn tag(&self, name: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn number(&self) -> &str {
        self.tag(FRAGMENT_NUMBER)
            .expect("every chunk has its fragment number")
    }
}

/// Reads chunks from bytes as they come: master elements (also of unknown size) are entered,
/// the others read whole.
#[derive(Debug, Default)]
struct ChunkReader {
    buf: Vec<u8>,
    chunks: Vec<Chunk>,
    tag_name: Option<String>,
}

fn vint(b: &[u8], keep_marker: bool) -> Option<(u64, usize, bool)> {
    let first = *b.first()?;
    let len = first.leading_zeros() as usize + 1;
    if len > 8 || b.len() < len {
        return None;
    }
    let mask = if keep_marker || len == 8 {
        if keep_marker { 0xFF } else { 0 }
    } else {
        0xFFu8 >> len
    };
    let mut v = (first & mask) as u64;
    let mut ones = first & mask == mask;
    for &x in &b[1..len] {
        v = v << 8 | x as u64;
        ones &= x == 0xFF;
    }
    Some((v, len, ones && !keep_marker))
}

impl ChunkReader {
    fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        let now = SystemTime::now();
        let mut pos = 0;
        loop {
            let b = &self.buf[pos..];
            let Some((id, id_len, _)) = vint(b, true) else {
                break;
            };
            let Some((size, size_len, unknown)) = vint(&b[id_len..], false) else {
                break;
            };
            let hl = id_len + size_len;
            // Segment, Cluster, Tags, Tag, SimpleTag, BlockGroup: entered.
            if matches!(
                id,
                0x1853_8067 | 0x1F43_B675 | 0x1254_C367 | 0x7373 | 0x67C8 | 0xA0
            ) {
                pos += hl;
                continue;
            }
            assert!(!unknown, "element {id:#x} of unknown size");
            let total = hl + size as usize;
            if b.len() < total {
                break;
            }
            let body = &b[hl..total];
            match id {
                0x1A45_DFA3 => self.chunks.push(Chunk::default()),
                0x45A3 => self.tag_name = Some(String::from_utf8_lossy(body).into_owned()),
                0x4487 => {
                    let name = self.tag_name.take().expect("TagName before TagString");
                    let value = String::from_utf8_lossy(body).into_owned();
                    self.current().tags.push((name, value));
                }
                0xE7 => {
                    let tc = body.iter().fold(0u64, |a, &x| a << 8 | x as u64);
                    self.current().cluster_timecode = Some(tc);
                }
                0xA3 | 0xA1 => {
                    let (track, n, _) = vint(body, false).unwrap();
                    let rel = i16::from_be_bytes([body[n], body[n + 1]]);
                    let c = self.current();
                    let tc = c.cluster_timecode.expect("Timecode before the blocks") as i64;
                    c.frames.push(Frame {
                        track,
                        timecode: tc + rel as i64,
                        at: now,
                    });
                }
                _ => {}
            }
            pos += total;
        }
        self.buf.drain(..pos);
    }

    fn current(&mut self) -> &mut Chunk {
        self.chunks.last_mut().expect("an EBML header first")
    }
}

/// Reads a whole (finite) playback body.
async fn read_all(mut payload: aws_smithy_types::byte_stream::ByteStream) -> Vec<Chunk> {
    let mut r = ChunkReader::default();
    while let Some(b) = payload.next().await {
        r.push(&b.unwrap());
    }
    assert!(r.buf.is_empty(), "the body ends inside an element");
    r.chunks
}

/// Reads a GetMedia body (which does not end) into `out` until the task is aborted.
fn tail(
    mut payload: aws_smithy_types::byte_stream::ByteStream,
    out: Arc<Mutex<ChunkReader>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(Ok(b)) = payload.next().await {
            out.lock().unwrap().push(&b);
        }
    })
}

/// Waits until `reader` has the closing tags of fragment `last`, or 20 s.
async fn wait_for_end(reader: &Arc<Mutex<ChunkReader>>, last: &str) -> Vec<Chunk> {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        {
            let r = reader.lock().unwrap();
            if r.chunks
                .iter()
                .any(|c| c.tag(CONTINUATION_TOKEN) == Some(last))
                || Instant::now() > end
            {
                return r.chunks.clone();
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- Checks ------------------------------------------------------------------------------

fn persisted(ep: &LocalEndpoint, stream: &str) -> Vec<FragmentInfo> {
    let mut f: Vec<_> = ep
        .fragments(stream)
        .into_iter()
        .filter(|f| f.state == FragmentState::Persisted)
        .collect();
    f.sort_by_key(|f| f.index);
    f
}

/// The chunks are the persisted fragments, in order, each with its service tags.
fn check_chunks(what: &str, chunks: &[Chunk], frags: &[FragmentInfo], get_media: bool) {
    let numbers: Vec<&str> = chunks.iter().map(Chunk::number).collect();
    let expected: Vec<&str> = frags.iter().map(|f| f.fragment_number.as_str()).collect();
    assert_eq!(numbers, expected, "{what}: fragments");
    for (c, f) in chunks.iter().zip(frags) {
        let server: f64 = c.tag(SERVER_TIMESTAMP).unwrap().parse().unwrap();
        let server_ms = f
            .server_timestamp
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis() as f64;
        assert!(
            (server * 1000.0 - server_ms).abs() < 1.5,
            "{what}: server timestamp"
        );
        let producer: f64 = c.tag(PRODUCER_TIMESTAMP).unwrap().parse().unwrap();
        assert_eq!(
            (producer * 1000.0).round() as u64,
            f.producer_timestamp_ms.unwrap(),
            "{what}: producer timestamp"
        );
        assert_eq!(
            c.cluster_timecode,
            Some(f.timecode),
            "{what}: Cluster Timecode"
        );
        let per_track = c.frames.iter().fold(BTreeMap::new(), |mut m, fr| {
            *m.entry(fr.track).or_insert(0u64) += 1;
            m
        });
        assert_eq!(
            per_track, f.frames_per_track,
            "{what}: frames of {}",
            f.fragment_number
        );
        if get_media {
            assert_eq!(c.tag(CONTINUATION_TOKEN), Some(c.number()), "{what}: token");
            let behind: u64 = c.tag(MILLIS_BEHIND_NOW).unwrap().parse().unwrap();
            assert!(behind < 3_600_000, "{what}: millis behind now {behind}");
        }
    }
}

/// `(track, timecode)` of every frame, in order.
fn frames(chunks: &[Chunk]) -> Vec<(u64, i64)> {
    chunks
        .iter()
        .flat_map(|c| c.frames.iter().map(|f| (f.track, f.timecode)))
        .collect()
}

/// Every buffer that entered the sink is a frame of `chunks`, once, at its timestamp: the
/// timecodes minus the first video frame's equal the running times minus the first video
/// buffer's (±1 ms of rounding).
fn check_against_sink(chunks: &[Chunk], entries: &Entries) {
    let entries = entries.lock().unwrap();
    let got = frames(chunks);
    let first_video_tc = got.iter().find(|(t, _)| *t == 1).unwrap().1;
    let first_video_pts = entries["video_0"][0].0 as i64;
    for (pad, track) in [("video_0", 1u64), ("audio_0", 2)] {
        let Some(sent) = entries.get(pad) else {
            continue;
        };
        let mut tcs: Vec<i64> = got
            .iter()
            .filter(|(t, _)| *t == track)
            .map(|(_, tc)| tc - first_video_tc)
            .collect();
        tcs.sort();
        assert_eq!(
            tcs.len(),
            sent.len(),
            "{pad}: frames read back vs. entered the sink"
        );
        let mut pts: Vec<i64> = sent
            .iter()
            .map(|(p, _)| *p as i64 - first_video_pts)
            .collect();
        pts.sort();
        for (tc, p) in tcs.iter().zip(&pts) {
            assert!(
                (tc - p).abs() <= 1,
                "{pad}: frame at {tc} ms, buffer at {p} ms"
            );
        }
    }
}

fn upload_line(name: &str, seconds: u32, audio: bool) -> String {
    let mut line = format!(
        "videotestsrc is-live=true num-buffers={} ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 bframes=0 ! h264parse \
         ! kvssink name=sink stream-name={name}",
        seconds * 30
    );
    if audio {
        line.push_str(&format!(
            " audiotestsrc is-live=true num-buffers={} samplesperbuffer=1024 ! avenc_aac ! aacparse ! sink.",
            seconds * 44_100 / 1024
        ));
    }
    line
}

// ---- Tests -------------------------------------------------------------------------------

/// A live upload read back completely four ways: GetMedia NOW started before the upload (the
/// live tail), GetMedia EARLIEST after it, ListFragments in pages of 3 + GetMediaForFragmentList.
#[test]
fn a_live_upload_is_read_back_frame_for_frame() {
    let ep = LocalEndpoint::start(Config::default()).unwrap();
    let name = "playback-live";
    ep.create_stream(name, 2).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let creds = ep.credentials();

    // The live reader, before anything is uploaded.
    let url = rt.block_on(data_endpoint(&ep, name, "GET_MEDIA"));
    let out = rt
        .block_on(
            media_client(&url, &creds)
                .get_media()
                .stream_name(name)
                .start_selector(selector(media::types::StartSelectorType::Now, |s| s))
                .send(),
        )
        .unwrap();
    assert_eq!(out.content_type(), Some("video/webm"));
    let live_reader = Arc::new(Mutex::new(ChunkReader::default()));
    let live = {
        let _rt = rt.enter();
        tail(out.payload, live_reader.clone())
    };

    let entries: Entries = Default::default();
    let result = run(
        &ep,
        &upload_line(name, 6, true),
        Duration::from_secs(90),
        RunOptions {
            on_created: Some(Box::new(|p| record_entries(p, &entries))),
            ..Default::default()
        },
    );
    assert!(result.eos && result.errors.is_empty(), "{result:?}");
    assert!(ep.wait_for_persisted(name, result.persisted(), Duration::from_secs(10)));
    let frags = persisted(&ep, name);
    assert!(frags.len() >= 6, "{} fragments", frags.len());
    assert_eq!(
        frags.len(),
        ep.fragments(name).len(),
        "every fragment persisted"
    );
    let last = frags.last().unwrap().fragment_number.clone();

    rt.block_on(async {
        let chunks = wait_for_end(&live_reader, &last).await;
        live.abort();
        check_chunks("GetMedia NOW (live)", &chunks, &frags, true);
        check_against_sink(&chunks, &entries);
        // The live tail hands out the frames of a fragment while it is being received: each
        // fragment's first frame reached the reader before the fragment was complete.
        for (c, f) in chunks.iter().zip(&frags) {
            let received = f
                .acks
                .iter()
                .find(|a| a.ack.event_type == AckEventType::Received)
                .unwrap()
                .at;
            assert!(
                c.frames[0].at < received,
                "fragment {}: first frame read after RECEIVED",
                f.fragment_number
            );
        }
        let live_frames = frames(&chunks);

        // EARLIEST, after the upload.
        let out = media_client(&url, &creds)
            .get_media()
            .stream_name(name)
            .start_selector(selector(media::types::StartSelectorType::Earliest, |s| s))
            .send()
            .await
            .unwrap();
        let reader = Arc::new(Mutex::new(ChunkReader::default()));
        let task = tail(out.payload, reader.clone());
        let chunks = wait_for_end(&reader, &last).await;
        task.abort();
        check_chunks("GetMedia EARLIEST", &chunks, &frags, true);
        assert_eq!(frames(&chunks), live_frames);

        // ListFragments, 3 at a time, then GetMediaForFragmentList.
        let url = data_endpoint(&ep, name, "LIST_FRAGMENTS").await;
        assert_eq!(
            url,
            data_endpoint(&ep, name, "GET_MEDIA_FOR_FRAGMENT_LIST").await
        );
        let client = archived_client(&url, &creds);
        let range = archived::types::FragmentSelector::builder()
            .fragment_selector_type(archived::types::FragmentSelectorType::ServerTimestamp)
            .timestamp_range(
                archived::types::TimestampRange::builder()
                    .start_timestamp(DateTime::from(
                        SystemTime::now() - Duration::from_secs(3600),
                    ))
                    .end_timestamp(DateTime::from(SystemTime::now()))
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let mut listed = Vec::new();
        let mut token = None;
        let mut pages = 0;
        loop {
            let page = client
                .list_fragments()
                .stream_name(name)
                .max_results(3)
                .fragment_selector(range.clone())
                .set_next_token(token)
                .send()
                .await
                .unwrap();
            pages += 1;
            let fr = page.fragments.unwrap_or_default();
            assert!(fr.len() <= 3);
            listed.extend(fr);
            token = page.next_token;
            if token.is_none() {
                break;
            }
        }
        assert_eq!(pages, frags.len().div_ceil(3));
        assert_eq!(listed.len(), frags.len());
        for (l, f) in listed.iter().zip(&frags) {
            assert_eq!(l.fragment_number(), Some(f.fragment_number.as_str()));
            assert_eq!(l.fragment_size_in_bytes, f.size as i64);
            assert_eq!(l.fragment_length_in_milliseconds, f.duration_ms as i64);
            let p = l.producer_timestamp().unwrap();
            assert_eq!(
                (p.as_secs_f64() * 1000.0).round() as u64,
                f.producer_timestamp_ms.unwrap()
            );
        }
        let out = client
            .get_media_for_fragment_list()
            .stream_name(name)
            .set_fragments(Some(
                listed
                    .iter()
                    .map(|l| l.fragment_number().unwrap().to_owned())
                    .collect(),
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(out.content_type(), Some("video/webm"));
        let chunks = read_all(out.payload).await;
        check_chunks("GetMediaForFragmentList", &chunks, &frags, false);
        for c in &chunks {
            assert_eq!(
                c.tag("AWS_KINESISVIDEO_SERVER_SIDE_TIMESTAMP"),
                c.tag(SERVER_TIMESTAMP)
            );
        }
        assert_eq!(frames(&chunks), live_frames);
    });
}

/// GetMedia NOW while a fragment is being received starts with that fragment, from its first
/// block (what arrived before the call, then the rest as it arrives).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn now_joins_the_fragment_being_received() {
    let ep = LocalEndpoint::start(Config::default()).unwrap();
    let name = "playback-now";
    ep.create_stream(name, 2).unwrap();
    // 4 fragments of 25 frames, each sent over its 1 s.
    let body = mkv_stream(1_000_000, 4, 25, 4000);
    let req = PutMediaRequest::new(&ep, name);
    let upload = tokio::spawn(async move {
        put_media(
            &req,
            schedule(&body, endpoint_common::Pacing::Timed { speed: 1.0 }),
            Duration::from_secs(20),
        )
        .await
    });
    // Half-way through the second fragment.
    let deadline = Instant::now() + Duration::from_secs(10);
    while ep.fragments(name).len() < 2 {
        assert!(Instant::now() < deadline, "no second fragment");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let open = ep.fragments(name)[1].clone();
    assert_eq!(open.state, FragmentState::Buffering);
    let out = media_client(ep.url(), &ep.credentials())
        .get_media()
        .stream_name(name)
        .start_selector(selector(media::types::StartSelectorType::Now, |s| s))
        .send()
        .await
        .unwrap();
    let reader = Arc::new(Mutex::new(ChunkReader::default()));
    let task = tail(out.payload, reader.clone());
    assert_eq!(upload.await.unwrap().status, 200);
    assert!(ep.wait_for_persisted(name, 4, Duration::from_secs(5)));
    let frags = persisted(&ep, name);
    let chunks = wait_for_end(&reader, &frags[3].fragment_number).await;
    task.abort();
    assert_eq!(chunks[0].number(), open.fragment_number);
    check_chunks("NOW mid-fragment", &chunks, &frags[1..], true);
    // Some frames were there before the call, the others came one by one as they arrived.
    let first = &chunks[0].frames;
    let span = first
        .last()
        .unwrap()
        .at
        .duration_since(first[0].at)
        .unwrap();
    assert!(
        span > Duration::from_millis(300),
        "the open fragment's frames came at once: {span:?}"
    );
}

/// Seconds since the epoch as the SDK's timestamp.
fn at_ms(ms: u64) -> DateTime {
    DateTime::from_millis(ms as i64)
}

/// FRAGMENT_NUMBER, PRODUCER_TIMESTAMP, SERVER_TIMESTAMP and CONTINUATION_TOKEN start where the
/// reference says; bad selectors and unknown streams get the service's errors; DASH is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_selectors_and_errors() {
    let ep = LocalEndpoint::start(Config::default()).unwrap();
    let name = "playback-selectors";
    ep.create_stream(name, 2).unwrap();
    // 5 fragments of 25 frames, 1 s apart, timecodes from 1_000_000 ms.
    let body = mkv_stream(1_000_000, 5, 25, 100);
    let up = put_media(
        &PutMediaRequest::new(&ep, name),
        schedule(
            &body,
            endpoint_common::Pacing::FullSpeed { max_chunk: 4096 },
        ),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(up.status, 200);
    assert!(ep.wait_for_persisted(name, 5, Duration::from_secs(5)));
    let frags = persisted(&ep, name);
    let client = media_client(ep.url(), &ep.credentials());
    let numbers = |c: &[Chunk]| c.iter().map(|c| c.number().to_owned()).collect::<Vec<_>>();
    let expected = |from: usize| {
        frags[from..]
            .iter()
            .map(|f| f.fragment_number.clone())
            .collect::<Vec<_>>()
    };
    let last = frags[4].fragment_number.clone();
    let read = |sel: media::types::StartSelector| {
        let client = client.clone();
        let last = last.clone();
        async move {
            let out = client
                .get_media()
                .stream_name(name)
                .start_selector(sel)
                .send()
                .await
                .unwrap();
            let reader = Arc::new(Mutex::new(ChunkReader::default()));
            let task = tail(out.payload, reader.clone());
            let chunks = wait_for_end(&reader, &last).await;
            task.abort();
            chunks
        }
    };
    use media::types::StartSelectorType as T;

    let c = read(selector(T::FragmentNumber, |s| {
        s.after_fragment_number(&frags[1].fragment_number)
    }))
    .await;
    assert_eq!(
        numbers(&c),
        expected(2),
        "FRAGMENT_NUMBER starts after the fragment"
    );
    check_chunks("FRAGMENT_NUMBER", &c, &frags[2..], true);

    // Inside the third fragment's span (1_002_000 .. 1_002_960 ms).
    let c = read(selector(T::ProducerTimestamp, |s| {
        s.start_timestamp(at_ms(1_002_500))
    }))
    .await;
    assert_eq!(
        numbers(&c),
        expected(2),
        "PRODUCER_TIMESTAMP: the fragment containing it"
    );
    let c = read(selector(T::ProducerTimestamp, |s| {
        s.start_timestamp(at_ms(1_000_000))
    }))
    .await;
    assert_eq!(numbers(&c), expected(0));
    let server_ms = |f: &FragmentInfo| {
        f.server_timestamp
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let c = read(selector(T::ServerTimestamp, |s| {
        s.start_timestamp(at_ms(server_ms(&frags[3])))
    }))
    .await;
    let first = frags
        .iter()
        .position(|f| server_ms(f) + f.duration_ms >= server_ms(&frags[3]))
        .unwrap();
    assert_eq!(numbers(&c), expected(first), "SERVER_TIMESTAMP");

    // A reader that stops after the second chunk resumes with its continuation token.
    let c = read(selector(T::Earliest, |s| s)).await;
    assert_eq!(numbers(&c), expected(0));
    let token = c[1].tag(CONTINUATION_TOKEN).unwrap().to_owned();
    let c = read(selector(T::ContinuationToken, |s| {
        s.continuation_token(&token)
    }))
    .await;
    assert_eq!(
        numbers(&c),
        expected(2),
        "CONTINUATION_TOKEN resumes after its chunk"
    );

    // ListFragments by producer timestamp: fragments starting in [1_001_000, 1_003_000] ms.
    let archive = archived_client(ep.url(), &ep.credentials());
    let range = archived::types::FragmentSelector::builder()
        .fragment_selector_type(archived::types::FragmentSelectorType::ProducerTimestamp)
        .timestamp_range(
            archived::types::TimestampRange::builder()
                .start_timestamp(at_ms(1_001_000))
                .end_timestamp(at_ms(1_003_000))
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let page = archive
        .list_fragments()
        .stream_name(name)
        .fragment_selector(range.clone())
        .max_results(2)
        .send()
        .await
        .unwrap();
    let token = page.next_token.clone().expect("a second page");
    let rest = archive
        .list_fragments()
        .stream_name(name)
        .fragment_selector(range)
        .next_token(token)
        .send()
        .await
        .unwrap();
    assert!(rest.next_token.is_none());
    let listed: Vec<String> = page
        .fragments()
        .iter()
        .chain(rest.fragments())
        .map(|f| f.fragment_number().unwrap().to_owned())
        .collect();
    assert_eq!(
        listed,
        expected(1)[..3].to_vec(),
        "ListFragments PRODUCER_TIMESTAMP"
    );

    // Errors, as the service's.
    let err = |r: Result<_, media::error::SdkError<media::operation::get_media::GetMediaError>>| {
        let e = r.expect_err("refused").into_service_error();
        use media::error::ProvideErrorMetadata;
        e.code().unwrap().to_owned()
    };
    let e = err(client
        .get_media()
        .stream_name("no-such-stream")
        .start_selector(selector(T::Now, |s| s))
        .send()
        .await);
    assert_eq!(e, "ResourceNotFoundException");
    let e = err(client
        .get_media()
        .stream_name(name)
        .start_selector(selector(T::FragmentNumber, |s| s))
        .send()
        .await);
    assert_eq!(
        e, "InvalidArgumentException",
        "FRAGMENT_NUMBER without a number"
    );
    let e = err(client
        .get_media()
        .stream_name(name)
        .start_selector(selector(T::ContinuationToken, |s| {
            s.continuation_token("12345")
        }))
        .send()
        .await);
    assert_eq!(e, "InvalidArgumentException", "foreign continuation token");
    let e = err(client
        .get_media()
        .stream_name(name)
        .start_selector(selector(T::FragmentNumber, |s| {
            s.after_fragment_number("12345")
        }))
        .send()
        .await);
    assert_eq!(e, "ResourceNotFoundException", "unknown fragment number");
    let e = archived_client(ep.url(), &ep.credentials())
        .get_media_for_fragment_list()
        .stream_name(name)
        .fragments("12345")
        .send()
        .await
        .expect_err("unknown fragment")
        .into_service_error();
    assert!(e.is_resource_not_found_exception(), "{e:?}");

    // GetDataEndpoint: a URL for every API served, DASH and images refused clearly.
    for api in [
        "PUT_MEDIA",
        "GET_MEDIA",
        "LIST_FRAGMENTS",
        "GET_MEDIA_FOR_FRAGMENT_LIST",
        "GET_HLS_STREAMING_SESSION_URL",
        "GET_CLIP",
    ] {
        assert_eq!(data_endpoint(&ep, name, api).await, ep.url());
    }
    for api in ["GET_DASH_STREAMING_SESSION_URL", "GET_IMAGES"] {
        let e = sdk_client(ep.url(), &ep.credentials(), 1)
            .get_data_endpoint()
            .stream_name(name)
            .api_name(api.into())
            .send()
            .await
            .expect_err("not served")
            .into_service_error();
        assert!(e.is_invalid_argument_exception(), "{api}: {e:?}");
        use aws_sdk_kinesisvideo::error::ProvideErrorMetadata;
        assert!(e.message().unwrap().contains("does not serve"), "{e:?}");
    }
}

/// Every playback call is signed: a wrong secret gets what the control plane answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_refused_like_the_control_plane() {
    let ep = LocalEndpoint::start(Config::default()).unwrap();
    let name = "playback-auth";
    ep.create_stream(name, 2).unwrap();
    let wrong = Credentials::new(&ep.credentials().access_key_id, "not-the-secret");
    let control = sdk_client(ep.url(), &wrong, 1)
        .describe_stream()
        .stream_name(name)
        .send()
        .await
        .expect_err("refused");
    let expected = (
        control.raw_response().unwrap().status().as_u16(),
        control.code().unwrap().to_owned(),
    );
    assert_eq!(expected, (403, "InvalidSignatureException".to_owned()));

    let got = media_client(ep.url(), &wrong)
        .get_media()
        .stream_name(name)
        .start_selector(selector(media::types::StartSelectorType::Now, |s| s))
        .send()
        .await
        .expect_err("refused");
    {
        use media::error::ProvideErrorMetadata;
        assert_eq!(
            (
                got.raw_response().unwrap().status().as_u16(),
                got.code().unwrap().to_owned()
            ),
            expected,
            "GetMedia"
        );
    }
    let a = archived_client(ep.url(), &wrong);
    use archived::error::ProvideErrorMetadata;
    let got = a
        .list_fragments()
        .stream_name(name)
        .send()
        .await
        .expect_err("refused");
    assert_eq!(
        (
            got.raw_response().unwrap().status().as_u16(),
            got.code().unwrap().to_owned()
        ),
        expected,
        "ListFragments"
    );
    let got = a
        .get_media_for_fragment_list()
        .stream_name(name)
        .fragments("1")
        .send()
        .await
        .expect_err("refused");
    assert_eq!(
        (
            got.raw_response().unwrap().status().as_u16(),
            got.code().unwrap().to_owned()
        ),
        expected,
        "GetMediaForFragmentList"
    );
    // The raw shape too: x-amzn-ErrorType and the JSON body.
    let (status, error_type, body) = raw_call(
        ep.url(),
        &wrong,
        "/getMedia",
        &serde_json::json!({"StreamName": name, "StartSelector": {"StartSelectorType": "NOW"}}),
    )
    .await;
    assert_eq!(status, 403);
    assert!(
        error_type
            .unwrap()
            .starts_with("InvalidSignatureException:"),
        "x-amzn-ErrorType"
    );
    assert_eq!(body["__type"], "InvalidSignatureException");
}

/// p50, p99 and max of `lat`, in ms.
fn percentiles(mut lat: Vec<Duration>) -> String {
    lat.sort();
    let pct = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1000.0;
    format!(
        "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} frames)",
        pct(0.5),
        pct(0.99),
        pct(1.0),
        lat.len()
    )
}

/// Frame enters kvssink → its block readable by a GetMedia (NOW) consumer through the SDK, over
/// a 20 s live upload (30 fps H.264, alone and with AAC); the first fragment (connection setup)
/// is left out. Split into the sink's part (enters kvssink → block read by the endpoint, the
/// endpoint's `record_frame_arrivals`) and the endpoint's (block read → parsed by the consumer).
#[test]
#[ignore = "a measurement: run with --run-ignored ignored-only --no-capture"]
fn getmedia_latency_benchmark() {
    for audio in [false, true] {
        latency_run(audio);
    }
}

fn latency_run(audio: bool) {
    let ep = LocalEndpoint::start(Config {
        record_frame_arrivals: true,
        ..Config::default()
    })
    .unwrap();
    let name = "playback-latency";
    ep.create_stream(name, 2).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let out = rt
        .block_on(
            media_client(ep.url(), &ep.credentials())
                .get_media()
                .stream_name(name)
                .start_selector(selector(media::types::StartSelectorType::Now, |s| s))
                .send(),
        )
        .unwrap();
    let reader = Arc::new(Mutex::new(ChunkReader::default()));
    let task = {
        let _rt = rt.enter();
        tail(out.payload, reader.clone())
    };
    let entries: Entries = Default::default();
    let result = run(
        &ep,
        &upload_line(name, 20, audio),
        Duration::from_secs(90),
        RunOptions {
            on_created: Some(Box::new(|p| record_entries(p, &entries))),
            ..Default::default()
        },
    );
    assert!(result.eos && result.errors.is_empty(), "{result:?}");
    assert!(ep.wait_for_persisted(name, result.persisted(), Duration::from_secs(10)));
    let frags = persisted(&ep, name);
    let last = frags.last().unwrap().fragment_number.clone();
    let chunks = rt.block_on(wait_for_end(&reader, &last));
    task.abort();

    let arrivals: BTreeMap<(u64, i64), SystemTime> = frags
        .iter()
        .flat_map(|f| f.frame_arrivals.iter())
        .map(|a| {
            (
                (a.track, a.timecode),
                SystemTime::UNIX_EPOCH + Duration::from_micros(a.at_unix_us),
            )
        })
        .collect();
    let entries = entries.lock().unwrap();
    let first_video = chunks[0]
        .frames
        .iter()
        .find(|f| f.track == 1)
        .unwrap()
        .timecode;
    let offset = first_video - entries["video_0"][0].0 as i64;
    let what = if audio { "H.264 + AAC" } else { "H.264 alone" };
    for (pad, track) in [("video_0", 1u64), ("audio_0", 2)] {
        let Some(entered) = entries.get(pad) else {
            continue;
        };
        let by_pts: BTreeMap<i64, SystemTime> =
            entered.iter().map(|(p, t)| (*p as i64, *t)).collect();
        let (mut total, mut sink, mut endpoint) = (Vec::new(), Vec::new(), Vec::new());
        for f in chunks[1..]
            .iter()
            .flat_map(|c| c.frames.iter().filter(|f| f.track == track))
        {
            let pts = f.timecode - offset;
            let Some(entered) = (pts - 1..=pts + 1).find_map(|p| by_pts.get(&p)) else {
                continue;
            };
            let read = arrivals[&(f.track, f.timecode)];
            total.push(f.at.duration_since(*entered).unwrap_or_default());
            sink.push(read.duration_since(*entered).unwrap_or_default());
            endpoint.push(f.at.duration_since(read).unwrap_or_default());
        }
        assert!(total.len() > 100, "{pad}: {} frames matched", total.len());
        println!(
            "{what}, {pad}: enters kvssink -> read by the GetMedia consumer: {}",
            percentiles(total)
        );
        println!(
            "{what}, {pad}:   of which enters kvssink -> read by the endpoint: {}",
            percentiles(sink)
        );
        println!(
            "{what}, {pad}:   of which endpoint -> GetMedia consumer: {}",
            percentiles(endpoint)
        );
    }
}
