//! The local endpoint's incremental MKV reader (`kvs_local_endpoint::mkv::Splitter`), fed a PutMedia body in
//! arbitrary chunks.
//! Input: a flags byte (chunking in bits 0-1; bit 2: 4 KiB fragment limit; bit 3: frames for
//! every track not required; bit 4: 1 s fragment limit; bit 5: report blocks), then the body.
//! Checks: no panic; the same events and the same verdict whether the body comes whole or in
//! chunks; each fragment is a piece of the body that starts with Tags or a Cluster.
#![no_main]

use std::time::Duration;

use gst_plugin_kvssink_fuzz::chunks;
use kvs_local_endpoint::mkv::{Event, Limits, RuleKind, Splitter};
use libfuzzer_sys::fuzz_target;

/// A comparable summary of an event.
fn summary(e: &Event) -> String {
    match e {
        Event::Header(h) => format!(
            "header {} tracks, scale {}, {:?}",
            h.track_list.len(),
            h.timecode_scale_ns,
            h.track_list
        ),
        Event::FragmentStarted { timecode } => format!("started {timecode}"),
        Event::Block { track, timecode, .. } => format!("block {track} {timecode}"),
        Event::FragmentCompleted(f) => format!(
            "fragment {} {:?} {:?} keys {} frames {}..{} tags {:?} eof {}",
            f.timecode,
            f.bytes,
            f.frames_per_track,
            f.key_frames,
            f.first_frame,
            f.last_frame,
            f.tags,
            f.end_of_fragment
        ),
    }
}

fn run(
    limits: &Limits,
    report_blocks: bool,
    pieces: &[&[u8]],
) -> (Vec<Event>, Result<(), RuleKind>) {
    let mut s = Splitter::new(limits.clone()).report_blocks(report_blocks);
    let mut events = Vec::new();
    for p in pieces {
        if let Err(e) = s.push(p, &mut events) {
            return (events, Err(e.kind));
        }
    }
    let r = s.finish(&mut events).map_err(|e| e.kind);
    (events, r)
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, body)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        max_fragment_bytes: if flags & 4 != 0 { 4096 } else { 50 << 20 },
        max_fragment_duration: Duration::from_secs(if flags & 16 != 0 { 1 } else { 10 }),
        max_tracks: 3,
        require_frames_for_every_track: flags & 8 == 0,
    };
    let report_blocks = flags & 32 != 0;
    let (whole_events, whole) = run(&limits, report_blocks, &[body]);
    let (chunked_events, chunked) = run(&limits, report_blocks, &chunks(flags, body));
    assert_eq!(whole, chunked, "chunking changed the verdict");
    let a: Vec<String> = whole_events.iter().map(summary).collect();
    let b: Vec<String> = chunked_events.iter().map(summary).collect();
    assert_eq!(a, b, "chunking changed the events");
    for e in &whole_events {
        if let Event::FragmentCompleted(f) = e {
            assert!(f.bytes.len() <= body.len());
            assert!(
                f.bytes.starts_with(&[0x1F, 0x43, 0xB6, 0x75])
                    || f.bytes.starts_with(&[0x12, 0x54, 0xC3, 0x67]),
                "fragment does not start with a Cluster or Tags"
            );
            assert!(f.first_frame <= f.last_frame);
        }
    }
});
