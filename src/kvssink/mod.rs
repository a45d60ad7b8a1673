//! The `kvssink` element: a drop-in for the reference C++ element, as seen by `gst-inspect-1.0`
//! and by applications (factory, rank, klass, pad templates, properties, signals, the
//! `kvs-add-metadata` event).
//!
//! The element is thin: it maps pads, caps, events, properties and signals onto the
//! GStreamer-free core and does nothing else.

use gst::glib;
use gst::prelude::*;

mod caps;
mod fragment_ack;
mod imp;
pub mod settings;
mod stats;
mod stream;
mod ticker;

pub use fragment_ack::{AckType, FragmentAck, RESULT_OK, SEQUENCE_NUMBER_LEN};

glib::wrapper! {
    pub struct KvsSink(ObjectSubclass<imp::KvsSink>) @extends gst::Element, gst::Object;
}

/// `streaming-type`, with the reference's GType values and nicks.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstRsKvsSinkStreamingType")]
pub enum StreamingType {
    #[enum_value(name = "streaming type realtime", nick = "realtime")]
    Realtime = 0,
    #[enum_value(name = "streaming type near realtime", nick = "near-realtime")]
    NearRealtime = 1,
    #[enum_value(name = "streaming type offline", nick = "offline")]
    Offline = 2,
}

/// `GST_RANK_PRIMARY + 10`, as the reference registers itself.
pub const RANK: i32 = 266;

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "kvssink",
        gst::Rank::from(RANK),
        KvsSink::static_type(),
    )
}
