//! The `kvssink` element implementation: properties, request pads, events, signals and state
//! changes, mapped onto the core (media path in [`super::stream`], uploader in
//! [`crate::upload`]).
//!
//! Locks, in the only order they are ever taken: `state` → `push_lock` → the uploader's own →
//! the statistics' (held for a few field updates; see [`super::stats`]). `settings` and
//! `uploader` (the slot of the running uploader) are leaves: held only to read or swap a value,
//! alone or under any of the others, and no other lock is taken while they are held. Streaming
//! threads never wait on the
//! network with `state` held. They wait in two places, both ended by flush, a state change to
//! READY, pad release and a fatal upload error:
//! - a full store in offline mode: holds `push_lock` (which keeps fragments in order);
//! - non-live input whose pad is ahead of another ([`KvsSink::wait_for_slower_pads`]): waits on
//!   `progress` (with `state`) until the other pad catches up, ends, or makes no progress for
//!   [`NO_PROGRESS_WAIT`]; never when the other pad is fed by the same thread (a demuxer without
//!   queues), which would deadlock.
//!
//! Liveness: each pad's upstream is asked for its latency at its first buffer. A live pipeline
//! gets clock-bounded interleaving (latency + [`LIVE_MARGIN`]) driven by a [`Ticker`]; a non-live
//! one gets back-pressure. See [`crate::media::interleave`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, LazyLock, Mutex, MutexGuard, OnceLock};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use gst::glib;
use gst::glib::subclass::Signal;
use gst::prelude::*;
use gst::subclass::prelude::*;

use super::StreamingType;
use super::fragment_ack::{AckType, FragmentAck, RESULT_OK};
use super::settings::{self, Settings};
use super::stats::{Stats, TrackStats};
use super::stream::{Stream, StreamConfig};
use super::ticker::Ticker;
use crate::logging::{CAT, LogConfig};
use crate::media::codec::TrackType;
use crate::media::interleave::Wait;
use crate::media::muxer::FrameIn;
use crate::upload::ack::AckEvent;
use crate::upload::store::{Dropped, StorePiece};
use crate::upload::{UploadEvent, Uploader};

/// Stopping without EOS gives the upload at most this long to confirm what it has.
const STOP_WITHOUT_EOS_GRACE: Duration = Duration::from_secs(3);

/// Live input: a silent track holds the others at most the pipeline latency plus this. Covers
/// the next frame of the silent track (up to a frame period later in media) and scheduling.
const LIVE_MARGIN: gst::ClockTime = gst::ClockTime::from_mseconds(500);

/// Non-live input: a pad that is ahead stops waiting for a slower one that made no progress for
/// this long (its upstream may wait for something we hold); frames then queue in memory.
const NO_PROGRESS_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PadKind {
    Video,
    Audio,
}

struct SinkPad {
    pad: gst::Pad,
    kind: PadKind,
    eos: bool,
    /// Index in the muxer, once the stream runs.
    track: Option<usize>,
    segment: gst::FormattedSegment<gst::ClockTime>,
    content_type: Option<&'static str>,
    /// Buffers taken (progress seen by pads waiting for this one).
    buffers: u64,
    /// The streaming thread of the last buffer.
    thread: Option<ThreadId>,
    /// From the upstream latency query at the first buffer: live, minimum latency.
    upstream: Option<(bool, gst::ClockTime)>,
    stats: Arc<TrackStats>,
}

#[derive(Default)]
struct State {
    pads: Vec<SinkPad>,
    video_counter: u32,
    audio_counter: u32,
    /// The EOS message is posted once per stream.
    eos_posted: bool,
    phase: Phase,
    /// Wakes the core at its deadlines (live input only; started on first need).
    ticker: Option<Ticker>,
    /// The pipeline latency of the last LATENCY event.
    latency: Option<gst::ClockTime>,
    /// A waiting pad gave up on `(track, its buffer count)`: not waited for again until it moves.
    gave_up_on: Option<(usize, u64)>,
}

/// What exists in each state of the element.
#[derive(Default)]
enum Phase {
    /// NULL: nothing is configured.
    #[default]
    Stopped,
    /// READY: the stream configuration, built from the properties at NULL→READY.
    Ready(Arc<StreamConfig>),
    /// PAUSED and PLAYING: the media path and its uploader.
    Streaming(Box<Stream>),
}

impl Phase {
    fn config(&self) -> Option<&Arc<StreamConfig>> {
        match self {
            Phase::Stopped => None,
            Phase::Ready(config) => Some(config),
            Phase::Streaming(stream) => Some(&stream.config),
        }
    }

    fn stream(&self) -> Option<&Stream> {
        match self {
            Phase::Streaming(stream) => Some(stream),
            _ => None,
        }
    }

    fn stream_mut(&mut self) -> Option<&mut Stream> {
        match self {
            Phase::Streaming(stream) => Some(stream),
            _ => None,
        }
    }
}

impl State {
    fn count(&self, kind: PadKind) -> usize {
        self.pads.iter().filter(|p| p.kind == kind).count()
    }

    fn all_eos(&self) -> bool {
        !self.pads.is_empty() && self.pads.iter().all(|p| p.eos)
    }

    /// How the interleaver waits, from what the pads' upstreams said of liveness and latency.
    fn wait_policy(&self) -> Wait {
        let live = self.pads.iter().filter_map(|p| p.upstream);
        if !live.clone().any(|(live, _)| live) {
            return Wait::UntilData;
        }
        let latency = live
            .map(|(_, min)| min)
            .chain(self.latency)
            .max()
            .unwrap_or(gst::ClockTime::ZERO);
        Wait::Clock {
            bound_ns: (latency + LIVE_MARGIN).nseconds(),
        }
    }

    fn content_type(&self) -> String {
        let mut types: Vec<_> = self
            .pads
            .iter()
            .filter_map(|p| p.content_type.map(|c| (p.kind == PadKind::Audio, c)))
            .collect();
        types.sort();
        types
            .into_iter()
            .map(|(_, c)| c)
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[derive(Default)]
pub struct KvsSink {
    settings: Mutex<Settings>,
    state: Mutex<State>,
    /// Signalled (with `state`) when a pad makes progress or something ends a wait.
    progress: Condvar,
    push_lock: Mutex<()>,
    flushing: AtomicBool,
    /// A fatal upload error happened: buffers are refused.
    failed: AtomicBool,
    /// The uploader of the running stream, reachable without `state` (to unblock it).
    uploader: Mutex<Option<Arc<Uploader>>>,
    dispatch: OnceLock<tracing::Dispatch>,
    /// `get-kvs-metrics`, readable without `settings`.
    post_metrics: AtomicBool,
    stats: Arc<Stats>,
}

/// `value` unless it is a secret that was set.
fn redacted<'a>(value: &'a str, sentinel: &'a str) -> &'a str {
    if value == sentinel || value.is_empty() {
        value
    } else {
        "*****"
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic caught at a pad boundary must not make every later call panic too.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl KvsSink {
    fn dispatch(&self) -> &tracing::Dispatch {
        self.dispatch
            .get_or_init(|| crate::logging::dispatch_for(&*self.obj()))
    }

    fn in_core<R>(&self, f: impl FnOnce() -> R) -> R {
        tracing::dispatcher::with_default(self.dispatch(), f)
    }

    fn sink_chain(
        &self,
        pad: &gst::Pad,
        buffer: gst::Buffer,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        if self.flushing.load(Ordering::SeqCst) {
            return Err(gst::FlowError::Flushing);
        }
        if self.failed.load(Ordering::SeqCst) {
            return Err(gst::FlowError::Error);
        }
        let flags = buffer.flags();
        if flags.intersects(gst::BufferFlags::CORRUPTED | gst::BufferFlags::DECODE_ONLY)
            || (flags.contains(gst::BufferFlags::HEADER) && buffer.pts().is_none())
        {
            gst::debug!(CAT, obj = pad, "Skipping buffer with flags {:?}", flags);
            return Ok(gst::FlowSuccess::Ok);
        }

        self.learn_liveness(pad);
        let mut state = lock(&self.state);
        let clip = !state
            .phase
            .config()
            .is_some_and(|c| c.disable_buffer_clipping);
        let Some(p) = state.pads.iter_mut().find(|p| &p.pad == pad) else {
            return Err(gst::FlowError::Flushing);
        };
        let Some(track) = p.track else {
            return Err(gst::FlowError::Flushing);
        };
        let key = !flags.contains(gst::BufferFlags::DELTA_UNIT);
        let metrics = key && p.kind == PadKind::Video && self.post_metrics.load(Ordering::Relaxed);
        p.buffers += 1;
        p.thread = Some(std::thread::current().id());
        let (pts, dts) = if clip {
            let seg = &p.segment;
            let pts = buffer.pts().and_then(|t| seg.to_running_time(t));
            if buffer.pts().is_some() && pts.is_none() {
                gst::log!(CAT, obj = pad, "Buffer outside the segment, clipped");
                return Ok(gst::FlowSuccess::Ok);
            }
            (pts, buffer.dts().and_then(|t| seg.to_running_time(t)))
        } else {
            (buffer.pts(), buffer.dts())
        };
        p.stats.frame_in();
        let Some(stream) = state.phase.stream_mut() else {
            return Err(gst::FlowError::Flushing);
        };
        let map = buffer.map_readable().map_err(|_| {
            gst::element_imp_error!(self, gst::StreamError::Failed, ("Cannot read a buffer"));
            gst::FlowError::Error
        })?;
        let result = self.in_core(|| {
            stream.muxer.push(
                track,
                FrameIn {
                    pts: pts.map(|t| t.nseconds()),
                    dts: dts.map(|t| t.nseconds()),
                    duration: buffer.duration().map(|t| t.nseconds()),
                    key,
                    data: map.as_slice(),
                },
            )
        });
        drop(map);
        if let Err(e) = result {
            let kind = std::mem::discriminant(&e);
            if stream.warned_errors.contains(&kind) {
                gst::debug!(CAT, obj = pad, "Frame dropped: {}", e);
            } else {
                stream.warned_errors.push(kind);
                gst::element_imp_warning!(
                    self,
                    gst::StreamError::Decode,
                    (
                        "A frame on {} could not be used and was dropped: {} (further frames dropped for this reason are logged at debug level)",
                        pad.name(),
                        e
                    )
                );
            }
        }
        self.report_media_drops(stream);
        self.core_changed(&state);
        self.push_out(state)?;
        if metrics {
            self.post_metrics_message();
        }
        self.wait_for_slower_pads(pad)?;
        Ok(gst::FlowSuccess::Ok)
    }

    /// The `stats` structure, named `name`.
    fn stats_structure(&self, name: &str) -> gst::Structure {
        let stream_name = lock(&self.settings).stream_name.clone();
        self.stats.structure(name, &stream_name)
    }

    /// `get-kvs-metrics=true`: the statistics as a `kvssink-metrics` element message, where the
    /// reference emits `stream-client-metric`.
    fn post_metrics_message(&self) {
        let obj = self.obj();
        let s = self.stats_structure("kvssink-metrics");
        let _ = obj.post_message(gst::message::Element::builder(s).src(&*obj).build());
    }

    /// At a pad's first buffer: asks its upstream whether it is live and its latency, and sets
    /// how the interleaver waits.
    fn learn_liveness(&self, pad: &gst::Pad) {
        let known = lock(&self.state)
            .pads
            .iter()
            .find(|p| &p.pad == pad)
            .is_none_or(|p| p.upstream.is_some());
        if known {
            return;
        }
        let mut q = gst::query::Latency::new();
        let upstream = if pad.peer_query(&mut q) {
            let (live, min, _) = q.result();
            (live, min)
        } else {
            (false, gst::ClockTime::ZERO)
        };
        gst::debug!(
            CAT,
            obj = pad,
            "Upstream live: {}, minimum latency {}",
            upstream.0,
            upstream.1
        );
        let mut state = lock(&self.state);
        if let Some(p) = state.pads.iter_mut().find(|p| &p.pad == pad) {
            p.upstream = Some(upstream);
        }
        self.apply_wait_policy(&mut state);
    }

    /// Gives the muxer the waiting policy the pads' upstreams call for; live input gets a ticker.
    fn apply_wait_policy(&self, state: &mut State) {
        let wait = state.wait_policy();
        let Some(stream) = state.phase.stream_mut() else {
            return;
        };
        if let Wait::Clock { bound_ns } = wait
            && state.ticker.is_none()
        {
            gst::info!(
                CAT,
                imp = self,
                "Live input: a silent track holds the others at most {} ms",
                bound_ns / 1_000_000
            );
            let weak = self.obj().downgrade();
            state.ticker = Some(Ticker::start(move || {
                if let Some(obj) = weak.upgrade() {
                    obj.imp().on_tick();
                }
            }));
        }
        self.in_core(|| stream.muxer.set_wait(wait));
        self.core_changed(state);
    }

    /// A deadline of the core passed: release what may leave.
    fn on_tick(&self) {
        let mut state = lock(&self.state);
        let Some(stream) = state.phase.stream_mut() else {
            return;
        };
        self.in_core(|| stream.muxer.tick());
        self.report_media_drops(stream);
        self.core_changed(&state);
        let _ = self.push_out(state);
    }

    /// After anything that may change what the core waits for: wake waiting pads, move the
    /// ticker's deadline.
    fn core_changed(&self, state: &State) {
        if let (Some(ticker), Some(stream)) = (&state.ticker, state.phase.stream()) {
            ticker.set(stream.muxer.next_deadline());
        }
        Self::count_track_drops(state);
        self.progress.notify_all();
    }

    /// Each pad's frames dropped by the media core, into its counters.
    fn count_track_drops(state: &State) {
        let Some(stream) = state.phase.stream() else {
            return;
        };
        for p in &state.pads {
            if let Some(t) = p.track {
                p.stats.set_dropped(stream.muxer.track_dropped(t));
            }
        }
    }

    /// Wakes every wait of a streaming thread in this element (flush, state change, failure).
    fn release_waits(&self) {
        if let Some(u) = lock(&self.uploader).as_ref() {
            u.unblock();
        }
        self.wake_waiting_pads();
    }

    fn wake_waiting_pads(&self) {
        // Taking `state` orders this after a waiter's checks: it is either before them or waiting.
        let _state = lock(&self.state);
        self.progress.notify_all();
    }

    /// Non-live input: while `pad`'s track is ahead of another pad's, its streaming thread waits
    /// for that pad to catch up (see the module docs).
    fn wait_for_slower_pads(&self, pad: &gst::Pad) -> Result<(), gst::FlowError> {
        let me = std::thread::current().id();
        let mut state = lock(&self.state);
        let mut watched: Option<((usize, u64), Instant)> = None;
        loop {
            if self.flushing.load(Ordering::SeqCst) {
                return Err(gst::FlowError::Flushing);
            }
            if self.failed.load(Ordering::SeqCst) {
                return Err(gst::FlowError::Error);
            }
            let Some(track) = state
                .pads
                .iter()
                .find(|p| &p.pad == pad)
                .and_then(|p| p.track)
            else {
                return Ok(());
            };
            let Some(other) = state.phase.stream().and_then(|s| s.muxer.waits_for(track)) else {
                return Ok(());
            };
            let Some(slower) = state.pads.iter().find(|p| p.track == Some(other)) else {
                return Ok(());
            };
            if slower.thread == Some(me) {
                // One thread feeds both pads (a demuxer without queues): it cannot catch up
                // while we wait.
                return Ok(());
            }
            let mark = (other, slower.buffers);
            if state.gave_up_on == Some(mark) {
                return Ok(());
            }
            let since = match watched {
                Some((m, since)) if m == mark => since,
                _ => {
                    gst::log!(CAT, obj = pad, "Ahead of {}: waiting", slower.pad.name());
                    watched = Some((mark, Instant::now()));
                    Instant::now()
                }
            };
            let left = NO_PROGRESS_WAIT.saturating_sub(since.elapsed());
            if left.is_zero() {
                gst::info!(
                    CAT,
                    obj = pad,
                    "{} sent nothing for {:?} while this pad is ahead: not waiting for it until it does (frames queue in memory meanwhile)",
                    slower.pad.name(),
                    NO_PROGRESS_WAIT
                );
                state.gave_up_on = Some(mark);
                return Ok(());
            }
            state = match self.progress.wait_timeout(state, left) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }

    /// Every frame the media path drops is counted in the core's stats; the first drop of each
    /// reason is a warning naming it, later ones are logged.
    fn report_media_drops(&self, stream: &mut Stream) {
        let now = stream.muxer.stats();
        if now.dropped() == stream.reported_drops.dropped() {
            return;
        }
        let before = stream.reported_drops.drops();
        for (i, (reason, n)) in now.drops().into_iter().enumerate() {
            let was = before[i].1;
            if n == was {
                continue;
            }
            if was == 0 {
                gst::element_imp_warning!(
                    self,
                    gst::StreamError::Format,
                    (
                        "kvssink dropped {} frame(s): {}; GST_DEBUG=kvssink-media:4 shows each",
                        n,
                        reason
                    )
                );
            } else {
                gst::debug!(CAT, imp = self, "{} frame(s) dropped so far: {}", n, reason);
            }
        }
        stream.reported_drops = now;
    }

    /// Moves the pieces of fragment the muxer produced (the open fragment's blocks as they are
    /// packed) to the uploader, starting it if needed; releases `state`.
    fn push_out(&self, mut state: MutexGuard<'_, State>) -> Result<(), gst::FlowError> {
        let content_type = state.content_type();
        let Some(stream) = state.phase.stream_mut() else {
            return Ok(());
        };
        let pieces = match self.in_core(|| stream.drain()) {
            Ok(p) => p,
            Err(e) => {
                gst::element_imp_error!(self, gst::ResourceError::Write, ("{}", e));
                return Err(gst::FlowError::Error);
            }
        };
        if pieces.is_empty() {
            return Ok(());
        }
        let uploader = stream.uploader(content_type, || self.event_sink());
        let offline = stream.config.streaming_type == StreamingType::Offline;
        // Without video there are no key frames: metrics come with each fragment instead.
        let metrics = self.post_metrics.load(Ordering::Relaxed)
            && !state.pads.iter().any(|p| p.kind == PadKind::Video)
            && pieces.iter().any(|p| matches!(p, StorePiece::Begin(_)));
        *lock(&self.uploader) = Some(uploader.clone());
        let order = lock(&self.push_lock);
        drop(state);
        for p in pieces {
            let dropped = if offline {
                match uploader.put_blocking(p, || self.flushing.load(Ordering::SeqCst)) {
                    Ok(d) => d,
                    Err(_) => return Err(gst::FlowError::Flushing),
                }
            } else {
                uploader.put(p)
            };
            for d in dropped {
                self.report_drop(&d);
            }
        }
        drop(order);
        if metrics {
            self.post_metrics_message();
        }
        Ok(())
    }

    /// Where the uploader reports to (this element, weakly) and its log dispatcher.
    fn event_sink(&self) -> (crate::upload::EventSink, tracing::Dispatch) {
        let weak = self.obj().downgrade();
        let sink: crate::upload::EventSink = Arc::new(move |ev| {
            if let Some(obj) = weak.upgrade() {
                obj.imp().on_upload_event(ev);
            }
        });
        (sink, self.dispatch().clone())
    }

    fn report_drop(&self, d: &Dropped) {
        let n = self.stats.fragment_dropped(d.timecode);
        let stream_name = lock(&self.settings).stream_name.clone();
        gst::element_imp_warning!(
            self,
            gst::ResourceError::Write,
            (
                "Stream {}: fragment at timecode {} ({} frames, {} units long) dropped: {} ({} dropped so far)",
                stream_name,
                d.timecode,
                d.frames,
                d.duration,
                d.reason.as_str(),
                n
            )
        );
        let obj = self.obj();
        let s = gst::Structure::builder("kvssink-fragment-dropped")
            .field("stream-name", stream_name)
            .field("timecode", d.timecode)
            .field("duration", d.duration)
            .field("frames", d.frames)
            .field("reason", d.reason.as_str())
            .field("dropped-total", n)
            .build();
        let _ = obj.post_message(gst::message::Element::builder(s).src(&*obj).build());
    }

    fn on_upload_event(&self, ev: UploadEvent) {
        let obj = self.obj();
        match ev {
            UploadEvent::Ack { ack, latency } => {
                let ack_type = match ack.event {
                    AckEvent::Buffering => AckType::Buffering,
                    AckEvent::Received => AckType::Received,
                    AckEvent::Persisted => AckType::Persisted,
                    AckEvent::Error => AckType::Error,
                    AckEvent::Idle => return,
                };
                self.stats.upload.ack();
                if ack.event == AckEvent::Error {
                    self.stats.upload.error_ack(&format!(
                        "ERROR ACK for fragment {}: {} ({})",
                        ack.timecode
                            .map(|t| t.to_string())
                            .unwrap_or_else(|| "?".into()),
                        ack.error_id.unwrap_or(0),
                        ack.error_code.as_deref().unwrap_or("")
                    ));
                }
                let c = FragmentAck::new(
                    ack_type,
                    ack.timecode.unwrap_or(0),
                    ack.fragment_number.as_deref().unwrap_or(""),
                    ack.error_id.map(|e| e as u32).unwrap_or(RESULT_OK),
                );
                obj.emit_by_name::<()>(
                    "fragment-ack",
                    &[&(&c as *const FragmentAck as glib::Pointer)],
                );
                let mut s = gst::Structure::builder("kvssink-fragment-ack")
                    .field("event", ack.event.as_str())
                    .field("timecode", ack.timecode.unwrap_or(0))
                    .field(
                        "fragment-number",
                        ack.fragment_number.clone().unwrap_or_default(),
                    );
                if let Some(latency) = latency {
                    s = s.field("latency-us", latency.as_micros() as u64);
                }
                if let Some(id) = ack.error_id {
                    s = s
                        .field("error-id", id)
                        .field("error-code", ack.error_code.clone().unwrap_or_default());
                }
                let _ =
                    obj.post_message(gst::message::Element::builder(s.build()).src(&*obj).build());
            }
            UploadEvent::Dropped(d) => self.report_drop(&d),
            UploadEvent::Retrying { error, delay } => {
                gst::warning!(CAT, imp = self, "{}; retrying in {:?}", error, delay);
            }
            UploadEvent::Connected { endpoint } => {
                gst::info!(CAT, imp = self, "Streaming to {}", endpoint);
                self.stats.upload.connected();
            }
            UploadEvent::Fatal { status, message } => {
                self.stats.failed(&message);
                self.failed.store(true, Ordering::SeqCst);
                self.wake_waiting_pads();
                obj.emit_by_name::<()>("stream-error", &[&u64::from(status)]);
                gst::element_imp_error!(
                    self,
                    gst::ResourceError::Write,
                    ("Upload to Kinesis Video Streams failed: {}", message),
                    ["status 0x{:08x}", status]
                );
            }
            UploadEvent::Finished { unconfirmed } => {
                self.stats.finished();
                if unconfirmed > 0 {
                    gst::element_imp_warning!(
                        self,
                        gst::ResourceError::Write,
                        (
                            "EOS: {} fragment(s) were not confirmed as persisted within stop-stream-timeout",
                            unconfirmed
                        )
                    );
                }
                self.post_eos_once();
            }
        }
    }

    fn post_eos_once(&self) {
        let mut state = lock(&self.state);
        if state.eos_posted {
            return;
        }
        state.eos_posted = true;
        drop(state);
        gst::info!(CAT, imp = self, "Posting EOS");
        let obj = self.obj();
        let _ = obj.post_message(gst::message::Eos::builder().src(&*obj).build());
    }

    fn sink_event(&self, pad: &gst::Pad, event: gst::Event) -> bool {
        use gst::EventView;
        gst::log!(CAT, obj = pad, "Handling event {:?}", event);
        match event.view() {
            EventView::Caps(c) => self.set_caps(pad, c.caps()),
            EventView::Segment(s) => {
                let mut state = lock(&self.state);
                if let Some(p) = state.pads.iter_mut().find(|p| &p.pad == pad) {
                    match s.segment().downcast_ref::<gst::ClockTime>() {
                        Some(seg) => p.segment = seg.clone(),
                        None => {
                            drop(state);
                            gst::element_imp_error!(
                                self,
                                gst::StreamError::Format,
                                ("kvssink needs TIME segments on {}", pad.name())
                            );
                            return false;
                        }
                    }
                }
                true
            }
            EventView::Gap(g) => {
                let (ts, _) = g.get();
                let mut state = lock(&self.state);
                let Some(p) = state.pads.iter().find(|p| &p.pad == pad) else {
                    return true;
                };
                let (track, rt) = (p.track, p.segment.to_running_time(ts));
                if let (Some(track), Some(rt), Some(stream)) = (track, rt, state.phase.stream_mut())
                {
                    let _ = self.in_core(|| stream.muxer.heartbeat(track, rt.nseconds()));
                    self.core_changed(&state);
                    return self.push_out(state).is_ok();
                }
                true
            }
            EventView::Eos(_) => {
                self.pad_eos(pad);
                true
            }
            EventView::FlushStart(_) => {
                self.flushing.store(true, Ordering::SeqCst);
                self.release_waits();
                true
            }
            EventView::FlushStop(_) => {
                let mut state = lock(&self.state);
                if let Some(p) = state.pads.iter_mut().find(|p| &p.pad == pad) {
                    p.eos = false;
                }
                state.eos_posted = false;
                state.gave_up_on = None;
                if let Some(stream) = state.phase.stream_mut() {
                    stream.eos_started = false;
                    self.in_core(|| stream.muxer.flush());
                    // The stream goes on after a flush, also one that followed EOS.
                    self.stats.running();
                }
                self.core_changed(&state);
                self.flushing.store(false, Ordering::SeqCst);
                let _ = self.push_out(state);
                true
            }
            EventView::CustomDownstream(c) => {
                let Some(s) = c.structure().filter(|s| s.name() == "kvs-add-metadata") else {
                    return gst::Pad::event_default(pad, Some(&*self.obj()), event);
                };
                self.add_metadata(s);
                true
            }
            _ => gst::Pad::event_default(pad, Some(&*self.obj()), event),
        }
    }

    fn add_metadata(&self, s: &gst::StructureRef) {
        let (Ok(name), Ok(value), Ok(persist)) = (
            s.get::<String>("name"),
            s.get::<String>("value"),
            s.get::<bool>("persist"),
        ) else {
            gst::element_imp_warning!(
                self,
                gst::StreamError::Format,
                (
                    "kvs-add-metadata event ignored: it needs the fields name (string), value (string) and persist (boolean), got {}",
                    s
                )
            );
            return;
        };
        let mut state = lock(&self.state);
        let Some(stream) = state.phase.stream_mut() else {
            drop(state);
            gst::element_imp_warning!(
                self,
                gst::CoreError::StateChange,
                ("kvs-add-metadata event ignored: the element is not streaming")
            );
            return;
        };
        if let Err(e) = self.in_core(|| stream.muxer.add_metadata(&name, &value, persist)) {
            drop(state);
            gst::element_imp_warning!(
                self,
                gst::StreamError::Format,
                ("Fragment metadata '{}' ignored: {}", name, e)
            );
        }
    }

    fn set_caps(&self, pad: &gst::Pad, caps: &gst::CapsRef) -> bool {
        gst::debug!(CAT, obj = pad, "Caps {}", caps);
        let codec_id = lock(&self.settings).codec_id.clone();
        let info = match self.in_core(|| super::caps::caps_info(caps, &codec_id)) {
            Ok(info) => info,
            Err(e) => {
                gst::element_imp_error!(
                    self,
                    gst::StreamError::Format,
                    ("Cannot use the caps of {}: {}", pad.name(), e),
                    [
                        "Check that the encoder or parser in front of kvssink sends codec_data, or use stream-format=byte-stream"
                    ]
                );
                return false;
            }
        };
        let mut state = lock(&self.state);
        let Some(p) = state.pads.iter_mut().find(|p| &p.pad == pad) else {
            return false;
        };
        p.content_type = Some(info.content_type);
        let track = p.track;
        if let (Some(track), Some(stream)) = (track, state.phase.stream_mut())
            && let Err(e) = self.in_core(|| stream.muxer.set_input(track, info.input))
        {
            drop(state);
            gst::element_imp_error!(
                self,
                gst::StreamError::Format,
                ("Cannot use the caps of {}: {}", pad.name(), e)
            );
            return false;
        }
        true
    }

    /// EOS on one pad: its track is no longer waited for, at once; when every pad is at EOS
    /// the stream ends.
    fn pad_eos(&self, pad: &gst::Pad) {
        let mut state = lock(&self.state);
        let Some(p) = state.pads.iter_mut().find(|p| &p.pad == pad) else {
            return;
        };
        p.eos = true;
        let track = p.track;
        gst::debug!(CAT, obj = pad, "EOS");
        self.end_track(state, track);
    }

    /// A track ended (EOS or its pad released): the others go on without waiting for it.
    fn end_track(&self, mut state: MutexGuard<'_, State>, track: Option<usize>) {
        if let (Some(track), Some(stream)) = (track, state.phase.stream_mut()) {
            let _ = self.in_core(|| stream.muxer.end_of_stream(track));
            self.report_media_drops(stream);
        }
        self.core_changed(&state);
        if state.all_eos() {
            self.maybe_finish(state);
        } else {
            let _ = self.push_out(state);
        }
    }

    /// When every pad is at EOS: close the stream, then post EOS once the upload is confirmed.
    fn maybe_finish(&self, mut state: MutexGuard<'_, State>) {
        if state.phase.stream().is_some_and(|s| s.eos_started) || !state.all_eos() {
            return;
        }
        self.stats.stopping();
        let Some(stream) = state.phase.stream_mut() else {
            drop(state);
            self.post_eos_once();
            return;
        };
        stream.eos_started = true;
        self.in_core(|| stream.muxer.finish());
        let timeout = stream.config.stop_stream_timeout;
        Self::count_track_drops(&state);
        if self.push_out(state).is_err() {
            return;
        }
        let uploader = lock(&self.uploader).clone();
        match uploader {
            Some(u) => {
                gst::info!(
                    CAT,
                    imp = self,
                    "All pads are EOS, waiting for the upload to be confirmed"
                );
                u.finish(Instant::now() + timeout);
            }
            None => {
                self.stats.finished();
                self.post_eos_once();
            }
        }
    }

    fn add_track(&self, state: &mut State, index: usize) {
        let Some(stream) = state.phase.stream_mut() else {
            return;
        };
        let p = &mut state.pads[index];
        if p.track.is_some() {
            return;
        }
        let (kind, name) = match p.kind {
            PadKind::Video => (TrackType::Video, stream.config.track_name.clone()),
            PadKind::Audio => (TrackType::Audio, "audio".to_owned()),
        };
        match self.in_core(|| stream.muxer.add_track(kind, &name)) {
            Ok(t) => p.track = Some(t),
            Err(e) => gst::element_imp_warning!(
                self,
                gst::CoreError::Pad,
                (
                    "Pad {} cannot join a stream that already started: {}",
                    p.pad.name(),
                    e
                )
            ),
        }
        if let (Some(track), Some(caps)) = (p.track, p.pad.current_caps()) {
            let codec_id = stream.config.codec_id.clone();
            if let Ok(info) = super::caps::caps_info(&caps, &codec_id) {
                let _ = stream.muxer.set_input(track, info.input);
            }
        }
    }

    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let settings = lock(&self.settings).clone();
        gst::debug!(CAT, imp = self, "Starting with {:?}", settings);

        match LogConfig::load(&settings.log_config, settings.log_config_explicit) {
            Ok(Some(config)) => {
                if config.skipped_log4cplus_lines > 0 {
                    gst::info!(
                        CAT,
                        imp = self,
                        "log-config '{}': skipped {} log4cplus lines of the C++ SDK's format",
                        settings.log_config,
                        config.skipped_log4cplus_lines
                    );
                }
                config
                    .apply(&settings.log_config)
                    .map_err(|e| gst::error_msg!(gst::LibraryError::Settings, ("{}", e)))?;
            }
            Ok(None) => gst::debug!(
                CAT,
                imp = self,
                "No log-config file at '{}'",
                settings.log_config
            ),
            Err(e) => return Err(gst::error_msg!(gst::LibraryError::Settings, ("{}", e))),
        }

        let env_region = std::env::var("AWS_DEFAULT_REGION").ok();
        let effective = settings
            .validate(env_region.as_deref())
            .map_err(|e| gst::error_msg!(gst::LibraryError::Settings, ("{}", e)))?;
        for w in &effective.warnings {
            gst::warning!(CAT, imp = self, "{}", w);
        }
        let config = StreamConfig::new(&settings, &effective, |k| std::env::var(k).ok())
            .map_err(|e| gst::error_msg!(gst::LibraryError::Init, ("{}", e)))?;
        // As the reference, the credentials are obtained once now, so that a wrong setup fails
        // the start; they are refreshed later by the uploader.
        let credentials = config.upload.credentials.clone();
        gst::info!(
            CAT,
            imp = self,
            "Credentials from {}",
            credentials.source().describe()
        );
        crate::upload::wait_for(async move { credentials.get().await.map(|_| ()) })
            .map_err(|e| gst::error_msg!(gst::LibraryError::Init, ("{}", e)))?;
        lock(&self.state).phase = Phase::Ready(Arc::new(config));
        self.failed.store(false, Ordering::SeqCst);
        Ok(())
    }

    fn start_stream(&self) {
        let mut state = lock(&self.state);
        let Some(config) = state.phase.config().cloned() else {
            return;
        };
        self.stats.start_stream(
            (config.mux.fragmenter.timecode_scale_ns / 1_000_000).max(1),
            config.limits.max_bytes as u64,
        );
        state.phase = Phase::Streaming(Box::new(Stream::new(config, self.stats.upload.clone())));
        state.eos_posted = false;
        state.gave_up_on = None;
        for i in 0..state.pads.len() {
            let p = &mut state.pads[i];
            p.track = None;
            p.eos = false;
            p.buffers = 0;
            p.thread = None;
            p.upstream = None;
            self.add_track(&mut state, i);
        }
        self.flushing.store(false, Ordering::SeqCst);
    }

    /// PAUSED→READY: what was accepted is closed and given a short time to be confirmed.
    fn stop_stream(&self) {
        self.flushing.store(true, Ordering::SeqCst);
        self.release_waits();
        self.stats.stopping();
        let mut state = lock(&self.state);
        state.ticker = None;
        if let Some(stream) = state.phase.stream_mut()
            && !stream.eos_started
        {
            self.in_core(|| stream.muxer.finish());
            let timeout = stream
                .config
                .stop_stream_timeout
                .min(STOP_WITHOUT_EOS_GRACE);
            // Realtime push: never blocks, even in offline mode (the store refuses instead).
            let pieces = self.in_core(|| stream.drain()).unwrap_or_default();
            let content_type = state.content_type();
            Self::count_track_drops(&state);
            if let Some(stream) = state.phase.stream_mut() {
                if !pieces.is_empty() {
                    let uploader = stream.uploader(content_type, || self.event_sink());
                    for p in pieces {
                        for d in uploader.put(p) {
                            self.report_drop(&d);
                        }
                    }
                }
                if let Some(u) = &stream.uploader {
                    u.finish(Instant::now() + timeout);
                }
            }
        }
        let stream = match std::mem::take(&mut state.phase) {
            Phase::Streaming(stream) => {
                state.phase = Phase::Ready(stream.config.clone());
                Some(stream)
            }
            other => {
                state.phase = other;
                None
            }
        };
        drop(state);
        *lock(&self.uploader) = None;
        if let Some(stream) = stream
            && let Some(u) = stream.uploader
        {
            let deadline = Instant::now() + STOP_WITHOUT_EOS_GRACE;
            if !u.join(deadline) {
                let left = u.unconfirmed();
                if left > 0 {
                    gst::element_imp_warning!(
                        self,
                        gst::ResourceError::Write,
                        (
                            "Stopped with {} fragment(s) not confirmed as persisted",
                            left
                        )
                    );
                }
            }
            u.stop();
        }
        self.stats.stopped();
    }

    fn stop(&self) {
        let mut state = lock(&self.state);
        state.phase = Phase::Stopped;
        state.eos_posted = false;
        for p in &mut state.pads {
            p.eos = false;
        }
    }
}

#[glib::object_subclass]
impl ObjectSubclass for KvsSink {
    const NAME: &'static str = "GstRsKvsSink";
    type Type = super::KvsSink;
    type ParentType = gst::Element;
}

fn uint(name: &str, nick: &str, blurb: &str, default: u32) -> glib::ParamSpec {
    glib::ParamSpecUInt::builder(name)
        .nick(nick)
        .blurb(blurb)
        .minimum(0)
        .maximum(u32::MAX)
        .default_value(default)
        .build()
}

fn boolean(name: &str, nick: &str, blurb: &str, default: bool) -> glib::ParamSpec {
    glib::ParamSpecBoolean::builder(name)
        .nick(nick)
        .blurb(blurb)
        .default_value(default)
        .build()
}

fn string(name: &str, nick: &str, blurb: &str, default: Option<&str>) -> glib::ParamSpec {
    glib::ParamSpecString::builder(name)
        .nick(nick)
        .blurb(blurb)
        .default_value(default)
        .build()
}

impl ObjectImpl for KvsSink {
    fn properties() -> &'static [glib::ParamSpec] {
        use settings::*;
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                string("stream-name", "Stream name", "Name of the destination Kinesis Video stream (1-256 of a-z A-Z 0-9 _ . -)", Some(DEFAULT_STREAM_NAME)),
                string("user-agent", "User agent", "Name of the user agent: first token of the HTTP user-agent header (at most 32 characters)", Some(DEFAULT_USER_AGENT_NAME)),
                uint("retention-period", "Retention period", "Length of time the stream is preserved, used when the stream is created. Unit: hours (0 = no retention)", DEFAULT_RETENTION_PERIOD_HOURS),
                glib::ParamSpecEnum::builder_with_default("streaming-type", DEFAULT_STREAMING_TYPE)
                    .nick("Streaming type")
                    .blurb("Streaming type: realtime and near-realtime drop the oldest buffered fragments when storage is full; offline waits for space and keeps the file's timing")
                    .build(),
                string("content-type", "Content type", "Content type of the stream; derived from the caps (e.g. video/h264,audio/aac), so a value set here is ignored as in the reference element", DEFAULT_CONTENT_TYPE),
                uint("max-latency", "Max latency", "Maximum time between a frame being buffered and its upload before the connection is reset (0 = off). Unit: seconds", DEFAULT_MAX_LATENCY_SECONDS),
                uint("fragment-duration", "Fragment duration", "Fragment duration when key-frame-fragmentation=false (1000-30000). Unit: milliseconds", DEFAULT_FRAGMENT_DURATION_MS),
                uint("timecode-scale", "Timecode scale", "Matroska timecode scale (0 = default 1, at most 1000). Unit: milliseconds", DEFAULT_TIMECODE_SCALE_MS),
                boolean("key-frame-fragmentation", "Key-frame fragmentation", "If true, start a new fragment on each key frame; otherwise on the first key frame after fragment-duration has passed", DEFAULT_KEY_FRAME_FRAGMENTATION),
                boolean("frame-timecodes", "Frame timecodes", "Use the buffers' timestamps; if false, frames are stamped with the wall clock when they arrive", DEFAULT_FRAME_TIMECODES),
                boolean("absolute-fragment-times", "Absolute fragment times", "Absolute (epoch) fragment timecodes; if false, relative to the stream start", DEFAULT_ABSOLUTE_FRAGMENT_TIMES),
                boolean("fragment-acks", "Fragment ACKs", "Ask the service for per-fragment acknowledgements", DEFAULT_FRAGMENT_ACKS),
                boolean("restart-on-error", "Restart on error", "Reconnect and resume by itself after recoverable errors", DEFAULT_RESTART_ON_ERROR),
                boolean("recalculate-metrics", "Recalculate metrics", "Recalculate frame-rate and transfer-rate metrics", DEFAULT_RECALCULATE_METRICS),
                uint("framerate", "Framerate", "Expected frame rate, used to size buffers and metrics. Unit: frames per second", DEFAULT_FRAMERATE),
                uint("avg-bandwidth-bps", "Average bandwidth", "Expected average bandwidth, a seed for metrics. Unit: bits per second", DEFAULT_AVG_BANDWIDTH_BPS),
                uint("buffer-duration", "Buffer duration", "How much media is kept until the service confirms it (0 = 20). Unit: seconds", DEFAULT_BUFFER_DURATION_SECONDS),
                uint("replay-duration", "Replay duration", "How far back unconfirmed media is re-sent after a reconnect (at most buffer-duration). Unit: seconds", DEFAULT_REPLAY_DURATION_SECONDS),
                uint("connection-staleness", "Connection staleness", "A connection with no buffering acknowledgement for this long is reset (0 = off). Unit: seconds", DEFAULT_CONNECTION_STALENESS_SECONDS),
                string("codec-id", "Codec ID", "Matroska CodecID of the video track (at most 32 characters); replaced by V_MPEGH/ISO/HEVC for H.265 caps", Some(DEFAULT_CODEC_ID)),
                string("track-name", "Track name", "Name of the video track (at most 32 characters)", Some(DEFAULT_TRACK_NAME)),
                string("access-key", "Access key", "AWS access key ID (\"access_key\" means unset: the environment and other sources are used)", Some(ACCESS_KEY_SENTINEL)),
                string("secret-key", "Secret key", "AWS secret access key (\"secret_key\" means unset)", Some(SECRET_KEY_SENTINEL)),
                string("session-token", "Session token", "AWS session token (\"session_token\" means unset)", Some(SESSION_TOKEN_SENTINEL)),
                string("aws-region", "AWS region", "AWS region of the stream; the environment variable AWS_DEFAULT_REGION overrides it", Some(DEFAULT_REGION)),
                uint("rotation-period", "Rotation period", "Rotation period (unused, as in the reference element: sessions rotate before the service's 45-minute limit). Unit: seconds", DEFAULT_ROTATION_PERIOD_SECONDS),
                string("log-config", "Log configuration", "Path of an optional log configuration file (filter and output; see kvs_log_configuration)", Some(DEFAULT_LOG_CONFIG_PATH)),
                uint("storage-size", "Storage size", "Most memory held for buffered media; allocated as media arrives, not up front. Unit: MB", DEFAULT_STORAGE_SIZE_MB),
                uint("stop-stream-timeout", "Stop stream timeout", "Longest wait at EOS for the service to confirm the last fragment. Unit: seconds", DEFAULT_STOP_STREAM_TIMEOUT_SECONDS),
                uint("connection-timeout", "Connection timeout", "Service call connection timeout. Unit: seconds", DEFAULT_CONNECTION_TIMEOUT_SECONDS),
                uint("completion-timeout", "Completion timeout", "Service call completion timeout for control-plane calls; must be more than connection-timeout, otherwise both are reset to 5 and 10. Unit: seconds", DEFAULT_COMPLETION_TIMEOUT_SECONDS),
                string("credential-path", "Credential file path", "Path of a rotating credential file (CREDENTIALS <access-key> [<expiration>] <secret-key> [<session-token>]); used if it exists", Some(DEFAULT_CREDENTIAL_PATH)),
                glib::ParamSpecBoxed::builder::<gst::Structure>("iot-certificate")
                    .nick("IoT certificate")
                    .blurb("AWS IoT credentials provider: a structure with string fields endpoint, cert-path, key-path, ca-path, role-aliases and optionally iot-thing-name, connection-timeout, completion-timeout")
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stream-tags")
                    .nick("Stream tags")
                    .blurb("Tags set on the stream: a structure of string fields, e.g. tags,team=video,site=north")
                    .build(),
                glib::ParamSpecUInt64::builder("file-start-time")
                    .nick("File start time")
                    .blurb("Epoch time that the file starts in the stream (offline mode). By default, the time the element was created. Unit: seconds")
                    .minimum(0)
                    .maximum(u64::MAX)
                    .default_value(now_epoch_seconds())
                    .build(),
                boolean("disable-buffer-clipping", "Disable buffer clipping", "Use buffer timestamps as they are instead of converting them to running time and clipping them to the segment; only for sources with broken segments", DEFAULT_DISABLE_BUFFER_CLIPPING),
                boolean("use-original-pts", "Use original PTS", "Use the buffers' timestamps as epoch times in nanoseconds instead of mapping them to the wall clock; only for sources that produce epoch timestamps", DEFAULT_USE_ORIGINAL_PTS),
                boolean("get-kvs-metrics", "Get KVS metrics", "Post a kvssink-metrics element message (the fields of stats) on every video key frame; the stream-client-metric signal is not emitted", DEFAULT_GET_KVS_METRICS),
                boolean("allow-create-stream", "Allow create stream", "Create the stream if it does not exist", DEFAULT_ALLOW_CREATE_STREAM),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb("Upload statistics (kvssink-stats): state, frames per pad, fragments built/sent/persisted/dropped, bytes sent, what is buffered, reconnects, errors, latencies, uplink bitrate; see the README")
                    .read_only()
                    .build(),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn signals() -> &'static [Signal] {
        static SIGNALS: LazyLock<Vec<Signal>> = LazyLock::new(|| {
            vec![
                Signal::builder("stream-error")
                    .param_types([u64::static_type()])
                    .run_last()
                    .build(),
                Signal::builder("fragment-ack")
                    .param_types([glib::Type::POINTER])
                    .action()
                    .build(),
                Signal::builder("stream-client-metric")
                    .param_types([glib::Type::POINTER])
                    .action()
                    .build(),
            ]
        });
        SIGNALS.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut s = lock(&self.settings);
        let str_or = |default: &str| -> String {
            value
                .get::<Option<String>>()
                .expect("type checked upstream")
                .unwrap_or_else(|| default.to_owned())
        };
        let u = || value.get::<u32>().expect("type checked upstream");
        let b = || value.get::<bool>().expect("type checked upstream");
        match pspec.name() {
            "stream-name" => s.stream_name = str_or(""),
            "user-agent" => s.user_agent = str_or(""),
            "retention-period" => s.retention_period_hours = u(),
            "streaming-type" => {
                s.streaming_type = value.get::<StreamingType>().expect("type checked upstream")
            }
            "content-type" => {
                s.content_type = value
                    .get::<Option<String>>()
                    .expect("type checked upstream")
            }
            "max-latency" => s.max_latency_seconds = u(),
            "fragment-duration" => s.fragment_duration_ms = u(),
            "timecode-scale" => s.timecode_scale_ms = u(),
            "key-frame-fragmentation" => s.key_frame_fragmentation = b(),
            "frame-timecodes" => s.frame_timecodes = b(),
            "absolute-fragment-times" => s.absolute_fragment_times = b(),
            "fragment-acks" => s.fragment_acks = b(),
            "restart-on-error" => s.restart_on_error = b(),
            "recalculate-metrics" => s.recalculate_metrics = b(),
            "framerate" => s.framerate = u(),
            "avg-bandwidth-bps" => s.avg_bandwidth_bps = u(),
            "buffer-duration" => s.buffer_duration_seconds = u(),
            "replay-duration" => s.replay_duration_seconds = u(),
            "connection-staleness" => s.connection_staleness_seconds = u(),
            "codec-id" => s.codec_id = str_or(""),
            "track-name" => s.track_name = str_or(""),
            "access-key" => s.access_key = str_or(settings::ACCESS_KEY_SENTINEL),
            "secret-key" => s.secret_key = str_or(settings::SECRET_KEY_SENTINEL),
            "session-token" => s.session_token = str_or(settings::SESSION_TOKEN_SENTINEL),
            "aws-region" => s.aws_region = str_or(""),
            "rotation-period" => s.rotation_period_seconds = u(),
            "log-config" => {
                s.log_config = str_or(settings::DEFAULT_LOG_CONFIG_PATH);
                s.log_config_explicit = true;
            }
            "storage-size" => s.storage_size_mb = u(),
            "stop-stream-timeout" => s.stop_stream_timeout_seconds = u(),
            "connection-timeout" => s.connection_timeout_seconds = u(),
            "completion-timeout" => s.completion_timeout_seconds = u(),
            "credential-path" => s.credential_path = str_or(""),
            "iot-certificate" => {
                s.iot_certificate = value
                    .get::<Option<gst::Structure>>()
                    .expect("type checked upstream")
            }
            "stream-tags" => {
                s.stream_tags = value
                    .get::<Option<gst::Structure>>()
                    .expect("type checked upstream")
            }
            "file-start-time" => {
                s.file_start_time = value.get::<u64>().expect("type checked upstream")
            }
            "disable-buffer-clipping" => s.disable_buffer_clipping = b(),
            "use-original-pts" => s.use_original_pts = b(),
            "get-kvs-metrics" => {
                s.get_kvs_metrics = b();
                self.post_metrics
                    .store(s.get_kvs_metrics, Ordering::Relaxed);
            }
            "allow-create-stream" => s.allow_create_stream = b(),
            other => {
                gst::warning!(CAT, imp = self, "Unknown property {}", other);
                return;
            }
        }
        drop(s);
        // Credentials are never logged, not even at trace level.
        if matches!(pspec.name(), "access-key" | "secret-key" | "session-token") {
            gst::debug!(CAT, imp = self, "Set {}", pspec.name());
        } else {
            gst::debug!(CAT, imp = self, "Set {} to {:?}", pspec.name(), value);
        }
        if !matches!(pspec.name(), "use-original-pts" | "get-kvs-metrics")
            && self.obj().current_state() > gst::State::Null
        {
            gst::info!(
                CAT,
                imp = self,
                "{} takes effect at the next NULL→READY state change",
                pspec.name()
            );
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        if pspec.name() == "stats" {
            return self.stats_structure("kvssink-stats").to_value();
        }
        let s = lock(&self.settings);
        match pspec.name() {
            "stream-name" => s.stream_name.to_value(),
            "user-agent" => s.user_agent.to_value(),
            "retention-period" => s.retention_period_hours.to_value(),
            "streaming-type" => s.streaming_type.to_value(),
            "content-type" => s.content_type.to_value(),
            "max-latency" => s.max_latency_seconds.to_value(),
            "fragment-duration" => s.fragment_duration_ms.to_value(),
            "timecode-scale" => s.timecode_scale_ms.to_value(),
            "key-frame-fragmentation" => s.key_frame_fragmentation.to_value(),
            "frame-timecodes" => s.frame_timecodes.to_value(),
            "absolute-fragment-times" => s.absolute_fragment_times.to_value(),
            "fragment-acks" => s.fragment_acks.to_value(),
            "restart-on-error" => s.restart_on_error.to_value(),
            "recalculate-metrics" => s.recalculate_metrics.to_value(),
            "framerate" => s.framerate.to_value(),
            "avg-bandwidth-bps" => s.avg_bandwidth_bps.to_value(),
            "buffer-duration" => s.buffer_duration_seconds.to_value(),
            "replay-duration" => s.replay_duration_seconds.to_value(),
            "connection-staleness" => s.connection_staleness_seconds.to_value(),
            "codec-id" => s.codec_id.to_value(),
            "track-name" => s.track_name.to_value(),
            // The reference returns the stored values; so do we (the application set them).
            "access-key" => s.access_key.to_value(),
            // Secrets are write-only in effect: reading them back (gst-launch -v notify, a UI
            // dumping properties) shows that one is set, never its value.
            "secret-key" => redacted(&s.secret_key, settings::SECRET_KEY_SENTINEL).to_value(),
            "session-token" => {
                redacted(&s.session_token, settings::SESSION_TOKEN_SENTINEL).to_value()
            }
            "aws-region" => s.aws_region.to_value(),
            "rotation-period" => s.rotation_period_seconds.to_value(),
            "log-config" => s.log_config.to_value(),
            "storage-size" => s.storage_size_mb.to_value(),
            "stop-stream-timeout" => s.stop_stream_timeout_seconds.to_value(),
            "connection-timeout" => s.connection_timeout_seconds.to_value(),
            "completion-timeout" => s.completion_timeout_seconds.to_value(),
            "credential-path" => s.credential_path.to_value(),
            "iot-certificate" => s.iot_certificate.to_value(),
            "stream-tags" => s.stream_tags.to_value(),
            "file-start-time" => s.file_start_time.to_value(),
            "disable-buffer-clipping" => s.disable_buffer_clipping.to_value(),
            "use-original-pts" => s.use_original_pts.to_value(),
            "get-kvs-metrics" => s.get_kvs_metrics.to_value(),
            "allow-create-stream" => s.allow_create_stream.to_value(),
            other => {
                gst::warning!(CAT, imp = self, "Unknown property {}", other);
                pspec.default_value().clone()
            }
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        let obj = self.obj();
        obj.set_element_flags(gst::ElementFlags::SINK);
        // Default names follow the GType (`rskvssink0`); applications look the element up as
        // `kvssink0`, the reference's default name.
        let name = obj.name();
        if let Some(n) = name.strip_prefix("rskvssink")
            && n.parse::<u64>().is_ok()
        {
            obj.set_property("name", format!("kvssink{n}"));
        }
    }
}

impl GstObjectImpl for KvsSink {}

impl ElementImpl for KvsSink {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static ELEMENT_METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "KVS Sink",
                "Sink/Video/Network",
                "GStreamer AWS KVS plugin",
                "kvssink-rs developers",
            )
        });
        Some(&*ELEMENT_METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static PAD_TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            vec![
                gst::PadTemplate::new(
                    "audio_%u",
                    gst::PadDirection::Sink,
                    gst::PadPresence::Request,
                    &super::caps::audio_template_caps(),
                )
                .unwrap(),
                gst::PadTemplate::new(
                    "video_%u",
                    gst::PadDirection::Sink,
                    gst::PadPresence::Request,
                    &super::caps::video_template_caps(),
                )
                .unwrap(),
            ]
        });
        PAD_TEMPLATES.as_ref()
    }

    fn request_new_pad(
        &self,
        templ: &gst::PadTemplate,
        name: Option<&str>,
        _caps: Option<&gst::Caps>,
    ) -> Option<gst::Pad> {
        let kind = match templ.name_template() {
            "video_%u" => PadKind::Video,
            "audio_%u" => PadKind::Audio,
            other => {
                gst::warning!(CAT, imp = self, "Unknown pad template {}", other);
                return None;
            }
        };
        let mut state = lock(&self.state);
        if state.count(kind) >= 1 {
            drop(state);
            let what = if kind == PadKind::Video {
                "video"
            } else {
                "audio"
            };
            gst::warning!(
                CAT,
                imp = self,
                "kvssink takes at most one {what} pad; the request for another one is refused"
            );
            gst::element_imp_warning!(
                self,
                gst::CoreError::Pad,
                (
                    "kvssink takes at most one video pad and one audio pad; a further {} pad request was refused",
                    what
                )
            );
            return None;
        }
        let counter = match kind {
            PadKind::Video => &mut state.video_counter,
            PadKind::Audio => &mut state.audio_counter,
        };
        let prefix = if kind == PadKind::Video {
            "video"
        } else {
            "audio"
        };
        let pad_name = format!("{prefix}_{}", *counter);
        *counter += 1;
        if let Some(requested) = name.filter(|n| *n != pad_name && !n.contains('%')) {
            gst::warning!(
                CAT,
                imp = self,
                "Custom pad name {} is ignored, the pad is named {}",
                requested,
                pad_name
            );
        }

        let pad = gst::Pad::builder_from_template(templ)
            .name(pad_name.as_str())
            .chain_function(|pad, parent, buffer| {
                KvsSink::catch_panic_pad_function(
                    parent,
                    || Err(gst::FlowError::Error),
                    |imp| imp.sink_chain(pad, buffer),
                )
            })
            .event_function(|pad, parent, event| {
                KvsSink::catch_panic_pad_function(
                    parent,
                    || false,
                    |imp| imp.sink_event(pad, event),
                )
            })
            // Caps that leave out what the template narrows (width and height, as from
            // rtph264depay) are accepted: the size is read from the SPS.
            .flags(gst::PadFlags::ACCEPT_INTERSECT)
            .build();
        state.pads.push(SinkPad {
            pad: pad.clone(),
            kind,
            eos: false,
            track: None,
            segment: gst::FormattedSegment::new(),
            content_type: None,
            buffers: 0,
            thread: None,
            upstream: None,
            stats: self.stats.track(&pad_name),
        });
        let index = state.pads.len() - 1;
        self.add_track(&mut state, index);
        drop(state);

        if let Err(e) = self.obj().add_pad(&pad) {
            gst::warning!(CAT, imp = self, "Failed to add pad {}: {}", pad_name, e);
            lock(&self.state).pads.retain(|p| p.pad != pad);
            return None;
        }
        gst::debug!(CAT, imp = self, "Added pad {}", pad_name);
        Some(pad)
    }

    /// Upstream events sent to the element (a seek, the bin's LATENCY) go up every pad, so
    /// that all branches seek together; true if one took it. LATENCY also bounds the wait for
    /// a silent live track.
    fn send_event(&self, event: gst::Event) -> bool {
        if !event.is_upstream() {
            return self.parent_send_event(event);
        }
        let mut state = lock(&self.state);
        if let gst::EventView::Latency(l) = event.view() {
            state.latency = Some(l.latency());
            self.apply_wait_policy(&mut state);
        }
        let pads: Vec<gst::Pad> = state.pads.iter().map(|p| p.pad.clone()).collect();
        drop(state);
        // Every pad gets it (no short circuit).
        pads.iter()
            .map(|pad| pad.push_event(event.clone()))
            .fold(false, |any, ok| any | ok)
    }

    /// LATENCY: what every pad's upstream needs, combined as an aggregator does (live if any
    /// is; the largest minimum, the smallest maximum of the live ones).
    fn query(&self, query: &mut gst::QueryRef) -> bool {
        let gst::QueryViewMut::Latency(q) = query.view_mut() else {
            return self.parent_query(query);
        };
        let pads: Vec<gst::Pad> = lock(&self.state)
            .pads
            .iter()
            .map(|p| p.pad.clone())
            .collect();
        let (mut answered, mut live) = (false, false);
        let (mut min, mut max) = (gst::ClockTime::ZERO, None::<gst::ClockTime>);
        for pad in pads {
            let mut pq = gst::query::Latency::new();
            if !pad.peer_query(&mut pq) {
                continue;
            }
            answered = true;
            let (l, mn, mx) = pq.result();
            if l {
                live = true;
                min = min.max(mn);
                max = match (max, mx) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
        }
        q.set(live, min, max);
        answered
    }

    fn release_pad(&self, pad: &gst::Pad) {
        gst::debug!(CAT, obj = pad, "Releasing pad");
        // Out of the state first: a streaming thread waiting on this pad or for it leaves its
        // wait (deactivation below waits for it), and the other tracks stop waiting for it.
        let mut state = lock(&self.state);
        let removed = state
            .pads
            .iter()
            .position(|p| &p.pad == pad)
            .map(|i| state.pads.remove(i));
        if let Some(p) = &removed {
            self.stats.forget_track(&p.stats);
        }
        self.end_track(state, removed.and_then(|p| p.track));
        let _ = pad.set_active(false);
        let _ = self.obj().remove_pad(pad);
    }

    fn change_state(
        &self,
        transition: gst::StateChange,
    ) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
        gst::debug!(CAT, imp = self, "Changing state {:?}", transition);
        if transition == gst::StateChange::NullToReady
            && let Err(err) = self.start()
        {
            self.post_error_message(err);
            return Err(gst::StateChangeError);
        }
        if transition == gst::StateChange::ReadyToPaused {
            self.start_stream();
        }
        if let gst::StateChange::PlayingToPaused | gst::StateChange::PausedToPlaying = transition {
            // The element's own pause is not a pause of the source: the open fragment stays.
            let mut state = lock(&self.state);
            if let Some(stream) = state.phase.stream_mut() {
                let playing = transition == gst::StateChange::PausedToPlaying;
                self.in_core(|| stream.muxer.set_pause_detection(playing));
                self.core_changed(&state);
            }
        }
        if transition == gst::StateChange::PausedToReady {
            // Release a streaming thread waiting (for space, for another pad) before the pads
            // are deactivated.
            self.flushing.store(true, Ordering::SeqCst);
            self.release_waits();
        }
        let success = self.parent_change_state(transition)?;
        match transition {
            gst::StateChange::PausedToReady => self.stop_stream(),
            gst::StateChange::ReadyToNull => self.stop(),
            _ => (),
        }
        Ok(success)
    }
}
