//! Playback from the local endpoint after and during a live kvssink upload: HLS sessions opened
//! with the real `aws-sdk-kinesisvideoarchivedmedia` client and decoded by ffmpeg (ON_DEMAND after
//! the upload, LIVE during it), GetClip's MP4, the LIVE playlist's latency behind the PERSISTED
//! ACK, and the `/_local/` page's Media Source Extensions player in headless Chromium.

mod common;
use common::pipeline;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use archived::error::ProvideErrorMetadata;
use archived::types::{
    ClipFragmentSelector, ClipFragmentSelectorType, ClipTimestampRange, ContainerFormat,
    HlsFragmentSelector, HlsFragmentSelectorType, HlsPlaybackMode, HlsTimestampRange,
};
use aws_sdk_kinesisvideoarchivedmedia as archived;
use kvs_local_endpoint::{Config, FragmentInfo, FragmentState, LocalEndpoint};
use pipeline::{Run, RunOptions, run, stored_frames};

/// `seconds` of live 30 fps H.264 (1 s fragments) and AAC through kvssink into `name`.
fn av(seconds: u32, name: &str) -> String {
    format!(
        "videotestsrc is-live=true num-buffers={} ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 bframes=0 ! h264parse ! queue \
         ! kvssink name=sink stream-name={name} \
         audiotestsrc is-live=true num-buffers={} samplesperbuffer=1024 ! audio/x-raw,rate=44100,channels=2 \
         ! avenc_aac ! aacparse ! queue ! sink.",
        seconds * 30,
        seconds * 44100 / 1024
    )
}

fn endpoint(stream: &str) -> LocalEndpoint {
    let ep = LocalEndpoint::start(Config::default()).expect("the local endpoint starts");
    ep.create_stream(stream, 2).expect("stream created");
    ep
}

fn upload(ep: &LocalEndpoint, stream: &str, seconds: u32) -> Run {
    let r = run(
        ep,
        &av(seconds, stream),
        Duration::from_secs(120),
        RunOptions::default(),
    );
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(r.eos, "no EOS");
    r
}

fn persisted(ep: &LocalEndpoint, stream: &str) -> Vec<FragmentInfo> {
    ep.fragments(stream)
        .into_iter()
        .filter(|f| f.state == FragmentState::Persisted)
        .collect()
}

fn client(ep: &LocalEndpoint) -> archived::Client {
    let c = ep.credentials();
    let creds = aws_credential_types::Credentials::new(
        &c.access_key_id,
        &c.secret_access_key,
        c.session_token.clone(),
        None,
        "local-test",
    );
    let conf = archived::Config::builder()
        .behavior_version(archived::config::BehaviorVersion::latest())
        .region(archived::config::Region::new(ep.region().to_owned()))
        .credentials_provider(creds)
        .endpoint_url(ep.url())
        .build();
    archived::Client::from_conf(conf)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn datetime(ms: u64) -> aws_smithy_types::DateTime {
    aws_smithy_types::DateTime::from_millis(ms as i64)
}

/// Producer-timestamp range around every persisted fragment.
fn whole_range(ep: &LocalEndpoint, stream: &str) -> (u64, u64) {
    let f = persisted(ep, stream);
    let first = f.first().unwrap().producer_timestamp_ms.unwrap();
    let last = f.last().unwrap().producer_timestamp_ms.unwrap();
    (first - 1000, last + 5000)
}

fn hls_url(ep: &LocalEndpoint, stream: &str, mode: HlsPlaybackMode) -> String {
    let mut selector = HlsFragmentSelector::builder();
    if mode != HlsPlaybackMode::Live {
        let (a, b) = whole_range(ep, stream);
        selector = selector
            .fragment_selector_type(HlsFragmentSelectorType::ProducerTimestamp)
            .timestamp_range(
                HlsTimestampRange::builder()
                    .start_timestamp(datetime(a))
                    .end_timestamp(datetime(b))
                    .build(),
            );
    }
    rt().block_on(
        client(ep)
            .get_hls_streaming_session_url()
            .stream_name(stream)
            .playback_mode(mode)
            .container_format(ContainerFormat::FragmentedMp4)
            .hls_fragment_selector(selector.build())
            .send(),
    )
    .expect("GetHLSStreamingSessionURL")
    .hls_streaming_session_url()
    .expect("a session URL")
    .to_owned()
}

/// GetClip over every persisted fragment of the stream: the MP4's bytes.
fn get_clip(ep: &LocalEndpoint, stream: &str) -> Vec<u8> {
    let (a, b) = whole_range(ep, stream);
    rt().block_on(async {
        let out = client(ep)
            .get_clip()
            .stream_name(stream)
            .clip_fragment_selector(
                ClipFragmentSelector::builder()
                    .fragment_selector_type(ClipFragmentSelectorType::ProducerTimestamp)
                    .timestamp_range(
                        ClipTimestampRange::builder()
                            .start_timestamp(datetime(a))
                            .end_timestamp(datetime(b))
                            .build()
                            .unwrap(),
                    )
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .expect("GetClip");
        assert_eq!(out.content_type(), Some("video/mp4"));
        out.payload.collect().await.unwrap().into_bytes().to_vec()
    })
}

/// Runs a tool; returns (success, stdout, stderr).
fn tool(cmd: &mut Command, timeout: Duration) -> (bool, String, String) {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (is it installed? scripts/lib/system-deps.sh)"));
    let end = Instant::now() + timeout;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `ffmpeg -v error -i input -f null -`: decodes everything, must print nothing.
fn decode_cleanly(input: &str, extra: &[&str]) {
    let (ok, _, err) = tool(
        Command::new("ffmpeg")
            .args(["-nostdin", "-v", "error", "-i", input])
            .args(extra)
            // In the input's time base: see tests/common/mkv_check.rs.
            .args(["-enc_time_base", "-1", "-f", "null", "-"]),
        Duration::from_secs(90),
    );
    assert!(
        ok && err.trim().is_empty(),
        "ffmpeg decoding {input}: {err}"
    );
}

/// Frames per stream (`h264`, `aac`) as `ffprobe -count_frames` reads them.
fn count_frames(input: &str) -> Vec<(String, u64)> {
    let (ok, out, err) = tool(
        Command::new("ffprobe").args([
            "-v",
            "error",
            "-count_frames",
            "-show_entries",
            "stream=index,codec_name,nb_read_frames",
            "-of",
            "csv=p=0",
            input,
        ]),
        Duration::from_secs(90),
    );
    assert!(ok, "ffprobe {input}: {err}");
    // HLS inputs list their streams twice (under the program and on their own): by index.
    let mut streams: Vec<(u32, String, u64)> = out
        .lines()
        .filter_map(|l| {
            let mut f = l.split(',');
            Some((
                f.next()?.trim().parse().ok()?,
                f.next()?.to_owned(),
                f.next()?.trim().parse().unwrap_or(0),
            ))
        })
        .collect();
    streams.sort();
    streams.dedup();
    streams.into_iter().map(|(_, c, n)| (c, n)).collect()
}

fn frames_of(counts: &[(String, u64)], codec: &str) -> u64 {
    counts
        .iter()
        .find(|(c, _)| c == codec)
        .map(|(_, n)| *n)
        .unwrap_or_else(|| panic!("no {codec} stream in {counts:?}"))
}

/// A plain HTTP/1.1 GET: (status, body).
fn http_get(url: &str) -> (u16, Vec<u8>) {
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut s = TcpStream::connect(host).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut body = buf[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, body)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(std::str::from_utf8(&data[..eol]).unwrap().trim(), 16)
            .unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[eol + 2 + size + 2..];
    }
    out
}

fn get_text(url: &str) -> String {
    let (status, body) = http_get(url);
    let text = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(status, 200, "{url}: {text}");
    text
}

/// The media playlist URL of a session (the master playlist's one variant).
fn media_playlist_url(master_url: &str) -> String {
    let master = get_text(master_url);
    let line = master
        .lines()
        .find(|l| !l.starts_with('#') && !l.is_empty())
        .expect("a variant");
    format!(
        "{}{line}",
        &master_url[..master_url.rfind('/').unwrap() + 1]
    )
}

fn playlist_fragment_numbers(playlist: &str) -> Vec<String> {
    playlist
        .lines()
        .filter(|l| l.starts_with("getMP4MediaFragment.mp4"))
        .filter_map(|l| l.split("FragmentNumber=").nth(1))
        .map(str::to_owned)
        .collect()
}

fn artifact_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts/playback_hls");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The error code of an SDK call ("ok" when it succeeded).
fn code<O, E: ProvideErrorMetadata, R>(r: Result<O, archived::error::SdkError<E, R>>) -> String {
    match r {
        Ok(_) => "ok".to_owned(),
        Err(e) => e.code().unwrap_or("?").to_owned(),
    }
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn on_demand_hls_and_get_clip_decode_after_the_upload() {
    let stream = "hls-on-demand";
    let ep = endpoint(stream);
    let r = upload(&ep, stream, 6);
    let video_in = r.frames["video_0"];
    let audio_in = r.frames["audio_0"];
    let frags = persisted(&ep, stream);
    assert!(frags.len() >= 5, "{} fragments persisted", frags.len());

    let url = hls_url(&ep, stream, HlsPlaybackMode::OnDemand);
    assert!(
        url.starts_with(&format!(
            "{}/hls/v1/getHLSMasterPlaylist.m3u8?SessionToken=",
            ep.url()
        )),
        "{url}"
    );
    let media = get_text(&media_playlist_url(&url));
    assert!(media.contains("#EXT-X-ENDLIST"), "{media}");
    assert_eq!(
        playlist_fragment_numbers(&media).len(),
        frags.len(),
        "{media}"
    );
    decode_cleanly(&url, &[]);
    let counts = count_frames(&url);
    assert_eq!(
        frames_of(&counts, "h264"),
        video_in,
        "HLS video frames vs. frames into the sink"
    );
    // AAC: the encoder's own frames, within a couple of the buffers that entered the sink.
    let aac = frames_of(&counts, "aac");
    assert!(
        aac.abs_diff(audio_in) <= 3,
        "HLS AAC frames {aac} vs. {audio_in} into the sink"
    );

    // GetClip over the same range: one MP4.
    let clip = get_clip(&ep, stream);
    let path = artifact_dir().join("clip.mp4");
    std::fs::write(&path, &clip).unwrap();
    let path = path.to_str().unwrap();
    decode_cleanly(path, &[]);
    let counts = count_frames(path);
    assert_eq!(frames_of(&counts, "h264"), video_in, "clip video frames");
    assert!(
        frames_of(&counts, "aac").abs_diff(audio_in) <= 3,
        "clip AAC frames {counts:?}"
    );
}

#[test]
fn hls_requests_are_checked() {
    let stream = "hls-checks";
    let ep = endpoint(stream);
    upload(&ep, stream, 3);
    let c = client(&ep);
    let rt = rt();
    // MPEG_TS is refused clearly; LIVE takes no range; ON_DEMAND needs one; unknown streams.
    let ts = rt.block_on(
        c.get_hls_streaming_session_url()
            .stream_name(stream)
            .playback_mode(HlsPlaybackMode::Live)
            .container_format(ContainerFormat::MpegTs)
            .send(),
    );
    assert_eq!(code(ts), "InvalidArgumentException");
    let no_range = rt.block_on(
        c.get_hls_streaming_session_url()
            .stream_name(stream)
            .playback_mode(HlsPlaybackMode::OnDemand)
            .send(),
    );
    assert_eq!(code(no_range), "InvalidArgumentException");
    let missing = rt.block_on(
        c.get_hls_streaming_session_url()
            .stream_name("no-such-stream")
            .playback_mode(HlsPlaybackMode::Live)
            .send(),
    );
    assert_eq!(code(missing), "ResourceNotFoundException");

    // LIVE_REPLAY from the first fragment, two at a time: the first two, no end yet.
    let frags = persisted(&ep, stream);
    let first = frags[0].producer_timestamp_ms.unwrap();
    let replay = rt
        .block_on(
            c.get_hls_streaming_session_url()
                .stream_name(stream)
                .playback_mode(HlsPlaybackMode::LiveReplay)
                .max_media_playlist_fragment_results(2)
                .hls_fragment_selector(
                    HlsFragmentSelector::builder()
                        .fragment_selector_type(HlsFragmentSelectorType::ProducerTimestamp)
                        .timestamp_range(
                            HlsTimestampRange::builder()
                                .start_timestamp(datetime(first))
                                .build(),
                        )
                        .build(),
                )
                .send(),
        )
        .expect("LIVE_REPLAY session");
    let media = get_text(&media_playlist_url(
        replay.hls_streaming_session_url().unwrap(),
    ));
    assert_eq!(
        playlist_fragment_numbers(&media),
        [
            frags[0].fragment_number.clone(),
            frags[1].fragment_number.clone()
        ],
        "{media}"
    );
    assert!(!media.contains("#EXT-X-ENDLIST"), "{media}");

    // The operation itself is signed: an unsigned POST is refused.
    let mut s = TcpStream::connect(ep.addr()).unwrap();
    let body = format!("{{\"StreamName\":\"{stream}\"}}");
    write!(
        s,
        "POST /getHLSStreamingSessionURL HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        ep.addr(),
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");

    // Session URLs are unsigned but need their token.
    let url = hls_url(&ep, stream, HlsPlaybackMode::Live);
    assert!(get_text(&url).starts_with("#EXTM3U"));
    let forged = format!("{}x", url);
    assert_eq!(http_get(&forged).0, 403);
    let no_token = url.split("?").next().unwrap();
    assert_eq!(http_get(no_token).0, 400);
}

#[test]
fn live_hls_decodes_during_the_upload_and_lists_fragments_soon_after_persisted() {
    let stream = "hls-live";
    let ep = endpoint(stream);
    let seconds = 20;
    std::thread::scope(|s| {
        let uploader = s.spawn(|| upload(&ep, stream, seconds));
        assert!(
            ep.wait_for_persisted(stream, 1, Duration::from_secs(30)),
            "a first fragment is persisted"
        );
        let url = hls_url(&ep, stream, HlsPlaybackMode::Live);
        let media_url = media_playlist_url(&url);

        // Poll the LIVE playlist: when does each fragment show up?
        let poller = s.spawn(move || {
            let mut seen: Vec<(String, SystemTime)> = Vec::new();
            let mut last_change = Instant::now();
            while last_change.elapsed() < Duration::from_secs(5) {
                let text = get_text(&media_url);
                assert!(
                    !text.contains("#EXT-X-ENDLIST"),
                    "a LIVE playlist has no end"
                );
                let now = SystemTime::now();
                for n in playlist_fragment_numbers(&text) {
                    if !seen.iter().any(|(m, _)| *m == n) {
                        seen.push((n, now));
                        last_change = Instant::now();
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            seen
        });

        // ffmpeg plays 6 s of the LIVE session while the upload goes on.
        let (ok, out, err) = tool(
            Command::new("ffmpeg").args([
                "-nostdin", "-v", "error", "-i", &url, "-t", "6", "-map", "0:v", "-f", "framemd5",
                "-",
            ]),
            Duration::from_secs(60),
        );
        assert!(ok && err.trim().is_empty(), "ffmpeg LIVE: {err}");
        let frames = out.lines().filter(|l| !l.starts_with('#')).count();
        assert!(
            (150..=190).contains(&frames),
            "6 s of 30 fps LIVE video decoded: {frames} frames"
        );

        let r = uploader.join().unwrap();
        let seen = poller.join().unwrap();
        let frags = persisted(&ep, stream);
        assert!(r.persisted() >= seconds as usize - 1);
        let mut latencies: Vec<i64> = frags
            .iter()
            .filter_map(|f| {
                let persisted_at = f
                    .acks
                    .iter()
                    .find(|a| a.ack.event_type == kvs_local_endpoint::AckEventType::Persisted)?
                    .at;
                let (_, seen_at) = seen.iter().find(|(n, _)| *n == f.fragment_number)?;
                Some(unix_ms(*seen_at) - unix_ms(persisted_at))
            })
            .collect();
        latencies.sort();
        assert!(
            latencies.len() + 3 >= frags.len(),
            "the playlist listed {} of {} fragments",
            latencies.len(),
            frags.len()
        );
        let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
        println!(
            "LIVE playlist latency after the PERSISTED ACK over {} fragments: p50 {p50} ms, p99 {p99} ms, max {} ms",
            latencies.len(),
            latencies.last().unwrap()
        );
        assert!(p50 <= 200, "p50 {p50} ms (target: 200 ms)");
        assert!(p99 <= 1000, "p99 {p99} ms");
    });
}

/// Real time the page plays before Chromium dumps it.
const PLAY_FOR: Duration = Duration::from_secs(8);

/// A URL whose one request is answered after `d`: the page loads it as an image (`?hold=`), so
/// its load event, where headless Chromium dumps the DOM or takes the screenshot, comes after the
/// video played for `d`.
fn hold_for(d: Duration) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hold", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            std::thread::sleep(d);
            let _ = s.write_all(
                b"HTTP/1.1 204 No Content\r\nAccess-Control-Allow-Origin: *\r\nConnection: close\r\n\r\n",
            );
        }
    });
    url
}

#[test]
fn the_page_plays_the_live_stream_in_headless_chromium() {
    let stream = "hls-page";
    let ep = endpoint(stream);
    std::thread::scope(|s| {
        let uploader = s.spawn(|| upload(&ep, stream, 20));
        assert!(ep.wait_for_persisted(stream, 2, Duration::from_secs(30)));
        let profile = tempfile::tempdir().unwrap();
        let chromium = |extra: &[&str]| {
            let page = format!(
                "{}/_local/?stream={stream}&hold={}",
                ep.url(),
                hold_for(PLAY_FOR)
            );
            tool(
                Command::new("chromium")
                    .args([
                        "--headless",
                        "--disable-gpu",
                        "--no-sandbox",
                        "--autoplay-policy=no-user-gesture-required",
                        "--window-size=900,1000",
                    ])
                    .arg(format!("--user-data-dir={}", profile.path().display()))
                    .args(extra)
                    .arg(&page),
                Duration::from_secs(90),
            )
        };
        let (ok, dom, err) = chromium(&["--dump-dom"]);
        assert!(ok, "chromium: {err}");
        let field = |id: &str| -> f64 {
            let at = dom
                .find(&format!("id=\"{id}\">"))
                .unwrap_or_else(|| panic!("no #{id} in {dom}"));
            let rest = &dom[at + id.len() + 6..];
            rest[..rest.find('<').unwrap()].parse().unwrap_or(0.0)
        };
        let played = field("played");
        let appended = field("appended");
        assert!(
            played >= 2.0 && appended >= 3.0,
            "the video played {played} s from {appended} segments; status: {}",
            dom.split("id=\"status\">")
                .nth(1)
                .and_then(|s| s.split('<').next())
                .unwrap_or("?")
        );
        println!("the page's player played {played} s from {appended} segments");
        let shot = artifact_dir().join("page.png");
        let (ok, _, err) = chromium(&[&format!("--screenshot={}", shot.display())]);
        assert!(ok && shot.exists(), "screenshot: {err}");
        uploader.join().unwrap();
    });
}

#[test]
fn h265_video_plays_over_hls_and_g711_audio_is_left_out() {
    let stream = "hls-h265-alaw";
    let ep = endpoint(stream);
    let r = run(
        &ep,
        &format!(
            "videotestsrc is-live=true num-buffers=120 ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 \
             ! x265enc tune=zerolatency speed-preset=ultrafast key-int-max=30 ! h265parse ! queue \
             ! kvssink name=sink stream-name={stream} \
             audiotestsrc is-live=true num-buffers=40 samplesperbuffer=800 ! audio/x-raw,rate=8000,channels=1 \
             ! alawenc ! queue ! sink."
        ),
        Duration::from_secs(120),
        RunOptions::default(),
    );
    assert!(r.errors.is_empty() && r.eos, "{:?}", r.errors);
    // What the endpoint stored first, so a difference below is the HLS remux's.
    assert_eq!(
        stored_frames(&ep, stream).get(&1).copied(),
        r.frames.get("video_0").copied(),
        "video frames stored vs. frames that entered the sink (dropped: {:?})",
        r.dropped
    );
    let url = hls_url(&ep, stream, HlsPlaybackMode::OnDemand);
    let master = get_text(&url);
    assert!(master.contains("CODECS=\"hvc1."), "{master}");
    decode_cleanly(&url, &[]);
    let counts = count_frames(&url);
    assert_eq!(frames_of(&counts, "hevc"), r.frames["video_0"]);
    assert_eq!(counts.len(), 1, "only the video track: {counts:?}");

    let path = artifact_dir().join("clip-h265.mp4");
    std::fs::write(&path, get_clip(&ep, stream)).unwrap();
    let path = path.to_str().unwrap();
    decode_cleanly(path, &[]);
    let counts = count_frames(path);
    assert_eq!(frames_of(&counts, "hevc"), r.frames["video_0"]);
    assert_eq!(counts.len(), 1, "only the video track: {counts:?}");
}
