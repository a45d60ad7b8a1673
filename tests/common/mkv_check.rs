//! The four independent checks of a Matroska file (docs/kvs-protocol.md §9), shared by the
//! media and pipeline tests: `mkvmerge -J` without errors or warnings, `ffmpeg -xerror` decoding
//! silently, strictly increasing per-track PTS in `ffprobe` with the expected frame counts, and
//! GStreamer demux + decode without WARN/ERROR.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

pub fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kvssink-check-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs the four checks on `data`; `decode` lists `(demuxer pad, decoder chain)` per track.
pub fn check_file(name: &str, data: &[u8], expected_frames: &[usize], decode: &[(&str, &str)]) {
    let dir = tmpdir(name);
    let path = dir.join(format!("{name}.mkv"));
    std::fs::write(&path, data).unwrap();

    let out = Command::new("mkvmerge")
        .arg("-J")
        .arg(&path)
        .output()
        .unwrap();
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "mkvmerge -J: {json}");
    let compact: String = json.split_whitespace().collect();
    assert!(compact.contains("\"errors\":[]"), "mkvmerge errors: {json}");
    assert!(
        compact.contains("\"warnings\":[]"),
        "mkvmerge warnings: {json}"
    );

    let out = Command::new("ffmpeg")
        .args(["-v", "warning", "-xerror", "-i"])
        .arg(&path)
        // The encoder (wrapped_avframe) in the file's own time base: with the default 1/frame
        // rate, 33/34 ms frame steps that start half a frame after the other track's first
        // frame round to equal timestamps and the null muxer reports an error for a clean file.
        .args(["-enc_time_base", "-1", "-f", "null", "-"])
        .output()
        .unwrap();
    // ffmpeg says "Guessed Channel Layout … mono" for every 18-byte WAVEFORMATEX (it has no
    // channel mask); that is the format KVS and the reference use for G.711, so it is allowed.
    let err = String::from_utf8_lossy(&out.stderr);
    let unexpected: Vec<&str> = err
        .lines()
        .filter(|l| !l.contains("Guessed Channel Layout for Input Stream"))
        .collect();
    assert!(
        out.status.success() && unexpected.is_empty(),
        "ffmpeg: {err}"
    );

    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "packet=stream_index,pts",
            "-of",
            "csv=p=0",
        ])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut last: Vec<Option<i64>> = vec![None; expected_frames.len()];
    let mut counts = vec![0usize; expected_frames.len()];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut it = line.split(',');
        let s: usize = it.next().unwrap().parse().unwrap();
        let pts: i64 = it
            .next()
            .unwrap()
            .parse()
            .unwrap_or_else(|_| panic!("pts N/A in {line}"));
        assert!(
            last[s].is_none_or(|l| pts > l),
            "stream {s}: pts {pts} after {last:?}"
        );
        last[s] = Some(pts);
        counts[s] += 1;
    }
    assert_eq!(counts, expected_frames, "frames per track");

    // GStreamer's demuxer and decoders, with warnings shown. Push mode (a queue before the
    // demuxer), as a stream is read: in pull mode matroskademux's cluster peeking warns about
    // the Cluster Position element that the reference (and so we) write.
    let mut line = format!(
        "filesrc location={} ! queue ! matroskademux name=d",
        path.display()
    );
    for (pad, dec) in decode {
        line.push_str(&format!(" d.{pad} ! queue ! {dec} ! fakesink"));
    }
    let out = Command::new("timeout")
        .arg("60")
        .arg("gst-launch-1.0")
        .args(line.split_whitespace())
        .env("GST_DEBUG", "2")
        .env("GST_DEBUG_NO_COLOR", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{line}: {err}");
    // GStreamer 1.22's matroskademux reads an A_MS/ACM track's bits per sample from offset 16
    // of the WAVEFORMATEX (cbSize, 0) instead of 14 (8, as we write), so it warns "invalid depth
    // (0) of alaw/mulaw audio" for every correct WAVEFORMATEX (tried: with cbSize = 8 the warning
    // goes away). That one line is allowed; anything else fails the test.
    let unexpected: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .filter(|l| !l.contains("gst_riff_create_audio_caps: invalid depth (0) of"))
        .collect();
    assert!(unexpected.is_empty(), "{line}: {err}");
    std::fs::remove_dir_all(dir).unwrap();
}
