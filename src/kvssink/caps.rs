//! The pad template caps: the reference element's, so `gst-inspect-1.0 kvssink` and caps
//! negotiation of existing pipelines are unchanged.

/// `video_%u`: H.264 avc/au and H.265 au, at least 16x16.
pub fn video_template_caps() -> gst::Caps {
    let mut caps = gst::Caps::builder("video/x-h264")
        .field("stream-format", "avc")
        .field("alignment", "au")
        .field("width", gst::IntRange::new(16, i32::MAX))
        .field("height", gst::IntRange::new(16, i32::MAX))
        .build();
    caps.merge(
        gst::Caps::builder("video/x-h265")
            .field("alignment", "au")
            .field("width", gst::IntRange::new(16, i32::MAX))
            .field("height", gst::IntRange::new(16, i32::MAX))
            .build(),
    );
    caps
}

/// `audio_%u`: raw AAC (MPEG-2/4), A-law and µ-law.
pub fn audio_template_caps() -> gst::Caps {
    let mut caps = gst::Caps::builder("audio/mpeg")
        .field("mpegversion", gst::List::new([2i32, 4]))
        .field("stream-format", "raw")
        .field("channels", gst::IntRange::new(1, i32::MAX))
        .field("rate", gst::IntRange::new(1, i32::MAX))
        .build();
    for name in ["audio/x-alaw", "audio/x-mulaw"] {
        caps.merge(
            gst::Caps::builder(name)
                .field("channels", gst::List::new([1i32, 2]))
                .field("rate", gst::IntRange::new(8000, 192_000))
                .build(),
        );
    }
    caps
}
