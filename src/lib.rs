//! `kvssink` in Rust: a GStreamer sink that uploads H.264/H.265 video with AAC/G.711 audio to
//! Amazon Kinesis Video Streams, a drop-in replacement for the C++ `kvssink`.
//!
//! The plugin file is `libgstkvssink.so`; its element is `kvssink` (GType `GstRsKvsSink`, so it
//! can be installed next to the C++ plugin).
//!
//! The tree follows the data:
//! - [`media`]: the GStreamer-free media core — codec data, timestamps, interleaving, fragments,
//!   Matroska bytes;
//! - [`upload`]: the fragment store and the uploader — control plane, credentials, PutMedia,
//!   ACKs, TLS;
//! - [`kvssink`]: the element, which adapts GStreamer (pads, caps, events, properties, signals)
//!   to the two;
//! - `logging`: the GStreamer debug categories and the bridge from `tracing`.
#![allow(clippy::non_send_fields_in_send_ty, unused_doc_comments)]

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzz_api;
pub mod kvssink;
mod logging;
pub mod media;
pub mod upload;

use gst::glib;

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    logging::register_categories();
    kvssink::register(plugin)
}

gst::plugin_define!(
    kvssink,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    concat!(env!("CARGO_PKG_VERSION"), "-", env!("COMMIT_ID")),
    "MIT/X11",
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_REPOSITORY"),
    env!("BUILD_REL_DATE")
);
