//! Buffer timestamps → KVS timestamps: every mode of the reference (docs/kvs-protocol.md §1.4), plus
//! the repairs that make real sources (RTSP cameras, A/V pipelines) work instead of failing.
//!
//! Input is a buffer's PTS/DTS in nanoseconds (running time, or raw buffer times when the element
//! does no clipping: that conversion is the element's, it needs the GStreamer segment). Output
//! ([`Stamped`]) is in nanoseconds on the KVS time axis; [`Timecodes`] turns that into Matroska
//! timecodes (`timecode-scale`, absolute or relative fragment times).
//!
//! ## Modes
//! | settings | PTS out |
//! |---|---|
//! | realtime / near-realtime (default) | `pts + (wall clock at the first buffer − first buffer's timestamp)`; one offset for all tracks, so A/V sync is kept |
//! | `use-original-pts=true` | the buffer's PTS as is (epoch ns); DTS when the PTS is missing |
//! | offline | `pts + file-start-time × 10⁹` |
//! | `frame-timecodes=false` | the wall clock when the buffer arrives |
//!
//! DTS gets the same offset as the PTS (the reference leaves it as running time; we only use it to
//! order frames, and one time axis is easier to reason about). Deviation from the reference:
//! `use-original-pts` uses the PTS (the reference copies the DTS into the PTS, which breaks
//! B-frames and is garbage when the DTS is missing).
//!
//! ## Repairs (never fatal; each is counted in [`TimelineStats`] and logged)
//! - **Missing DTS** → DTS = PTS. **Missing PTS** → PTS = DTS. Both missing → previous + the
//!   buffer's duration (or the track's last frame interval, or 2 ms as the reference).
//! - **DTS not increasing** (within a track: going backwards, repeated, or less than one timecode
//!   unit after the previous) → the previous DTS plus one timecode unit ([`TimelineConfig::
//!   min_dts_step_ns`]). **PTS < DTS** → PTS raised to the DTS. So per track the DTS strictly
//!   increases on the Matroska time axis and PTS ≥ DTS, which the interleaver, the fragmenter and
//!   every reader of the stored file (ffmpeg refuses equal timestamps) rely on.
//! - **Timestamp jump** (RTSP reconnect that restarts timestamps, camera clock reset): a step of
//!   the DTS that differs from the expected step by more than `jump_threshold` (default 10 s).
//!   The expected step is the wall-clock time since the track's previous buffer in realtime mode,
//!   so a real outage (timestamps and wall clock both advance) is *not* a jump. A jump re-anchors
//!   the offset so the track continues where the wall clock says (realtime) or one frame interval
//!   after its previous frame (offline / original PTS); in offline / original-PTS mode a forward
//!   gap is kept (it is real media time), only a backward jump is re-anchored. Either way the
//!   frame is marked [`Stamped::discontinuity`] and the fragmenter starts a new fragment at the
//!   next key frame.

use std::time::{SystemTime, UNIX_EPOCH};

/// Largest timestamp KVS accepts: `INT64_MAX / 100` in 100 ns units, in ns.
pub const MAX_TIMESTAMP_NS: u64 = (i64::MAX / 100) as u64 * 100;

/// The reference's `DEFAULT_FRAME_DURATION_MS` (2 ms), used when nothing better is known.
pub const DEFAULT_FRAME_DURATION_NS: u64 = 2_000_000;

/// Default jump threshold.
pub const DEFAULT_JUMP_THRESHOLD_NS: u64 = 10_000_000_000;

/// Wall clock in nanoseconds since the Unix epoch; injectable for tests.
pub trait WallClock: Send + Sync {
    fn now_ns(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now_ns(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    }
}

/// How timestamps are produced (from the element's properties).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineConfig {
    /// `streaming-type=offline`.
    pub offline: bool,
    /// `file-start-time`, seconds since the epoch (offline only; 0 = none).
    pub file_start_time_s: u64,
    /// `use-original-pts`.
    pub use_original_pts: bool,
    /// `frame-timecodes`; false = stamp frames with the wall clock.
    pub frame_timecodes: bool,
    /// See the module docs.
    pub jump_threshold_ns: u64,
    /// The smallest DTS step within a track: one Matroska timecode unit (`timecode-scale`),
    /// so two frames of a track never share a timecode.
    pub min_dts_step_ns: u64,
}

impl Default for TimelineConfig {
    fn default() -> Self {
        Self {
            offline: false,
            file_start_time_s: 0,
            use_original_pts: false,
            frame_timecodes: true,
            jump_threshold_ns: DEFAULT_JUMP_THRESHOLD_NS,
            min_dts_step_ns: 1_000_000,
        }
    }
}

/// A buffer's timestamps (ns).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RawTimes {
    pub pts: Option<u64>,
    pub dts: Option<u64>,
    pub duration: Option<u64>,
}

/// Timestamps on the KVS axis (ns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamped {
    pub pts: u64,
    pub dts: u64,
    /// The buffer's duration, or the track's last frame interval.
    pub duration: u64,
    /// A jump was repaired at this frame: start a new fragment at the next key frame.
    pub discontinuity: bool,
}

/// Counters of what was repaired.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimelineStats {
    pub dts_missing: u64,
    pub pts_missing: u64,
    pub both_missing: u64,
    pub dts_backwards: u64,
    /// DTS equal to the previous one or less than a timecode unit after it.
    pub dts_too_close: u64,
    pub pts_below_dts: u64,
    pub jumps: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct TrackState {
    last_pts: Option<u64>,
    last_dts: Option<u64>,
    /// Wall clock when the previous buffer was stamped.
    last_wall: u64,
    /// Last positive DTS step.
    interval: Option<u64>,
}

/// Maps buffer timestamps of all tracks of one stream onto the KVS time axis.
pub struct Timeline {
    cfg: TimelineConfig,
    clock: Box<dyn WallClock>,
    /// `out = in + offset`; set at the first buffer (realtime) or from the config.
    offset: Option<i128>,
    tracks: Vec<TrackState>,
    stats: TimelineStats,
}

impl std::fmt::Debug for Timeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timeline")
            .field("cfg", &self.cfg)
            .field("offset", &self.offset)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

fn clamp_ns(v: i128) -> u64 {
    v.clamp(0, i128::from(MAX_TIMESTAMP_NS)) as u64
}

fn ms(ns: i128) -> f64 {
    ns as f64 / 1e6
}

impl Timeline {
    pub fn new(cfg: TimelineConfig, clock: Box<dyn WallClock>) -> Self {
        let offset = if cfg.use_original_pts || !cfg.frame_timecodes {
            Some(0)
        } else if cfg.offline {
            Some(i128::from(cfg.file_start_time_s) * 1_000_000_000)
        } else {
            None
        };
        Self {
            cfg,
            clock,
            offset,
            tracks: Vec::new(),
            stats: TimelineStats::default(),
        }
    }

    pub fn stats(&self) -> TimelineStats {
        self.stats
    }

    pub fn config(&self) -> &TimelineConfig {
        &self.cfg
    }

    /// The wall clock stamps are taken from (ns since the epoch).
    pub fn now_ns(&self) -> u64 {
        self.clock.now_ns()
    }

    /// Whether jumps are judged against the wall clock.
    fn wall_mapped(&self) -> bool {
        !self.cfg.offline && !self.cfg.use_original_pts && self.cfg.frame_timecodes
    }

    /// Stamps one buffer of `track` (tracks are small indices, created on first use).
    pub fn stamp(&mut self, track: usize, raw: RawTimes) -> Stamped {
        if self.tracks.len() <= track {
            self.tracks.resize(track + 1, TrackState::default());
        }
        let now = self.clock.now_ns();
        let st = self.tracks[track];
        let est = raw
            .duration
            .filter(|&d| d > 0)
            .or(st.interval)
            .unwrap_or(DEFAULT_FRAME_DURATION_NS);

        let (mut pts, mut dts, mut discontinuity) = if !self.cfg.frame_timecodes {
            (i128::from(now), i128::from(now), false)
        } else {
            match (raw.pts, raw.dts) {
                (None, None) => {
                    self.stats.both_missing += 1;
                    tracing::debug!(
                        "track {track}: buffer without PTS and DTS, using previous + {est} ns"
                    );
                    match (st.last_pts, st.last_dts) {
                        (Some(p), Some(d)) => (
                            i128::from(p) + i128::from(est),
                            i128::from(d) + i128::from(est),
                            false,
                        ),
                        _ => {
                            // First buffer of the track: the wall clock (realtime) or the
                            // configured start.
                            let base = self.offset.unwrap_or(i128::from(now));
                            let t = if self.wall_mapped() {
                                i128::from(now)
                            } else {
                                base
                            };
                            if self.offset.is_none() {
                                self.offset = Some(t);
                            }
                            (t, t, false)
                        }
                    }
                }
                (pts_in, dts_in) => {
                    if pts_in.is_none() {
                        self.stats.pts_missing += 1;
                        tracing::debug!("track {track}: buffer without PTS, using its DTS");
                    }
                    if dts_in.is_none() {
                        self.stats.dts_missing += 1;
                        tracing::trace!("track {track}: buffer without DTS, using its PTS");
                    }
                    let p_in = i128::from(pts_in.or(dts_in).unwrap_or_default());
                    let d_in = i128::from(dts_in.or(pts_in).unwrap_or_default());
                    let offset = *self.offset.get_or_insert_with(|| {
                        let o = i128::from(now) - d_in.min(p_in);
                        tracing::debug!(
                            "first buffer: timestamp {} ns maps to wall clock {now} ns",
                            d_in.min(p_in)
                        );
                        o
                    });
                    let (mut p, mut d) = (p_in + offset, d_in + offset);
                    let mut disc = false;
                    if let Some(last_dts) = st.last_dts {
                        let step = d - i128::from(last_dts);
                        let threshold = i128::from(self.cfg.jump_threshold_ns);
                        if self.wall_mapped() {
                            let expected = i128::from(now.saturating_sub(st.last_wall));
                            if (step - expected).abs() > threshold {
                                let target = i128::from(last_dts) + expected.max(1);
                                let fix = target - d;
                                self.apply_jump(track, step, fix);
                                p += fix;
                                d += fix;
                                disc = true;
                            }
                        } else if step < -threshold {
                            let target = i128::from(last_dts) + i128::from(est);
                            let fix = target - d;
                            self.apply_jump(track, step, fix);
                            p += fix;
                            d += fix;
                            disc = true;
                        } else if step > threshold {
                            self.stats.jumps += 1;
                            tracing::info!(
                                "track {track}: timestamps jump forward by {:.1} ms; kept (a gap in the media), a new fragment starts at the next key frame",
                                ms(step)
                            );
                            disc = true;
                        }
                    }
                    (p, d, disc)
                }
            }
        };

        // Per track: DTS strictly increasing by at least a timecode unit, PTS never below DTS.
        if let Some(last_dts) = st.last_dts {
            let min_dts = i128::from(last_dts) + i128::from(self.cfg.min_dts_step_ns.max(1));
            if dts < min_dts {
                if dts < i128::from(last_dts) {
                    self.stats.dts_backwards += 1;
                    tracing::debug!(
                        "track {track}: DTS went back by {:.3} ms; set to the previous DTS + {:.3} ms",
                        ms(i128::from(last_dts) - dts),
                        ms(i128::from(self.cfg.min_dts_step_ns))
                    );
                } else {
                    self.stats.dts_too_close += 1;
                    tracing::debug!(
                        "track {track}: DTS {:.3} ms after the previous one; set to the previous DTS + {:.3} ms",
                        ms(dts - i128::from(last_dts)),
                        ms(i128::from(self.cfg.min_dts_step_ns))
                    );
                }
                dts = min_dts;
            }
        }
        if pts < dts {
            self.stats.pts_below_dts += 1;
            tracing::debug!(
                "track {track}: PTS {:.3} ms below DTS; raised to the DTS",
                ms(dts - pts)
            );
            pts = dts;
        }
        let (pts, dts) = (clamp_ns(pts), clamp_ns(dts));
        if !self.cfg.frame_timecodes {
            discontinuity = false;
        }
        let t = &mut self.tracks[track];
        if let Some(last) = t.last_dts
            && dts > last
            && !discontinuity
        {
            t.interval = Some(dts - last);
        }
        t.last_pts = Some(pts);
        t.last_dts = Some(dts);
        t.last_wall = now;
        Stamped {
            pts,
            dts,
            duration: raw
                .duration
                .filter(|&d| d > 0)
                .or(t.interval)
                .unwrap_or(DEFAULT_FRAME_DURATION_NS),
            discontinuity,
        }
    }

    fn apply_jump(&mut self, track: usize, step: i128, fix: i128) {
        self.stats.jumps += 1;
        if let Some(o) = self.offset.as_mut() {
            *o += fix;
        }
        tracing::warn!(
            "track {track}: timestamps jumped by {:.1} ms (threshold {:.0} ms; RTSP reconnect or clock reset?); re-anchored by {:.1} ms, a new fragment starts at the next key frame",
            ms(step),
            ms(i128::from(self.cfg.jump_threshold_ns)),
            ms(fix)
        );
    }

    /// Maps a bare running time (a GAP event's) onto the KVS axis; None before the first buffer
    /// or when frames are stamped with the wall clock.
    pub fn map(&self, ts: u64) -> Option<u64> {
        if !self.cfg.frame_timecodes {
            return None;
        }
        self.offset.map(|o| clamp_ns(i128::from(ts) + o))
    }

    /// Forgets per-track history (after a flush); the time offset is kept, so a source that
    /// restarts its timestamps is handled as a jump.
    pub fn reset_tracks(&mut self) {
        for t in &mut self.tracks {
            t.last_pts = None;
            t.last_dts = None;
            t.interval = None;
        }
    }
}

/// KVS ns → Matroska timecodes: `timecode-scale` and absolute vs relative fragment times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timecodes {
    scale_ns: u64,
    absolute: bool,
    /// Relative mode: the first cluster's time (ns) is timecode 0.
    origin_ns: Option<u64>,
}

impl Timecodes {
    /// `scale_ns` is clamped to the service's 100 ns .. 1 s.
    pub fn new(scale_ns: u64, absolute: bool) -> Self {
        Self {
            scale_ns: scale_ns.clamp(100, 1_000_000_000),
            absolute,
            origin_ns: None,
        }
    }

    pub fn scale_ns(&self) -> u64 {
        self.scale_ns
    }

    pub fn absolute(&self) -> bool {
        self.absolute
    }

    /// ns → timecode units (floor).
    #[inline]
    pub fn units(&self, ns: u64) -> u64 {
        ns / self.scale_ns
    }

    /// The Cluster Timecode for a cluster whose time base is `units` (absolute units). In
    /// relative mode the first cluster is 0.
    pub fn cluster_timecode(&mut self, units: u64) -> u64 {
        if self.absolute {
            units
        } else {
            let origin = *self.origin_ns.get_or_insert(units);
            units.saturating_sub(origin)
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A clock the test moves by hand.
    #[derive(Clone, Default)]
    pub struct ManualClock(pub Arc<AtomicU64>);

    impl ManualClock {
        pub fn at(ns: u64) -> Self {
            Self(Arc::new(AtomicU64::new(ns)))
        }
        pub fn advance(&self, ns: u64) {
            self.0.fetch_add(ns, Ordering::SeqCst);
        }
    }

    impl WallClock for ManualClock {
        fn now_ns(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    const EPOCH: u64 = 1_700_000_000_000_000_000;
    const MS: u64 = 1_000_000;

    fn t(pts: u64, dts: u64) -> RawTimes {
        RawTimes {
            pts: Some(pts),
            dts: Some(dts),
            duration: None,
        }
    }

    #[test]
    fn realtime_maps_the_first_buffer_to_the_wall_clock_for_all_tracks() {
        let clock = ManualClock::at(EPOCH);
        let mut tl = Timeline::new(TimelineConfig::default(), Box::new(clock.clone()));
        let a = tl.stamp(0, t(5_000 * MS, 5_000 * MS));
        assert_eq!((a.pts, a.dts), (EPOCH, EPOCH));
        clock.advance(40 * MS);
        // Audio with the same running-time base: same offset.
        let b = tl.stamp(1, t(5_020 * MS, 5_020 * MS));
        assert_eq!(b.pts, EPOCH + 20 * MS);
        let c = tl.stamp(0, t(5_040 * MS, 5_040 * MS));
        assert_eq!(c.pts, EPOCH + 40 * MS);
        assert_eq!(c.duration, 40 * MS);
        assert!(!c.discontinuity);
        assert_eq!(tl.stats(), TimelineStats::default());
    }

    #[test]
    fn original_pts_and_offline_modes() {
        let clock = ManualClock::at(EPOCH);
        let cfg = TimelineConfig {
            use_original_pts: true,
            ..Default::default()
        };
        let mut tl = Timeline::new(cfg, Box::new(clock.clone()));
        let s = tl.stamp(0, t(EPOCH + 7, EPOCH + 3));
        assert_eq!((s.pts, s.dts), (EPOCH + 7, EPOCH + 3));

        let cfg = TimelineConfig {
            offline: true,
            file_start_time_s: 1_600_000_000,
            ..Default::default()
        };
        let mut tl = Timeline::new(cfg, Box::new(clock));
        let s = tl.stamp(0, t(2 * MS, 2 * MS));
        assert_eq!(s.pts, 1_600_000_000_000_000_000 + 2 * MS);
    }

    #[test]
    fn frame_timecodes_false_uses_the_wall_clock() {
        let clock = ManualClock::at(EPOCH);
        let cfg = TimelineConfig {
            frame_timecodes: false,
            ..Default::default()
        };
        let mut tl = Timeline::new(cfg, Box::new(clock.clone()));
        assert_eq!(tl.stamp(0, t(0, 0)).pts, EPOCH);
        clock.advance(33 * MS);
        assert_eq!(tl.stamp(0, t(999 * MS, 999 * MS)).pts, EPOCH + 33 * MS);
        // Wall clock stepping back (NTP) does not make DTS decrease: one unit on.
        clock.0.store(EPOCH, Ordering::SeqCst);
        let s = tl.stamp(0, RawTimes::default());
        assert_eq!(s.dts, EPOCH + 34 * MS);
    }

    #[test]
    fn missing_and_backwards_timestamps_are_repaired() {
        let clock = ManualClock::at(EPOCH);
        let cfg = TimelineConfig {
            use_original_pts: true,
            ..Default::default()
        };
        let mut tl = Timeline::new(cfg, Box::new(clock));
        tl.stamp(0, t(100 * MS, 100 * MS));
        tl.stamp(0, t(140 * MS, 140 * MS));
        // No DTS: DTS = PTS.
        let s = tl.stamp(
            0,
            RawTimes {
                pts: Some(180 * MS),
                dts: None,
                duration: None,
            },
        );
        assert_eq!(s.dts, 180 * MS);
        // No timestamps at all: previous + last interval.
        let s = tl.stamp(0, RawTimes::default());
        assert_eq!((s.pts, s.dts), (220 * MS, 220 * MS));
        // DTS backwards: previous + 1 ms; PTS below DTS: raised.
        let s = tl.stamp(0, t(210 * MS, 200 * MS));
        assert_eq!((s.pts, s.dts), (221 * MS, 221 * MS));
        let st = tl.stats();
        assert_eq!(
            (
                st.dts_missing,
                st.both_missing,
                st.dts_backwards,
                st.pts_below_dts,
                st.jumps
            ),
            (1, 1, 1, 1, 0)
        );
    }

    #[test]
    fn two_frames_of_a_track_never_share_a_timecode() {
        let clock = ManualClock::at(EPOCH);
        let mut tl = Timeline::new(TimelineConfig::default(), Box::new(clock.clone()));
        let s = tl.stamp(0, t(100 * MS, 100 * MS));
        // Repeated, and less than a timecode unit later (same millisecond): one unit on.
        let s2 = tl.stamp(0, t(100 * MS, 100 * MS));
        assert_eq!(s2.dts, s.dts + MS);
        let s3 = tl.stamp(0, t(101 * MS + 400_000, 101 * MS + 400_000));
        assert_eq!(s3.dts, s2.dts + MS);
        // Other tracks are not affected; a normal step is kept as it is.
        let a = tl.stamp(1, t(100 * MS, 100 * MS));
        assert_eq!(a.dts, s.dts);
        let s4 = tl.stamp(0, t(140 * MS, 140 * MS));
        assert_eq!(s4.dts - s.dts, 40 * MS);
        assert_eq!(tl.stats().dts_too_close, 2);
        assert_eq!(tl.stats().dts_backwards, 0);
        // A coarser timecode scale is honoured.
        let cfg = TimelineConfig {
            min_dts_step_ns: 10 * MS,
            ..Default::default()
        };
        let mut tl = Timeline::new(cfg, Box::new(clock));
        let a = tl.stamp(0, t(100 * MS, 100 * MS));
        let b = tl.stamp(0, t(105 * MS, 105 * MS));
        assert_eq!(b.dts - a.dts, 10 * MS);
    }

    #[test]
    fn realtime_backward_jump_is_reanchored_to_the_wall_clock() {
        let clock = ManualClock::at(EPOCH);
        let mut tl = Timeline::new(TimelineConfig::default(), Box::new(clock.clone()));
        for i in 0..10u64 {
            tl.stamp(
                0,
                t(3_600_000 * MS + i * 40 * MS, 3_600_000 * MS + i * 40 * MS),
            );
            clock.advance(40 * MS);
        }
        // RTSP reconnect after 5 s of outage: the running time restarts at 0.
        clock.advance(5_000 * MS);
        let s = tl.stamp(0, t(0, 0));
        assert!(s.discontinuity);
        assert_eq!(s.dts, EPOCH + 9 * 40 * MS + 5_040 * MS);
        // The next frames continue from there.
        clock.advance(40 * MS);
        let s2 = tl.stamp(0, t(40 * MS, 40 * MS));
        assert_eq!(s2.dts, s.dts + 40 * MS);
        assert!(!s2.discontinuity);
        assert_eq!(tl.stats().jumps, 1);
    }

    #[test]
    fn realtime_outage_with_continuous_timestamps_is_not_a_jump() {
        let clock = ManualClock::at(EPOCH);
        let mut tl = Timeline::new(TimelineConfig::default(), Box::new(clock.clone()));
        tl.stamp(0, t(0, 0));
        clock.advance(30_000 * MS);
        let s = tl.stamp(0, t(30_000 * MS, 30_000 * MS));
        assert!(!s.discontinuity);
        assert_eq!(s.pts, EPOCH + 30_000 * MS);
    }

    #[test]
    fn offline_gaps_are_kept_and_backward_jumps_continue() {
        let clock = ManualClock::at(EPOCH);
        let cfg = TimelineConfig {
            offline: true,
            file_start_time_s: 1000,
            ..Default::default()
        };
        let base = 1000 * 1_000_000_000;
        let mut tl = Timeline::new(cfg, Box::new(clock));
        tl.stamp(0, t(0, 0));
        tl.stamp(0, t(40 * MS, 40 * MS));
        let s = tl.stamp(0, t(60_000 * MS, 60_000 * MS));
        assert!(s.discontinuity);
        assert_eq!(s.pts, base + 60_000 * MS);
        let s = tl.stamp(0, t(0, 0));
        assert!(s.discontinuity);
        assert_eq!(s.pts, base + 60_000 * MS + 40 * MS);
        assert_eq!(tl.stats().jumps, 2);
    }

    #[test]
    fn timecodes_scale_and_relative_origin() {
        let mut abs = Timecodes::new(1_000_000, true);
        assert_eq!(abs.units(EPOCH + 1_999_999), EPOCH / 1_000_000 + 1);
        assert_eq!(abs.cluster_timecode(5), 5);
        let mut rel = Timecodes::new(10 * MS, false);
        assert_eq!(rel.cluster_timecode(rel.units(EPOCH)), 0);
        assert_eq!(rel.cluster_timecode(rel.units(EPOCH + 2_000 * MS)), 200);
        assert_eq!(Timecodes::new(0, true).scale_ns(), 100);
    }
}
