//! Logging: our GStreamer debug categories, the bridge that forwards the core's `tracing` events
//! into them, and the `log-config` file.
//!
//! The GStreamer-free core logs with `tracing`. The plugin never installs a global subscriber
//! (a library must not take over the host application's tracing); instead [`Forwarder`] is set as
//! the *thread-local* dispatcher around calls into the core (`tracing::dispatcher::with_default`)
//! and on the futures the element spawns (`WithSubscriber::with_subscriber`). Each forwarder
//! carries a weak reference to its element, so every message has object context.
//!
//! Categories, one per component (`GST_DEBUG=kvssink*:5` shows them all):
//! - `kvssink`: the element (pads, properties, state changes, events);
//! - `kvssink-media`: caps → codec data, timestamps, interleaving, Matroska packing;
//! - `kvssink-upload`: fragment store, control plane, PutMedia, ACKs, credentials.
//!
//! ## The `log-config` file
//! The reference element reads a log4cplus file; ours is a small `key = value` file (see the
//! commented `kvs_log_configuration` shipped at the top of the repository):
//! - `filter = <GST_DEBUG-style list>`: thresholds for our categories, e.g.
//!   `filter = kvssink:4,kvssink-upload:5`. Only category patterns starting with `kvssink` are
//!   accepted, so the file cannot change other elements' logging;
//! - `output = <path>`: our categories' messages are also appended to this file (one line each),
//!   whatever the GStreamer debug output is.
//!
//! `#` starts a comment. Lines of a log4cplus file (`log4cplus.…`) are skipped, so a file left over
//! from the C++ plugin does not break a pipeline. The default path (`../kvs_log_configuration`,
//! as the reference) may be missing silently; a path the user set explicitly must exist and parse.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex};

use gst::glib;
use gst::prelude::*;
use tracing::field::{Field, Visit};
use tracing::span;
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};

pub static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "kvssink",
        gst::DebugColorFlags::empty(),
        Some("KVS sink (Rust): element"),
    )
});

pub static CAT_MEDIA: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "kvssink-media",
        gst::DebugColorFlags::empty(),
        Some("KVS sink (Rust): codec data, timestamps, interleaving, Matroska"),
    )
});

pub static CAT_UPLOAD: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "kvssink-upload",
        gst::DebugColorFlags::empty(),
        Some("KVS sink (Rust): store, control plane, PutMedia, ACKs, credentials"),
    )
});

/// Creates every category, so `GST_DEBUG` and `log-config` can address them before first use.
pub fn register_categories() {
    for cat in [&CAT, &CAT_MEDIA, &CAT_UPLOAD] {
        LazyLock::force(cat);
    }
}

/// The category a `tracing` target (a module path such as `gstkvssink::media::mkv::cluster`) logs to.
pub fn category_for_target(target: &str) -> gst::DebugCategory {
    let component = target
        .strip_prefix("gstkvssink::")
        .unwrap_or(target)
        .split("::")
        .next()
        .unwrap_or("");
    match component {
        "media" => *CAT_MEDIA,
        "upload" => *CAT_UPLOAD,
        _ => *CAT,
    }
}

fn gst_level(level: &Level) -> gst::DebugLevel {
    match *level {
        Level::ERROR => gst::DebugLevel::Error,
        Level::WARN => gst::DebugLevel::Warning,
        Level::INFO => gst::DebugLevel::Info,
        Level::DEBUG => gst::DebugLevel::Debug,
        Level::TRACE => gst::DebugLevel::Log,
    }
}

fn enabled_in(cat: gst::DebugCategory, level: gst::DebugLevel) -> bool {
    use gst::glib::translate::IntoGlib;
    level.into_glib() <= cat.threshold().into_glib()
}

/// A `tracing` subscriber that forwards events to our GStreamer debug categories, with the
/// element it belongs to as object context. Spans are not recorded.
pub struct Forwarder {
    obj: Option<glib::WeakRef<gst::Object>>,
}

impl Forwarder {
    pub fn new(obj: Option<&gst::Object>) -> Self {
        Self {
            obj: obj.map(|o| o.downgrade()),
        }
    }
}

/// A dispatcher forwarding to GStreamer with `obj` as context.
pub fn dispatch_for(obj: &impl IsA<gst::Object>) -> tracing::Dispatch {
    tracing::Dispatch::new(Forwarder::new(Some(obj.upcast_ref())))
}

#[derive(Default)]
struct MessageVisitor {
    message: String,
    fields: String,
}

impl Visit for MessageVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}

impl Subscriber for Forwarder {
    fn register_callsite(&self, _metadata: &'static Metadata<'static>) -> Interest {
        // Thresholds change at run time (GST_DEBUG, gst_debug_set_threshold_*), so ask per event.
        Interest::sometimes()
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.is_event()
            && enabled_in(
                category_for_target(metadata.target()),
                gst_level(metadata.level()),
            )
    }

    fn new_span(&self, _span: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }

    fn record(&self, _span: &span::Id, _values: &span::Record<'_>) {}

    fn record_follows_from(&self, _span: &span::Id, _follows: &span::Id) {}

    fn event(&self, event: &Event<'_>) {
        let meta = event.metadata();
        let cat = category_for_target(meta.target());
        let level = gst_level(meta.level());
        let mut visitor = MessageVisitor::default();
        event.record(&mut visitor);
        let file = glib::GString::from(meta.file().unwrap_or("<core>"));
        let obj = self.obj.as_ref().and_then(|w| w.upgrade());
        cat.log(
            obj.as_ref(),
            level,
            file.as_gstr(),
            meta.module_path().unwrap_or(meta.target()),
            meta.line().unwrap_or(0),
            format_args!("{}{}", visitor.message, visitor.fields),
        );
    }

    fn enter(&self, _span: &span::Id) {}

    fn exit(&self, _span: &span::Id) {}
}

/// What a `log-config` file asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogConfig {
    /// `(category pattern, level)` pairs, applied in order.
    pub filter: Vec<(String, gst::DebugLevel)>,
    pub output: Option<PathBuf>,
    /// Lines that were skipped because they belong to the C++ SDK's log4cplus format.
    pub skipped_log4cplus_lines: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum LogConfigError {
    #[error("cannot read log-config file '{path}': {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("log-config file '{path}', line {line}: {problem}")]
    Syntax {
        path: String,
        line: usize,
        problem: String,
    },
    #[error("log-config file '{path}': cannot open output file '{output}': {source}")]
    Output {
        path: String,
        output: String,
        source: std::io::Error,
    },
}

fn parse_level(text: &str) -> Option<gst::DebugLevel> {
    use gst::DebugLevel::*;
    Some(match text.trim().to_ascii_lowercase().as_str() {
        "0" | "none" => None,
        "1" | "error" => Error,
        "2" | "warning" | "warn" => Warning,
        "3" | "fixme" => Fixme,
        "4" | "info" => Info,
        "5" | "debug" => Debug,
        "6" | "log" => Log,
        "7" | "trace" => Trace,
        "9" | "memdump" => Memdump,
        _ => return Option::None,
    })
}

impl LogConfig {
    /// Parses the text of a log-config file. `path` is only used in error messages.
    pub fn parse(path: &str, text: &str) -> Result<Self, LogConfigError> {
        let mut config = LogConfig::default();
        for (index, raw) in text.lines().enumerate() {
            let line_no = index + 1;
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let syntax = |problem: String| LogConfigError::Syntax {
                path: path.to_owned(),
                line: line_no,
                problem,
            };
            let Some((key, value)) = line.split_once('=') else {
                return Err(syntax(format!("expected 'key = value', found '{line}'")));
            };
            let (key, value) = (key.trim(), value.trim());
            if key.starts_with("log4cplus.") {
                config.skipped_log4cplus_lines += 1;
                continue;
            }
            match key {
                "filter" => {
                    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                        let Some((pattern, level)) = entry.rsplit_once(':') else {
                            return Err(syntax(format!(
                                "filter entry '{entry}' must be 'category:level', e.g. kvssink:4"
                            )));
                        };
                        let pattern = pattern.trim();
                        if !pattern.starts_with("kvssink") {
                            return Err(syntax(format!(
                                "filter entry '{entry}': only kvssink categories (kvssink, kvssink-media, kvssink-upload or kvssink*) can be set here; use GST_DEBUG for others"
                            )));
                        }
                        let Some(level) = parse_level(level) else {
                            return Err(syntax(format!(
                                "filter entry '{entry}': unknown level '{level}'; use 0-9 or none, error, warning, fixme, info, debug, log, trace, memdump"
                            )));
                        };
                        config.filter.push((pattern.to_owned(), level));
                    }
                }
                "output" => {
                    if value.is_empty() {
                        return Err(syntax("output needs a file path".to_owned()));
                    }
                    config.output = Some(PathBuf::from(value));
                }
                other => {
                    return Err(syntax(format!(
                        "unknown key '{other}'; the keys are 'filter' and 'output'"
                    )));
                }
            }
        }
        Ok(config)
    }

    /// Reads `path`. `Ok(None)` when the file does not exist and `explicit` is false.
    pub fn load(path: &str, explicit: bool) -> Result<Option<Self>, LogConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(path, &text).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => Ok(None),
            Err(source) => Err(LogConfigError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Applies the thresholds and opens the output file (once per path per process).
    pub fn apply(&self, config_path: &str) -> Result<(), LogConfigError> {
        for (pattern, level) in &self.filter {
            gst::log::set_threshold_for_name(pattern, *level);
        }
        if let Some(output) = &self.output {
            add_output(output).map_err(|source| LogConfigError::Output {
                path: config_path.to_owned(),
                output: output.display().to_string(),
                source,
            })?;
        }
        Ok(())
    }
}

static OUTPUTS: LazyLock<Mutex<HashMap<PathBuf, gst::log::DebugLogFunction>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn add_output(path: &Path) -> std::io::Result<()> {
    let mut outputs = OUTPUTS.lock().unwrap_or_else(|e| e.into_inner());
    if outputs.contains_key(path) {
        return Ok(());
    }
    let file = Mutex::new(OpenOptions::new().create(true).append(true).open(path)?);
    let function =
        gst::log::add_log_function(move |cat, level, file_name, function, line, obj, message| {
            if !cat.name().starts_with("kvssink") {
                return;
            }
            let Some(text) = message.get() else { return };
            let obj = obj.map(|o| o.to_string()).unwrap_or_default();
            let mut file: std::sync::MutexGuard<'_, File> =
                file.lock().unwrap_or_else(|e| e.into_inner());
            let _ = writeln!(
                file,
                "{} {:?} {} {}:{}:{}:{} {}",
                glib::DateTime::now_utc()
                    .and_then(|d| d.format("%FT%T.%fZ"))
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
                level,
                cat.name(),
                file_name,
                line,
                function,
                obj,
                text
            );
        });
    outputs.insert(path.to_owned(), function);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_filter_and_output() {
        gst::init().unwrap();
        let text = "# comment\n\nfilter = kvssink:4, kvssink-upload:debug # trailing\noutput = /tmp/x.log\n";
        let c = LogConfig::parse("f", text).unwrap();
        assert_eq!(
            c.filter,
            vec![
                ("kvssink".to_owned(), gst::DebugLevel::Info),
                ("kvssink-upload".to_owned(), gst::DebugLevel::Debug)
            ]
        );
        assert_eq!(c.output.as_deref(), Some(Path::new("/tmp/x.log")));
    }

    #[test]
    fn refuses_foreign_categories_bad_levels_and_keys() {
        gst::init().unwrap();
        let e = LogConfig::parse("f", "filter = GST_PADS:9").unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
        assert!(LogConfig::parse("f", "filter = kvssink:loud").is_err());
        assert!(LogConfig::parse("f", "filter = kvssink").is_err());
        let e = LogConfig::parse("f", "\nlevel = 3").unwrap_err();
        assert!(e.to_string().contains("line 2") && e.to_string().contains("'level'"));
        assert!(LogConfig::parse("f", "just words").is_err());
    }

    #[test]
    fn skips_log4cplus_files() {
        gst::init().unwrap();
        let text = "log4cplus.rootLogger=DEBUG, KvsConsoleAppender\nlog4cplus.appender.KvsConsoleAppender=log4cplus::ConsoleAppender\n";
        let c = LogConfig::parse("f", text).unwrap();
        assert_eq!(c.skipped_log4cplus_lines, 2);
        assert!(c.filter.is_empty());
    }

    #[test]
    fn missing_default_is_silent_missing_explicit_is_error() {
        let p = "/nonexistent/kvs_log_configuration";
        assert!(LogConfig::load(p, false).unwrap().is_none());
        assert!(matches!(
            LogConfig::load(p, true),
            Err(LogConfigError::Read { .. })
        ));
    }

    #[test]
    fn target_to_category() {
        gst::init().unwrap();
        assert_eq!(
            category_for_target("gstkvssink::media::mkv::cluster").name(),
            "kvssink-media"
        );
        assert_eq!(
            category_for_target("gstkvssink::upload").name(),
            "kvssink-upload"
        );
        assert_eq!(
            category_for_target("gstkvssink::kvssink::imp").name(),
            "kvssink"
        );
    }

    #[test]
    fn forwards_tracing_events_with_object_context() {
        gst::init().unwrap();
        let seen = std::sync::Arc::new(Mutex::new(Vec::<(String, String, String)>::new()));
        let sink = seen.clone();
        let f = gst::log::add_log_function(move |cat, _level, _file, _func, _line, obj, msg| {
            if cat.name() == "kvssink-media" {
                sink.lock().unwrap().push((
                    cat.name().to_owned(),
                    obj.map(|o| o.to_string()).unwrap_or_default(),
                    msg.get().map(|m| m.to_string()).unwrap_or_default(),
                ));
            }
        });
        CAT_MEDIA.set_threshold(gst::DebugLevel::Debug);
        let obj = gst::Bin::with_name("forwarder-test-bin");
        let d = dispatch_for(&obj);
        tracing::dispatcher::with_default(&d, || {
            tracing::debug!(target: "gstkvssink::media::mkv", frames = 3, "packed a cluster");
            tracing::trace!(target: "gstkvssink::media::mkv", "too detailed to show");
        });
        gst::log::remove_log_function(f);
        CAT_MEDIA.reset_threshold();
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert!(seen[0].1.contains("forwarder-test-bin"), "{seen:?}");
        assert_eq!(seen[0].2, "packed a cluster frames=3");
    }
}
