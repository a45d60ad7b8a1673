//! What the element's properties configure, their reference defaults, and the checks made at
//! NULL→READY.
//!
//! Every default below is the reference element's (`gst-inspect-1.0 kvssink` of the C++ plugin).
//! Values the reference or the service limit are validated by [`Settings::validate`]; a failure
//! names the property, the value and the rule, and the element turns it into a
//! `GST_ELEMENT_ERROR` that fails the state change.
//!
//! Where the reference silently "fixes" a value we keep its behaviour for drop-in compatibility and
//! say so in a warning instead of failing (`connection-timeout` > `completion-timeout`,
//! `timecode-scale=0`, `buffer-duration=0`).

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use super::StreamingType;
pub use crate::upload::iot::{
    OPTIONAL_FIELDS as IOT_OPTIONAL_FIELDS, REQUIRED_FIELDS as IOT_REQUIRED_FIELDS,
};

pub const DEFAULT_STREAM_NAME: &str = "DEFAULT_STREAM";
/// `user-agent` pspec default; the instance default adds our version, as the reference does.
pub const DEFAULT_USER_AGENT_NAME: &str = "AWS-SDK-KVS-RS-CLIENT";
pub const DEFAULT_RETENTION_PERIOD_HOURS: u32 = 2;
pub const DEFAULT_STREAMING_TYPE: StreamingType = StreamingType::Realtime;
pub const DEFAULT_CONTENT_TYPE: Option<&str> = None;
pub const DEFAULT_MAX_LATENCY_SECONDS: u32 = 60;
pub const DEFAULT_FRAGMENT_DURATION_MS: u32 = 2000;
pub const DEFAULT_TIMECODE_SCALE_MS: u32 = 1;
pub const DEFAULT_KEY_FRAME_FRAGMENTATION: bool = true;
pub const DEFAULT_FRAME_TIMECODES: bool = true;
pub const DEFAULT_ABSOLUTE_FRAGMENT_TIMES: bool = true;
pub const DEFAULT_FRAGMENT_ACKS: bool = true;
pub const DEFAULT_RESTART_ON_ERROR: bool = true;
pub const DEFAULT_RECALCULATE_METRICS: bool = true;
pub const DEFAULT_FRAMERATE: u32 = 25;
pub const DEFAULT_AVG_BANDWIDTH_BPS: u32 = 4 * 1024 * 1024;
pub const DEFAULT_BUFFER_DURATION_SECONDS: u32 = 120;
pub const DEFAULT_REPLAY_DURATION_SECONDS: u32 = 40;
pub const DEFAULT_CONNECTION_STALENESS_SECONDS: u32 = 60;
pub const DEFAULT_CODEC_ID: &str = "V_MPEG4/ISO/AVC";
pub const DEFAULT_TRACK_NAME: &str = "kinesis_video";
/// Sentinel values: the reference treats a credential property still equal to these as unset.
pub const ACCESS_KEY_SENTINEL: &str = "access_key";
pub const SECRET_KEY_SENTINEL: &str = "secret_key";
pub const SESSION_TOKEN_SENTINEL: &str = "session_token";
pub const DEFAULT_REGION: &str = "us-west-2";
pub const DEFAULT_ROTATION_PERIOD_SECONDS: u32 = 3600;
pub const DEFAULT_LOG_CONFIG_PATH: &str = "../kvs_log_configuration";
pub const DEFAULT_STORAGE_SIZE_MB: u32 = 128;
pub const DEFAULT_STOP_STREAM_TIMEOUT_SECONDS: u32 = 120;
pub const DEFAULT_CONNECTION_TIMEOUT_SECONDS: u32 = 5;
pub const DEFAULT_COMPLETION_TIMEOUT_SECONDS: u32 = 10;
pub const DEFAULT_CREDENTIAL_PATH: &str = ".kvs/credential";
pub const DEFAULT_DISABLE_BUFFER_CLIPPING: bool = false;
pub const DEFAULT_USE_ORIGINAL_PTS: bool = false;
pub const DEFAULT_GET_KVS_METRICS: bool = false;
pub const DEFAULT_ALLOW_CREATE_STREAM: bool = true;

/// Service and PIC limits (docs/kvs-protocol.md §1.2 and §8, KVS API reference).
pub const MAX_STREAM_NAME_LEN: usize = 256;
pub const MAX_USER_AGENT_LEN: usize = 32;
pub const MAX_CODEC_ID_LEN: usize = 32;
pub const MAX_TRACK_NAME_LEN: usize = 32;
pub const MAX_CONTENT_TYPE_LEN: usize = 128;
pub const MAX_TIMECODE_SCALE_MS: u32 = 1000;
pub const MIN_FRAGMENT_DURATION_MS: u32 = 1000;
pub const MAX_FRAGMENT_DURATION_MS: u32 = 30_000;
/// `buffer-duration=0` becomes this, as in the reference (`MIN_VIEW_BUFFER_DURATION`).
pub const MIN_BUFFER_DURATION_SECONDS: u32 = 20;
/// DataRetentionInHours upper bound of CreateStream (10 years).
pub const MAX_RETENTION_PERIOD_HOURS: u32 = 87_600;
pub const MAX_STREAM_TAGS: usize = 50;
pub const MAX_TAG_KEY_LEN: usize = 128;
pub const MAX_TAG_VALUE_LEN: usize = 256;
/// `file-start-time` values above this are almost certainly milliseconds (year 5138 in seconds).
pub const MAX_PLAUSIBLE_FILE_START_TIME_SECONDS: u64 = 100_000_000_000;

/// The instance default of `user-agent`: our name and version, like the reference's
/// `AWS-SDK-KVS-CPP-CLIENT/3.6.0`.
pub fn default_user_agent() -> String {
    format!("{DEFAULT_USER_AGENT_NAME}/{}", env!("CARGO_PKG_VERSION"))
}

/// The instance default of `file-start-time`: now, in epoch seconds.
pub fn now_epoch_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Everything the properties configure. Read once at NULL→READY (like the reference); the
/// exception is `get-kvs-metrics`, read at each key frame, so metrics can be switched on while
/// streaming.
#[derive(Clone)]
pub struct Settings {
    pub stream_name: String,
    pub user_agent: String,
    pub retention_period_hours: u32,
    pub streaming_type: StreamingType,
    pub content_type: Option<String>,
    pub max_latency_seconds: u32,
    pub fragment_duration_ms: u32,
    pub timecode_scale_ms: u32,
    pub key_frame_fragmentation: bool,
    pub frame_timecodes: bool,
    pub absolute_fragment_times: bool,
    pub fragment_acks: bool,
    pub restart_on_error: bool,
    pub recalculate_metrics: bool,
    pub framerate: u32,
    pub avg_bandwidth_bps: u32,
    pub buffer_duration_seconds: u32,
    pub replay_duration_seconds: u32,
    pub connection_staleness_seconds: u32,
    pub codec_id: String,
    pub track_name: String,
    pub access_key: String,
    pub secret_key: String,
    pub session_token: String,
    pub aws_region: String,
    pub rotation_period_seconds: u32,
    pub log_config: String,
    /// Whether `log-config` was set by the user: a missing default file is silent, a missing
    /// explicitly named file is an error.
    pub log_config_explicit: bool,
    pub storage_size_mb: u32,
    pub stop_stream_timeout_seconds: u32,
    pub connection_timeout_seconds: u32,
    pub completion_timeout_seconds: u32,
    pub credential_path: String,
    pub iot_certificate: Option<gst::Structure>,
    pub stream_tags: Option<gst::Structure>,
    pub file_start_time: u64,
    pub disable_buffer_clipping: bool,
    pub use_original_pts: bool,
    pub get_kvs_metrics: bool,
    pub allow_create_stream: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            stream_name: DEFAULT_STREAM_NAME.to_owned(),
            user_agent: default_user_agent(),
            retention_period_hours: DEFAULT_RETENTION_PERIOD_HOURS,
            streaming_type: DEFAULT_STREAMING_TYPE,
            content_type: DEFAULT_CONTENT_TYPE.map(str::to_owned),
            max_latency_seconds: DEFAULT_MAX_LATENCY_SECONDS,
            fragment_duration_ms: DEFAULT_FRAGMENT_DURATION_MS,
            timecode_scale_ms: DEFAULT_TIMECODE_SCALE_MS,
            key_frame_fragmentation: DEFAULT_KEY_FRAME_FRAGMENTATION,
            frame_timecodes: DEFAULT_FRAME_TIMECODES,
            absolute_fragment_times: DEFAULT_ABSOLUTE_FRAGMENT_TIMES,
            fragment_acks: DEFAULT_FRAGMENT_ACKS,
            restart_on_error: DEFAULT_RESTART_ON_ERROR,
            recalculate_metrics: DEFAULT_RECALCULATE_METRICS,
            framerate: DEFAULT_FRAMERATE,
            avg_bandwidth_bps: DEFAULT_AVG_BANDWIDTH_BPS,
            buffer_duration_seconds: DEFAULT_BUFFER_DURATION_SECONDS,
            replay_duration_seconds: DEFAULT_REPLAY_DURATION_SECONDS,
            connection_staleness_seconds: DEFAULT_CONNECTION_STALENESS_SECONDS,
            codec_id: DEFAULT_CODEC_ID.to_owned(),
            track_name: DEFAULT_TRACK_NAME.to_owned(),
            access_key: ACCESS_KEY_SENTINEL.to_owned(),
            secret_key: SECRET_KEY_SENTINEL.to_owned(),
            session_token: SESSION_TOKEN_SENTINEL.to_owned(),
            aws_region: DEFAULT_REGION.to_owned(),
            rotation_period_seconds: DEFAULT_ROTATION_PERIOD_SECONDS,
            log_config: DEFAULT_LOG_CONFIG_PATH.to_owned(),
            log_config_explicit: false,
            storage_size_mb: DEFAULT_STORAGE_SIZE_MB,
            stop_stream_timeout_seconds: DEFAULT_STOP_STREAM_TIMEOUT_SECONDS,
            connection_timeout_seconds: DEFAULT_CONNECTION_TIMEOUT_SECONDS,
            completion_timeout_seconds: DEFAULT_COMPLETION_TIMEOUT_SECONDS,
            credential_path: DEFAULT_CREDENTIAL_PATH.to_owned(),
            iot_certificate: None,
            stream_tags: None,
            file_start_time: now_epoch_seconds(),
            disable_buffer_clipping: DEFAULT_DISABLE_BUFFER_CLIPPING,
            use_original_pts: DEFAULT_USE_ORIGINAL_PTS,
            get_kvs_metrics: DEFAULT_GET_KVS_METRICS,
            allow_create_stream: DEFAULT_ALLOW_CREATE_STREAM,
        }
    }
}

// Secrets never reach a log: Debug prints whether a credential is set, not its value.
impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("stream_name", &self.stream_name)
            .field("aws_region", &self.aws_region)
            .field("streaming_type", &self.streaming_type)
            .field(
                "access_key",
                &redacted(&self.access_key, ACCESS_KEY_SENTINEL),
            )
            .field(
                "secret_key",
                &redacted(&self.secret_key, SECRET_KEY_SENTINEL),
            )
            .field(
                "session_token",
                &redacted(&self.session_token, SESSION_TOKEN_SENTINEL),
            )
            .field("iot_certificate", &self.iot_certificate.is_some())
            .field("fragment_duration_ms", &self.fragment_duration_ms)
            .field("key_frame_fragmentation", &self.key_frame_fragmentation)
            .field("buffer_duration_seconds", &self.buffer_duration_seconds)
            .field("replay_duration_seconds", &self.replay_duration_seconds)
            .field("storage_size_mb", &self.storage_size_mb)
            .finish_non_exhaustive()
    }
}

fn redacted(value: &str, sentinel: &str) -> &'static str {
    if value == sentinel {
        "<unset>"
    } else {
        "<set>"
    }
}

/// A property value that cannot be used, with the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid value {value} for property '{property}': {rule}")]
pub struct InvalidProperty {
    pub property: &'static str,
    pub value: String,
    pub rule: String,
}

impl InvalidProperty {
    fn new(property: &'static str, value: impl fmt::Display, rule: impl Into<String>) -> Self {
        Self {
            property,
            value: value.to_string(),
            rule: rule.into(),
        }
    }
}

/// Values the element actually uses, after the reference's fix-ups, plus what to warn about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effective {
    pub aws_region: String,
    pub timecode_scale_ms: u32,
    pub buffer_duration_seconds: u32,
    pub connection_timeout_seconds: u32,
    pub completion_timeout_seconds: u32,
    pub warnings: Vec<String>,
}

/// A stream name as the KVS API accepts it: 1–256 of `[a-zA-Z0-9_.-]`.
pub fn check_stream_name(name: &str) -> Result<(), InvalidProperty> {
    if name.is_empty() || name.len() > MAX_STREAM_NAME_LEN {
        return Err(InvalidProperty::new(
            "stream-name",
            format!("'{name}'"),
            format!("must be 1 to {MAX_STREAM_NAME_LEN} characters long"),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(InvalidProperty::new(
            "stream-name",
            format!("'{name}'"),
            format!("character '{c}' is not allowed; use only letters, digits, '_', '.' and '-'"),
        ));
    }
    Ok(())
}

fn check_len(
    property: &'static str,
    value: &str,
    max: usize,
    allow_empty: bool,
) -> Result<(), InvalidProperty> {
    let n = value.chars().count();
    if n > max {
        return Err(InvalidProperty::new(
            property,
            format!("'{value}'"),
            format!("must be at most {max} characters long (it has {n})"),
        ));
    }
    if !allow_empty && n == 0 {
        return Err(InvalidProperty::new(property, "''", "must not be empty"));
    }
    Ok(())
}

/// Checks the `stream-tags` structure: string fields only (the reference ignores all tags when
/// one is not a string; we refuse instead), and the TagStream limits.
pub fn check_stream_tags(tags: &gst::StructureRef) -> Result<(), InvalidProperty> {
    let shown = tags.to_string();
    if tags.n_fields() > MAX_STREAM_TAGS {
        return Err(InvalidProperty::new(
            "stream-tags",
            &shown,
            format!("at most {MAX_STREAM_TAGS} tags are allowed per stream"),
        ));
    }
    for (key, value) in tags.iter() {
        let key = key.as_str();
        let Ok(value) = value.get::<&str>() else {
            return Err(InvalidProperty::new(
                "stream-tags",
                &shown,
                format!(
                    "tag '{key}' is a {}, but every tag value must be a string, e.g. {key}=(string)value",
                    value.type_()
                ),
            ));
        };
        if key.chars().count() > MAX_TAG_KEY_LEN {
            return Err(InvalidProperty::new(
                "stream-tags",
                &shown,
                format!("tag key '{key}' is longer than {MAX_TAG_KEY_LEN} characters"),
            ));
        }
        if key.to_ascii_lowercase().starts_with("aws:") {
            return Err(InvalidProperty::new(
                "stream-tags",
                &shown,
                format!("tag key '{key}' uses the reserved prefix 'aws:'"),
            ));
        }
        if value.chars().count() > MAX_TAG_VALUE_LEN {
            return Err(InvalidProperty::new(
                "stream-tags",
                &shown,
                format!("the value of tag '{key}' is longer than {MAX_TAG_VALUE_LEN} characters"),
            ));
        }
    }
    Ok(())
}

/// Checks the `iot-certificate` structure with the reference's rules: exactly the known keys,
/// the five required ones present, every value a non-empty string; the timeouts are whole
/// seconds.
pub fn check_iot_certificate(iot: &gst::StructureRef) -> Result<(), InvalidProperty> {
    // Paths and endpoints are not secrets, but the structure is printed by field name only so a
    // future field can never leak.
    let shown = format!(
        "{}{{{}}}",
        iot.name(),
        iot.fields()
            .map(|f| f.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (key, value) in iot.iter() {
        let key = key.as_str();
        if !IOT_REQUIRED_FIELDS.contains(&key) && !IOT_OPTIONAL_FIELDS.contains(&key) {
            return Err(InvalidProperty::new(
                "iot-certificate",
                &shown,
                format!(
                    "unknown field '{key}'; the fields are {} and optionally {}",
                    IOT_REQUIRED_FIELDS.join(", "),
                    IOT_OPTIONAL_FIELDS.join(", ")
                ),
            ));
        }
        let Ok(text) = value.get::<&str>() else {
            return Err(InvalidProperty::new(
                "iot-certificate",
                &shown,
                format!("field '{key}' must be a string, e.g. {key}=\"...\""),
            ));
        };
        if text.is_empty() {
            return Err(InvalidProperty::new(
                "iot-certificate",
                &shown,
                format!("field '{key}' must not be empty"),
            ));
        }
        if matches!(key, "connection-timeout" | "completion-timeout")
            && !text.parse::<u32>().is_ok_and(|v| v > 0)
        {
            return Err(InvalidProperty::new(
                "iot-certificate",
                &shown,
                format!("field '{key}' must be a whole number of seconds above 0, not '{text}'"),
            ));
        }
    }
    if let Some(missing) = IOT_REQUIRED_FIELDS.iter().find(|f| !iot.has_field(**f)) {
        return Err(InvalidProperty::new(
            "iot-certificate",
            &shown,
            format!(
                "required field '{missing}' is missing; required are {}",
                IOT_REQUIRED_FIELDS.join(", ")
            ),
        ));
    }
    Ok(())
}

impl Settings {
    /// Validates every limited value and computes the effective configuration.
    ///
    /// `env_region` is `AWS_DEFAULT_REGION`, which overrides `aws-region` as in the reference.
    pub fn validate(&self, env_region: Option<&str>) -> Result<Effective, InvalidProperty> {
        let mut warnings = Vec::new();

        check_stream_name(&self.stream_name)?;
        check_len("user-agent", &self.user_agent, MAX_USER_AGENT_LEN, false)?;
        check_len("codec-id", &self.codec_id, MAX_CODEC_ID_LEN, false)?;
        check_len("track-name", &self.track_name, MAX_TRACK_NAME_LEN, true)?;
        if let Some(ct) = &self.content_type {
            check_len("content-type", ct, MAX_CONTENT_TYPE_LEN, true)?;
        }

        if self.timecode_scale_ms > MAX_TIMECODE_SCALE_MS {
            return Err(InvalidProperty::new(
                "timecode-scale",
                self.timecode_scale_ms,
                format!("must be at most {MAX_TIMECODE_SCALE_MS} ms (0 means the default, 1 ms)"),
            ));
        }
        let timecode_scale_ms = if self.timecode_scale_ms == 0 {
            DEFAULT_TIMECODE_SCALE_MS
        } else {
            self.timecode_scale_ms
        };

        if !self.key_frame_fragmentation
            && !(MIN_FRAGMENT_DURATION_MS..=MAX_FRAGMENT_DURATION_MS)
                .contains(&self.fragment_duration_ms)
        {
            return Err(InvalidProperty::new(
                "fragment-duration",
                self.fragment_duration_ms,
                format!(
                    "must be between {MIN_FRAGMENT_DURATION_MS} and {MAX_FRAGMENT_DURATION_MS} ms when key-frame-fragmentation=false"
                ),
            ));
        }

        if self.retention_period_hours > MAX_RETENTION_PERIOD_HOURS {
            return Err(InvalidProperty::new(
                "retention-period",
                self.retention_period_hours,
                format!("must be at most {MAX_RETENTION_PERIOD_HOURS} hours (10 years)"),
            ));
        }

        if self.storage_size_mb == 0 {
            return Err(InvalidProperty::new(
                "storage-size",
                0,
                "must be at least 1 MB: nothing could be buffered",
            ));
        }

        let buffer_duration_seconds = if self.buffer_duration_seconds == 0 {
            warnings.push(format!(
                "buffer-duration=0 is replaced by {MIN_BUFFER_DURATION_SECONDS} s, as in the reference element"
            ));
            MIN_BUFFER_DURATION_SECONDS
        } else {
            self.buffer_duration_seconds
        };
        if self.replay_duration_seconds > buffer_duration_seconds {
            return Err(InvalidProperty::new(
                "replay-duration",
                self.replay_duration_seconds,
                format!(
                    "must not exceed buffer-duration ({buffer_duration_seconds} s): only buffered media can be replayed"
                ),
            ));
        }

        let (connection_timeout_seconds, completion_timeout_seconds) = if self
            .connection_timeout_seconds
            > self.completion_timeout_seconds
        {
            warnings.push(format!(
                    "connection-timeout ({} s) is larger than completion-timeout ({} s); both are reset to {} s and {} s, as in the reference element",
                    self.connection_timeout_seconds,
                    self.completion_timeout_seconds,
                    DEFAULT_CONNECTION_TIMEOUT_SECONDS,
                    DEFAULT_COMPLETION_TIMEOUT_SECONDS
                ));
            (
                DEFAULT_CONNECTION_TIMEOUT_SECONDS,
                DEFAULT_COMPLETION_TIMEOUT_SECONDS,
            )
        } else {
            (
                self.connection_timeout_seconds,
                self.completion_timeout_seconds,
            )
        };

        if self.streaming_type == StreamingType::Offline
            && !self.use_original_pts
            && self.file_start_time > MAX_PLAUSIBLE_FILE_START_TIME_SECONDS
        {
            return Err(InvalidProperty::new(
                "file-start-time",
                self.file_start_time,
                "is in seconds since the epoch; this value looks like milliseconds — divide it by 1000",
            ));
        }

        let aws_region = match env_region.filter(|r| !r.is_empty()) {
            Some(region) => {
                if region != self.aws_region {
                    warnings.push(format!(
                        "AWS_DEFAULT_REGION={region} overrides aws-region={}",
                        self.aws_region
                    ));
                }
                region.to_owned()
            }
            None => self.aws_region.clone(),
        };
        if aws_region.is_empty()
            || !aws_region
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            let property = if env_region.is_some_and(|r| !r.is_empty()) {
                "aws-region (from AWS_DEFAULT_REGION)"
            } else {
                "aws-region"
            };
            return Err(InvalidProperty::new(
                property,
                format!("'{aws_region}'"),
                "must be an AWS region name such as us-west-2",
            ));
        }

        if let Some(tags) = &self.stream_tags {
            check_stream_tags(tags)?;
        }
        if let Some(iot) = &self.iot_certificate {
            check_iot_certificate(iot)?;
        }

        Ok(Effective {
            aws_region,
            timecode_scale_ms,
            buffer_duration_seconds,
            connection_timeout_seconds,
            completion_timeout_seconds,
            warnings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init() {
        gst::init().unwrap();
    }

    #[test]
    fn defaults_are_valid() {
        init();
        let eff = Settings::default().validate(None).unwrap();
        assert_eq!(eff.aws_region, "us-west-2");
        assert_eq!(eff.timecode_scale_ms, 1);
        assert!(eff.warnings.is_empty());
    }

    #[test]
    fn env_region_overrides_property() {
        init();
        let eff = Settings::default().validate(Some("eu-west-1")).unwrap();
        assert_eq!(eff.aws_region, "eu-west-1");
        assert_eq!(eff.warnings.len(), 1);
        let eff = Settings::default().validate(Some("")).unwrap();
        assert_eq!(eff.aws_region, "us-west-2");
    }

    #[test]
    fn stream_name_rules() {
        assert!(check_stream_name("my-stream_1.a").is_ok());
        let e = check_stream_name("bad name").unwrap_err();
        assert_eq!(e.property, "stream-name");
        assert!(e.rule.contains("' '"), "{e}");
        assert!(check_stream_name("").is_err());
        assert!(check_stream_name(&"a".repeat(256)).is_ok());
        assert!(check_stream_name(&"a".repeat(257)).is_err());
    }

    #[test]
    fn fragment_duration_only_checked_without_key_frame_fragmentation() {
        init();
        let mut s = Settings {
            fragment_duration_ms: 40_000,
            ..Default::default()
        };
        assert!(s.validate(None).is_ok());
        s.key_frame_fragmentation = false;
        let e = s.validate(None).unwrap_err();
        assert_eq!(e.property, "fragment-duration");
        assert_eq!(e.value, "40000");
        s.fragment_duration_ms = 999;
        assert!(s.validate(None).is_err());
        s.fragment_duration_ms = 1000;
        assert!(s.validate(None).is_ok());
        s.fragment_duration_ms = 30_000;
        assert!(s.validate(None).is_ok());
    }

    #[test]
    fn replay_duration_bounded_by_effective_buffer_duration() {
        init();
        let mut s = Settings {
            replay_duration_seconds: 121,
            ..Default::default()
        };
        assert_eq!(s.validate(None).unwrap_err().property, "replay-duration");
        s.buffer_duration_seconds = 0;
        s.replay_duration_seconds = 20;
        let eff = s.validate(None).unwrap();
        assert_eq!(eff.buffer_duration_seconds, 20);
        s.replay_duration_seconds = 21;
        assert!(s.validate(None).is_err());
    }

    #[test]
    fn length_limits() {
        init();
        for (prop, f) in [
            (
                "user-agent",
                (|s: &mut Settings, v| s.user_agent = v) as fn(&mut Settings, String),
            ),
            ("codec-id", |s, v| s.codec_id = v),
            ("track-name", |s, v| s.track_name = v),
        ] {
            let mut s = Settings::default();
            f(&mut s, "x".repeat(32));
            assert!(s.validate(None).is_ok(), "{prop}");
            f(&mut s, "x".repeat(33));
            assert_eq!(s.validate(None).unwrap_err().property, prop);
        }
        let s = Settings {
            content_type: Some("v".repeat(129)),
            ..Default::default()
        };
        assert_eq!(s.validate(None).unwrap_err().property, "content-type");
    }

    #[test]
    fn timecode_scale() {
        init();
        let mut s = Settings {
            timecode_scale_ms: 1001,
            ..Default::default()
        };
        assert_eq!(s.validate(None).unwrap_err().property, "timecode-scale");
        s.timecode_scale_ms = 0;
        assert_eq!(s.validate(None).unwrap().timecode_scale_ms, 1);
        s.timecode_scale_ms = 1000;
        assert_eq!(s.validate(None).unwrap().timecode_scale_ms, 1000);
    }

    #[test]
    fn timeouts_fixed_up_like_reference() {
        init();
        let s = Settings {
            connection_timeout_seconds: 20,
            ..Default::default()
        };
        let eff = s.validate(None).unwrap();
        assert_eq!(
            (
                eff.connection_timeout_seconds,
                eff.completion_timeout_seconds
            ),
            (5, 10)
        );
        assert_eq!(eff.warnings.len(), 1);
    }

    #[test]
    fn file_start_time_in_ms_is_refused_offline() {
        init();
        let mut s = Settings {
            file_start_time: 1_700_000_000_000,
            ..Default::default()
        };
        assert!(s.validate(None).is_ok());
        s.streaming_type = StreamingType::Offline;
        let e = s.validate(None).unwrap_err();
        assert_eq!(e.property, "file-start-time");
        assert!(e.rule.contains("milliseconds"));
    }

    #[test]
    fn stream_tags_rules() {
        init();
        let ok = gst::Structure::builder("tags")
            .field("team", "video")
            .field("site", "north")
            .build();
        assert!(check_stream_tags(&ok).is_ok());
        let bad = gst::Structure::builder("tags").field("count", 3i32).build();
        let e = check_stream_tags(&bad).unwrap_err();
        assert!(
            e.rule.contains("'count'") && e.rule.contains("string"),
            "{e}"
        );
        let reserved = gst::Structure::builder("tags").field("aws:x", "y").build();
        assert!(check_stream_tags(&reserved).is_err());
        let long = gst::Structure::builder("tags")
            .field("k", "v".repeat(257))
            .build();
        assert!(check_stream_tags(&long).is_err());
        let mut many = gst::Structure::new_empty("tags");
        for i in 0..51 {
            many.set(format!("k{i}"), "v");
        }
        assert!(check_stream_tags(&many).is_err());
    }

    #[test]
    fn iot_certificate_rules() {
        init();
        let base = || {
            gst::Structure::builder("iot-certificate")
                .field("endpoint", "example.iot.us-west-2.amazonaws.com")
                .field("cert-path", "/c.pem")
                .field("key-path", "/k.pem")
                .field("ca-path", "/ca.pem")
                .field("role-aliases", "alias")
        };
        assert!(check_iot_certificate(&base().build()).is_ok());
        assert!(
            check_iot_certificate(
                &base()
                    .field("iot-thing-name", "thing")
                    .field("connection-timeout", "3")
                    .build()
            )
            .is_ok()
        );
        let e = check_iot_certificate(&base().field("region", "x").build()).unwrap_err();
        assert!(e.rule.contains("unknown field 'region'"), "{e}");
        let e =
            check_iot_certificate(&base().field("connection-timeout", 3i32).build()).unwrap_err();
        assert!(e.rule.contains("must be a string"), "{e}");
        let e =
            check_iot_certificate(&base().field("connection-timeout", "soon").build()).unwrap_err();
        assert!(e.rule.contains("whole number"), "{e}");
        let mut missing = base().build();
        missing.remove_field("ca-path");
        let e = check_iot_certificate(&missing).unwrap_err();
        assert!(e.rule.contains("'ca-path'"), "{e}");
        let e = check_iot_certificate(&base().field("endpoint", "").build()).unwrap_err();
        assert!(e.rule.contains("empty"), "{e}");
    }

    #[test]
    fn debug_redacts_credentials() {
        let s = Settings {
            access_key: "AKIDSECRETVALUE".into(),
            secret_key: "wJalrXUtnFEMI".into(),
            session_token: "TOKENVALUE".into(),
            ..Default::default()
        };
        let text = format!("{s:?}");
        assert!(!text.contains("AKIDSECRETVALUE"));
        assert!(!text.contains("wJalrXUtnFEMI"));
        assert!(!text.contains("TOKENVALUE"));
        assert!(text.contains("<set>"));
    }
}
