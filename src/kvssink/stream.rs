//! What the element runs while it streams (READY→PAUSED until PAUSED→READY): the media core
//! ([`StreamMuxer`]), the `KVS_DEBUG_DUMP_DATA_FILE_DIR` file, and the uploader, started when
//! the first fragment begins (its content type comes from the caps). The muxer's pieces of
//! fragment become the store's ([`Stream::drain`]) as they are packed.
//!
//! Also the stream's configuration ([`StreamConfig`]): the properties turned into the core's
//! configurations once at NULL→READY, immutable and shared (`Arc`) from then on.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::StreamingType;
use super::settings::{Effective, Settings};
use crate::media::fragmenter::{FragmenterConfig, Piece};
use crate::media::muxer::{MuxError, MuxStats, MuxerConfig, StreamMuxer};
use crate::media::timeline::{SystemClock, TimelineConfig};
use crate::upload::control::{ControlConfig, StreamSpec, endpoint_from_env};
use crate::upload::credentials::{CredentialProperties, KvsCredentials, Source};
use crate::upload::iot::{IotConfig, IotError};
use crate::upload::stats::UploadStats;
use crate::upload::store::{FragmentStore, Limits, Mode, StorePiece, StoredFragment};
use crate::upload::transport::{CaBundle, CaError};
use crate::upload::{EventSink, UploadConfig, Uploader};

/// Why the properties cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("iot-certificate: {0}")]
    Iot(#[from] IotError),
    #[error(transparent)]
    Ca(#[from] CaError),
}

/// The properties, turned into the core's configurations at NULL→READY; never changed after.
pub struct StreamConfig {
    pub mux: MuxerConfig,
    pub upload: UploadConfig,
    pub limits: Limits,
    pub mode: Mode,
    pub dump_dir: Option<PathBuf>,
    pub stop_stream_timeout: Duration,
    pub streaming_type: StreamingType,
    pub disable_buffer_clipping: bool,
    pub codec_id: String,
    pub track_name: String,
}

impl StreamConfig {
    pub fn new(
        settings: &Settings,
        effective: &Effective,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, PrepareError> {
        let iot = settings
            .iot_certificate
            .as_ref()
            .map(|s| IotConfig::from_fields(|k| s.get::<String>(k).ok(), &settings.stream_name))
            .transpose()?;
        let props = CredentialProperties {
            access_key: settings.access_key.clone(),
            secret_key: settings.secret_key.clone(),
            session_token: settings.session_token.clone(),
            credential_path: settings.credential_path.clone(),
        };
        let source = Source::select(&props, iot, &effective.aws_region, &env, |p| {
            File::open(p).is_ok()
        });
        let credentials = KvsCredentials::new(source, &settings.credential_path);
        let ca = env("KVSSINK_CA_CERT_PATH")
            .filter(|p| !p.is_empty())
            .map(|p| CaBundle::load(std::path::Path::new(&p)))
            .transpose()?;
        let endpoint = endpoint_from_env(&env);
        let scale_ms = u64::from(effective.timecode_scale_ms);
        let offline = settings.streaming_type == StreamingType::Offline;
        let tags = settings
            .stream_tags
            .as_ref()
            .map(|t| {
                t.iter()
                    .filter_map(|(k, v)| v.get::<String>().ok().map(|v| (k.to_string(), v)))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            mux: MuxerConfig {
                timeline: TimelineConfig {
                    offline,
                    file_start_time_s: if offline { settings.file_start_time } else { 0 },
                    use_original_pts: settings.use_original_pts,
                    frame_timecodes: settings.frame_timecodes,
                    ..TimelineConfig::default()
                },
                fragmenter: FragmenterConfig {
                    timecode_scale_ns: scale_ms * 1_000_000,
                    // Offline uploads always use absolute times, as in the reference.
                    absolute_fragment_times: settings.absolute_fragment_times || offline,
                    key_frame_fragmentation: settings.key_frame_fragmentation,
                    fragment_duration_ns: u64::from(settings.fragment_duration_ms) * 1_000_000,
                    omit_silent_tracks: true,
                },
                ..MuxerConfig::default()
            },
            upload: UploadConfig {
                control: ControlConfig {
                    region: effective.aws_region.clone(),
                    endpoint: endpoint.clone(),
                    connect_timeout: Duration::from_secs(
                        effective.connection_timeout_seconds.into(),
                    ),
                    completion_timeout: Duration::from_secs(
                        effective.completion_timeout_seconds.into(),
                    ),
                    ca,
                },
                stream: StreamSpec {
                    stream_name: settings.stream_name.clone(),
                    allow_create: settings.allow_create_stream,
                    retention_hours: settings.retention_period_hours,
                    media_type: String::new(),
                    tags,
                },
                credentials,
                explicit_endpoint: endpoint.is_some(),
                user_agent: settings.user_agent.clone(),
                fragment_acks: settings.fragment_acks,
                absolute_fragment_times: settings.absolute_fragment_times || offline,
                connection_staleness: (settings.connection_staleness_seconds > 0)
                    .then(|| Duration::from_secs(settings.connection_staleness_seconds.into())),
                // Replaying only recent media is a live concept: offline uploads replay all.
                replay_window: if offline {
                    u64::MAX
                } else {
                    u64::from(settings.replay_duration_seconds) * 1000 / scale_ms
                },
                restart_on_error: settings.restart_on_error,
                wait_for_persisted: settings.retention_period_hours != 0,
                max_session: crate::upload::MAX_SESSION_DURATION,
            },
            limits: Limits {
                max_bytes: settings.storage_size_mb as usize * 1024 * 1024,
                max_duration: u64::from(effective.buffer_duration_seconds) * 1000 / scale_ms,
            },
            mode: if offline {
                Mode::Block
            } else {
                Mode::DropOldest
            },
            dump_dir: env("KVS_DEBUG_DUMP_DATA_FILE_DIR")
                .filter(|d| !d.is_empty())
                .map(PathBuf::from),
            stop_stream_timeout: Duration::from_secs(settings.stop_stream_timeout_seconds.into()),
            streaming_type: settings.streaming_type,
            disable_buffer_clipping: settings.disable_buffer_clipping,
            codec_id: settings.codec_id.clone(),
            track_name: settings.track_name.clone(),
        })
    }
}

/// The running stream.
pub struct Stream {
    pub config: Arc<StreamConfig>,
    pub muxer: StreamMuxer,
    /// EOS reached the muxer and the uploader was told to finish.
    pub eos_started: bool,
    dump: Option<(PathBuf, File, bool)>,
    pub uploader: Option<Arc<Uploader>>,
    /// Media-path drops already reported.
    pub reported_drops: MuxStats,
    /// Kinds of refused frames already warned about (one warning each).
    pub warned_errors: Vec<std::mem::Discriminant<MuxError>>,
    pub fragments_out: u64,
    /// Parts of the last fragment: room reserved for the next one in the store, once.
    last_parts: usize,
    stats: Arc<UploadStats>,
}

impl Stream {
    pub fn new(config: Arc<StreamConfig>, stats: Arc<UploadStats>) -> Self {
        let muxer = StreamMuxer::new(config.mux.clone(), Box::new(SystemClock));
        Self {
            config,
            muxer,
            eos_started: false,
            dump: None,
            uploader: None,
            reported_drops: MuxStats::default(),
            warned_errors: Vec::new(),
            fragments_out: 0,
            last_parts: 0,
            stats,
        }
    }

    /// The pieces of fragment the muxer produced, as the store takes them; written to the dump
    /// file if one is configured.
    pub fn drain(&mut self) -> Result<Vec<StorePiece>, String> {
        let mut out = Vec::new();
        while let Some(p) = self.muxer.pop_piece() {
            if self.config.dump_dir.is_some() {
                self.dump(&p)?;
            }
            out.push(self.stored(p));
        }
        Ok(out)
    }

    /// Writes a piece to the dump file: the playable Matroska byte stream the uploader sends,
    /// the header before the first fragment and before every fragment that changes it.
    fn dump(&mut self, p: &Piece) -> Result<(), String> {
        let Some(dir) = &self.config.dump_dir else {
            return Ok(());
        };
        if self.dump.is_none() {
            let name = format!(
                "{}-{}.mkv",
                self.config.upload.stream.stream_name,
                super::settings::now_epoch_seconds()
            );
            let path = dir.join(name);
            let file = File::create(&path).map_err(|e| {
                format!(
                    "KVS_DEBUG_DUMP_DATA_FILE_DIR: cannot create {}: {e}",
                    path.display()
                )
            })?;
            self.dump = Some((path, file, true));
        }
        let Some((path, file, first)) = self.dump.as_mut() else {
            return Ok(());
        };
        let result = match p {
            Piece::Start(s) => {
                let header = (*first || s.header_changed).then_some(&s.header);
                *first = false;
                header
                    .into_iter()
                    .chain(&s.parts)
                    .try_for_each(|b| file.write_all(b))
            }
            Piece::Block(b) => file.write_all(b),
            Piece::End(e) => e.tail.iter().try_for_each(|b| file.write_all(b)),
        };
        result
            .and_then(|_| file.flush())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    }

    /// The uploader, started on first use with the content type of the tracks.
    pub fn uploader(
        &mut self,
        content_type: String,
        events: impl FnOnce() -> (EventSink, tracing::Dispatch),
    ) -> Arc<Uploader> {
        if let Some(u) = &self.uploader {
            return u.clone();
        }
        let mut config = self.config.upload.clone();
        config.stream.media_type = content_type;
        let (sink, dispatch) = events();
        let uploader = Arc::new(Uploader::start(
            config,
            FragmentStore::new(self.config.limits, self.config.mode),
            sink,
            dispatch,
            self.stats.clone(),
        ));
        self.uploader = Some(uploader.clone());
        uploader
    }

    /// A piece of fragment as the store takes it.
    fn stored(&mut self, p: Piece) -> StorePiece {
        let scale = self.config.mux.fragmenter.timecode_scale_ns.max(1);
        match p {
            Piece::Start(mut s) => {
                s.parts
                    .reserve(self.last_parts.saturating_sub(s.parts.len()));
                StorePiece::Begin(StoredFragment::open(
                    s.header,
                    s.timecode,
                    s.parts.len().saturating_sub(1) as u32,
                    s.parts,
                ))
            }
            Piece::Block(b) => StorePiece::Append(b),
            Piece::End(e) => {
                self.fragments_out += 1;
                self.last_parts = e.frames() as usize + 2;
                StorePiece::Complete {
                    duration: e.duration_ns / scale,
                    frames: e.frames(),
                    tail: e.tail,
                    end_of_stream: e.end_of_stream,
                }
            }
        }
    }
}
