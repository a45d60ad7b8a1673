//! The `kvssink` element implementation: properties, request pads, events, signals and state
//! changes.
//!
//! Lock order: `settings` and `state` are never held at the same time; NULL→READY copies the
//! settings out before touching the state.

use std::sync::{LazyLock, Mutex, MutexGuard};

use gst::glib;
use gst::glib::subclass::Signal;
use gst::prelude::*;
use gst::subclass::prelude::*;

use super::StreamingType;
use super::settings::{self, Effective, Settings};
use crate::logging::{CAT, LogConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PadKind {
    Video,
    Audio,
}

struct SinkPad {
    pad: gst::Pad,
    kind: PadKind,
    eos: bool,
}

#[derive(Default)]
struct State {
    pads: Vec<SinkPad>,
    video_counter: u32,
    audio_counter: u32,
    /// The EOS message is posted once per stream, when the last pad reaches EOS.
    eos_posted: bool,
    /// The configuration validated at NULL→READY; `None` in NULL.
    config: Option<(Settings, Effective)>,
}

impl State {
    fn count(&self, kind: PadKind) -> usize {
        self.pads.iter().filter(|p| p.kind == kind).count()
    }

    fn all_eos(&self) -> bool {
        !self.pads.is_empty() && self.pads.iter().all(|p| p.eos)
    }
}

#[derive(Default)]
pub struct KvsSink {
    settings: Mutex<Settings>,
    state: Mutex<State>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic caught at a pad boundary must not make every later call panic too.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl KvsSink {
    fn sink_chain(
        &self,
        pad: &gst::Pad,
        _buffer: gst::Buffer,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        // The media path (codec data, timeline, Matroska packing) is not part of this build yet;
        // refuse media instead of pretending to accept it.
        gst::element_imp_error!(
            self,
            gst::CoreError::NotImplemented,
            [
                "kvssink cannot process media on {} yet: the media path is not built",
                pad.name()
            ]
        );
        Err(gst::FlowError::NotSupported)
    }

    fn sink_event(&self, pad: &gst::Pad, event: gst::Event) -> bool {
        use gst::EventView;
        gst::log!(CAT, obj = pad, "Handling event {:?}", event);
        match event.view() {
            EventView::Caps(c) => {
                gst::debug!(CAT, obj = pad, "Caps {}", c.caps());
                true
            }
            EventView::Eos(_) => {
                self.pad_eos(pad);
                true
            }
            EventView::FlushStop(_) => {
                let mut state = lock(&self.state);
                if let Some(p) = state.pads.iter_mut().find(|p| &p.pad == pad) {
                    p.eos = false;
                }
                state.eos_posted = false;
                drop(state);
                gst::Pad::event_default(pad, Some(&*self.obj()), event)
            }
            _ => gst::Pad::event_default(pad, Some(&*self.obj()), event),
        }
    }

    fn pad_eos(&self, pad: &gst::Pad) {
        let mut state = lock(&self.state);
        if let Some(p) = state.pads.iter_mut().find(|p| &p.pad == pad) {
            p.eos = true;
        }
        gst::debug!(CAT, obj = pad, "EOS");
        self.maybe_post_eos(state);
    }

    fn maybe_post_eos(&self, mut state: MutexGuard<'_, State>) {
        if state.eos_posted || !state.all_eos() {
            return;
        }
        state.eos_posted = true;
        drop(state);
        gst::info!(CAT, imp = self, "All pads are EOS, posting EOS");
        let obj = self.obj();
        let _ = obj.post_message(gst::message::Eos::builder().src(&*obj).build());
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
                    .map_err(|e| gst::error_msg!(gst::LibraryError::Settings, ["{}", e]))?;
            }
            Ok(None) => gst::debug!(
                CAT,
                imp = self,
                "No log-config file at '{}'",
                settings.log_config
            ),
            Err(e) => return Err(gst::error_msg!(gst::LibraryError::Settings, ["{}", e])),
        }

        let env_region = std::env::var("AWS_DEFAULT_REGION").ok();
        let effective = settings
            .validate(env_region.as_deref())
            .map_err(|e| gst::error_msg!(gst::LibraryError::Settings, ["{}", e]))?;
        for w in &effective.warnings {
            gst::warning!(CAT, imp = self, "{}", w);
        }
        lock(&self.state).config = Some((settings, effective));
        Ok(())
    }

    fn stop(&self) {
        let mut state = lock(&self.state);
        state.config = None;
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
                boolean("get-kvs-metrics", "Get KVS metrics", "Emit stream-client-metric on every key frame", DEFAULT_GET_KVS_METRICS),
                boolean("allow-create-stream", "Allow create stream", "Create the stream if it does not exist", DEFAULT_ALLOW_CREATE_STREAM),
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
            "get-kvs-metrics" => s.get_kvs_metrics = b(),
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
            "secret-key" => s.secret_key.to_value(),
            "session-token" => s.session_token.to_value(),
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
        self.obj().set_element_flags(gst::ElementFlags::SINK);
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
                [
                    "kvssink takes at most one {} pad and one audio/video pad each; a further {} pad request was refused",
                    what,
                    what
                ]
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
            .build();
        state.pads.push(SinkPad {
            pad: pad.clone(),
            kind,
            eos: false,
        });
        drop(state);

        if let Err(e) = self.obj().add_pad(&pad) {
            gst::warning!(CAT, imp = self, "Failed to add pad {}: {}", pad_name, e);
            lock(&self.state).pads.retain(|p| p.pad != pad);
            return None;
        }
        gst::debug!(CAT, imp = self, "Added pad {}", pad_name);
        Some(pad)
    }

    fn release_pad(&self, pad: &gst::Pad) {
        gst::debug!(CAT, obj = pad, "Releasing pad");
        let _ = pad.set_active(false);
        let mut state = lock(&self.state);
        state.pads.retain(|p| &p.pad != pad);
        drop(state);
        let _ = self.obj().remove_pad(pad);
        // The released pad may have been the last one not yet at EOS.
        self.maybe_post_eos(lock(&self.state));
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
        let success = self.parent_change_state(transition)?;
        match transition {
            gst::StateChange::PausedToReady => {
                let mut state = lock(&self.state);
                state.eos_posted = false;
                for p in &mut state.pads {
                    p.eos = false;
                }
            }
            gst::StateChange::ReadyToNull => self.stop(),
            _ => (),
        }
        Ok(success)
    }
}
