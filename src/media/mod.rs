//! The media core: everything between a buffer on a pad and the bytes of a KVS fragment, with no
//! GStreamer types, so it is unit- and property-tested on its own.
//!
//! ```text
//! caps ──▶ codec (CodecPrivate, Annex-B → length-prefixed)
//! buffer ─▶ timeline (KVS timecodes, repairs) ─▶ interleave (timestamp order across tracks)
//!         ─▶ fragmenter (one Cluster per key frame, pieces as frames are packed) ─▶ mkv (bytes)
//! ```
//!
//! [`muxer::StreamMuxer`] is the front door the element calls; [`fragment_metadata`] holds the
//! `kvs-add-metadata` tags that the fragmenter writes before a Cluster.

pub mod codec;
pub mod fragment_metadata;
pub mod fragmenter;
pub mod interleave;
pub mod mkv;
pub mod muxer;
pub mod timeline;
