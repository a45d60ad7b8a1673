//! The element's statistics: the `stats` property and the `kvssink-metrics` message (the same
//! structure under another name), built from one [`Stats`] per element.
//!
//! [`Stats`] lives as long as the element, so its counters never go back, also across stops
//! and starts. The element (frames per pad, the stream's phase, the uploader's events) and the
//! uploader itself ([`UploadStats`]) write it; any thread reads it with [`Stats::structure`],
//! which copies values and never waits for the stream.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::upload::stats::{Link, UploadSnapshot, UploadStats};

/// What the element does with its stream, beside the uploader's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Phase {
    Stopped = 0,
    Running = 1,
    Stopping = 2,
    Error = 3,
}

impl Phase {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Phase::Running,
            2 => Phase::Stopping,
            3 => Phase::Error,
            _ => Phase::Stopped,
        }
    }
}

/// Counters of one sink pad.
#[derive(Debug)]
pub(crate) struct TrackStats {
    pad: String,
    frames_in: AtomicU64,
    /// Frames dropped in earlier streams.
    dropped_before: AtomicU64,
    /// Frames dropped in the current stream (the media core's count).
    dropped_now: AtomicU64,
}

impl TrackStats {
    pub(crate) fn frame_in(&self) {
        self.frames_in.fetch_add(1, Ordering::Relaxed);
    }

    /// The current stream's count of this track's dropped frames.
    pub(crate) fn set_dropped(&self, n: u64) {
        self.dropped_now.fetch_max(n, Ordering::Relaxed);
    }

    fn new_stream(&self) {
        let now = self.dropped_now.swap(0, Ordering::Relaxed);
        self.dropped_before.fetch_add(now, Ordering::Relaxed);
    }

    fn dropped(&self) -> u64 {
        self.dropped_before.load(Ordering::Relaxed) + self.dropped_now.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
pub(crate) struct Stats {
    phase: AtomicU8,
    pub(crate) upload: Arc<UploadStats>,
    /// The element's pads, in the order they were requested.
    tracks: Mutex<Vec<Arc<TrackStats>>>,
    fragments_dropped: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            phase: AtomicU8::new(Phase::Stopped as u8),
            upload: Arc::default(),
            tracks: Mutex::default(),
            fragments_dropped: AtomicU64::new(0),
        }
    }
}

impl Stats {
    fn set(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::SeqCst);
    }

    fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::SeqCst))
    }

    /// The counters of a new pad named `pad`.
    pub(crate) fn track(&self, pad: &str) -> Arc<TrackStats> {
        let t = Arc::new(TrackStats {
            pad: pad.to_owned(),
            frames_in: AtomicU64::new(0),
            dropped_before: AtomicU64::new(0),
            dropped_now: AtomicU64::new(0),
        });
        self.tracks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(t.clone());
        t
    }

    /// A released pad's counters go away with it.
    pub(crate) fn forget_track(&self, track: &Arc<TrackStats>) {
        self.tracks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|t| !Arc::ptr_eq(t, track));
    }

    /// READY→PAUSED: a stream starts (timecode scale in ms, `storage-size` in bytes).
    pub(crate) fn start_stream(&self, scale_ms: u64, storage_bytes: u64) {
        for t in self.tracks.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            t.new_stream();
        }
        self.upload.start_stream(scale_ms, storage_bytes);
        self.set(Phase::Running);
    }

    /// The stream goes on (after a flush); an error stays the state.
    pub(crate) fn running(&self) {
        if self.phase() != Phase::Error {
            self.set(Phase::Running);
        }
    }

    /// EOS or a stop: what was accepted is being confirmed.
    pub(crate) fn stopping(&self) {
        let _ = self.phase.compare_exchange(
            Phase::Running as u8,
            Phase::Stopping as u8,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }

    /// The upload finished after EOS (an error stays the state).
    pub(crate) fn finished(&self) {
        if self.phase() != Phase::Error {
            self.set(Phase::Stopped);
        }
    }

    /// PAUSED→READY is done.
    pub(crate) fn stopped(&self) {
        self.set(Phase::Stopped);
    }

    /// The stream failed for good.
    pub(crate) fn failed(&self, message: &str) {
        self.upload.error(message);
        self.set(Phase::Error);
    }

    /// A fragment was dropped; returns how many so far.
    pub(crate) fn fragment_dropped(&self, timecode: u64) -> u64 {
        self.upload.dropped(timecode);
        self.fragments_dropped.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn state(&self, u: &UploadSnapshot) -> &'static str {
        match self.phase() {
            Phase::Stopped => "stopped",
            Phase::Error => "error",
            Phase::Stopping => "stopping",
            Phase::Running => match u.link {
                Link::SettingUp => "setting-up",
                Link::Reconnecting => "reconnecting",
                Link::Streaming if u.stalled => "stalled",
                Link::Streaming => "streaming",
            },
        }
    }

    /// Everything, as a structure named `name` (`kvssink-stats`, `kvssink-metrics`); the fields
    /// are listed in the README (*Statistics*).
    pub(crate) fn structure(&self, name: &str, stream_name: &str) -> gst::Structure {
        let u = self.upload.snapshot();
        let tracks: Vec<Arc<TrackStats>> = self
            .tracks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut s = gst::Structure::builder(name)
            .field("stream-name", stream_name)
            .field("state", self.state(&u));
        for t in &tracks {
            s = s
                .field(
                    format!("{}-frames-in", t.pad),
                    t.frames_in.load(Ordering::Relaxed),
                )
                .field(format!("{}-frames-dropped", t.pad), t.dropped());
        }
        let storage_used = if u.storage_bytes == 0 {
            0.0
        } else {
            u.buffered_bytes as f64 * 100.0 / u.storage_bytes as f64
        };
        s.field("fragments-built", u.fragments_built)
            .field("fragments-sent", u.fragments_sent)
            .field("fragments-persisted", u.fragments_persisted)
            .field(
                "fragments-dropped",
                self.fragments_dropped.load(Ordering::SeqCst),
            )
            .field("persisted-duration-ms", u.persisted_duration_ms)
            .field("bytes-sent", u.bytes_sent)
            .field("buffered-bytes", u.buffered_bytes)
            .field("buffered-duration-ms", u.buffered_duration_ms)
            .field("storage-used-percent", storage_used)
            .field("sessions", u.sessions)
            .field("reconnects", u.reconnects)
            .field("error-acks", u.error_acks)
            .field("last-error", u.last_error)
            .field("frame-latency-ms-p50", u.frame_latency_ms.0)
            .field("frame-latency-ms-p99", u.frame_latency_ms.1)
            .field("persist-latency-ms-p50", u.persist_latency_ms.0)
            .field("persist-latency-ms-p99", u.persist_latency_ms.1)
            .field("uplink-bitrate-bps", u.send_rate_bps)
            .build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_follows_the_phase_and_the_connection() {
        gst::init().unwrap();
        let s = Stats::default();
        let state = |s: &Stats| {
            s.structure("kvssink-stats", "x")
                .get::<String>("state")
                .unwrap()
        };
        assert_eq!(state(&s), "stopped");
        s.start_stream(1, 1 << 20);
        assert_eq!(state(&s), "setting-up");
        s.upload.connected();
        assert_eq!(state(&s), "streaming");
        s.upload.retrying("reset");
        assert_eq!(state(&s), "reconnecting");
        s.stopping();
        assert_eq!(state(&s), "stopping");
        s.finished();
        assert_eq!(state(&s), "stopped");
        s.start_stream(1, 1 << 20);
        s.failed("denied");
        s.finished();
        assert_eq!(state(&s), "error");
        let st = s.structure("kvssink-stats", "x");
        assert_eq!(st.get::<String>("last-error").unwrap(), "denied");
    }

    #[test]
    fn track_counters_add_up_across_streams() {
        gst::init().unwrap();
        let s = Stats::default();
        let v = s.track("video_0");
        s.start_stream(1, 100);
        v.frame_in();
        v.set_dropped(2);
        s.start_stream(1, 100);
        v.set_dropped(1);
        let st = s.structure("kvssink-stats", "x");
        assert_eq!(st.get::<u64>("video_0-frames-in").unwrap(), 1);
        assert_eq!(st.get::<u64>("video_0-frames-dropped").unwrap(), 3);
        assert_eq!(st.name(), "kvssink-stats");
        assert_eq!(st.get::<String>("stream-name").unwrap(), "x");
        s.forget_track(&v);
        assert!(
            !s.structure("kvssink-stats", "x")
                .has_field("video_0-frames-in")
        );
    }
}
