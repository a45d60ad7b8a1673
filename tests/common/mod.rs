//! The one test-support module of the plugin's integration tests (`mod common;` in each): static
//! plugin registration, `tests/data`, the built `.so`, a parser for `gst-inspect-1.0` property
//! listings, and its parts:
//! - [`pipeline`]: running a pipeline through kvssink into the local endpoint and what arrived;
//! - [`examples`]: running the crate's examples as processes;
//! - [`mkv_check`]: checking stored Matroska with ffmpeg, mkvmerge and matroskademux;
//! - [`media`]: driving the media core directly and reading its Matroska back;
//! - [`endpoint`]: the local endpoint's own test helpers (SDK client, plain PutMedia client, MKV
//!   builders), shared with that crate's tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

mod no_instance_metadata;

#[path = "../../crates/kvs-local-endpoint/tests/common/mod.rs"]
#[allow(clippy::duplicate_mod)]
pub mod endpoint;
pub mod examples;
pub mod media;
pub mod mkv_check;
pub mod pipeline;

pub fn init() {
    use std::sync::Once;
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        gst::init().unwrap();
        gstkvssink::plugin_register_static().unwrap();
    });
}

/// `tests/data`: the test vectors kept in the repository (provenance in its README).
pub fn test_data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// The `libgstkvssink.so` of this build, next to this test binary. Cargo does not link the
/// cdylib for integration tests, so it is built here the first time it is needed.
pub fn built_plugin() -> PathBuf {
    use std::sync::Once;
    static BUILD: Once = Once::new();
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_owned();
    let so = profile_dir.join("libgstkvssink.so");
    BUILD.call_once(|| {
        let target_dir = profile_dir.parent().unwrap();
        let status = Command::new(env!("CARGO"))
            .args(["build", "--lib", "--locked"])
            .arg("--target-dir")
            .arg(target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building libgstkvssink.so failed");
    });
    assert!(so.is_file(), "{} was not built", so.display());
    so
}

/// A command for a GStreamer tool that sees only our built plugin (copied into a private
/// directory with its own registry) besides the system plugins.
pub fn gst_tool(tool: &str) -> (Command, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(built_plugin(), dir.path().join("libgstkvssink.so")).unwrap();
    let mut cmd = Command::new(tool);
    cmd.env("GST_PLUGIN_PATH", dir.path())
        .env("GST_REGISTRY", dir.path().join("registry.bin"))
        .env_remove("GST_DEBUG");
    (cmd, dir)
}

/// One property of a `gst-inspect-1.0` listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InspectProperty {
    pub name: String,
    pub flags: String,
    /// The type line, e.g. `Unsigned Integer. Range: 0 - 4294967295 Default: 2`.
    pub type_line: String,
    /// Enum value lines, e.g. `(0): realtime - streaming type realtime`.
    pub enum_values: Vec<String>,
}

fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Parses the "Element Properties:" section of a `gst-inspect-1.0` output.
pub fn parse_inspect_properties(text: &str) -> Vec<InspectProperty> {
    let mut props = Vec::new();
    let mut in_section = false;
    let mut current: Option<InspectProperty> = None;
    for line in text.lines() {
        if line.starts_with("Element Properties:") {
            in_section = true;
            continue;
        }
        if !in_section {
            continue;
        }
        if !line.starts_with(' ') && !line.is_empty() {
            break;
        }
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        if indent == 2 {
            if let Some(p) = current.take() {
                props.push(p);
            }
            let name = trimmed.split(':').next().unwrap().trim().to_owned();
            current = Some(InspectProperty {
                name,
                flags: String::new(),
                type_line: String::new(),
                enum_values: Vec::new(),
            });
        } else if let Some(p) = current.as_mut() {
            if let Some(flags) = trimmed.strip_prefix("flags:") {
                p.flags = squash(flags);
            } else if trimmed.starts_with('(') {
                p.enum_values.push(squash(trimmed));
            } else if p.type_line.is_empty() {
                p.type_line = squash(trimmed);
            }
        }
    }
    if let Some(p) = current.take() {
        props.push(p);
    }
    props
}

/// The reference element's `gst-inspect-1.0 kvssink`.
pub fn reference_inspect() -> String {
    std::fs::read_to_string(test_data_dir().join("cpp-kvssink-inspect.txt")).unwrap()
}

/// Pad template sections ("SINK template: ..." up to the next blank line), whitespace-squashed.
pub fn parse_inspect_templates(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix("SINK template: ") {
            let mut body = Vec::new();
            while let Some(next) = lines.peek() {
                let n = next.trim();
                if n.is_empty() || n.starts_with("SINK template:") {
                    break;
                }
                body.push(squash(n));
                lines.next();
            }
            out.push((name.trim_matches('\'').to_owned(), body));
        }
    }
    out
}

/// Collects the bus messages posted so far.
pub fn drain_bus(bus: &gst::Bus) -> Vec<gst::Message> {
    std::iter::from_fn(|| bus.pop()).collect()
}
