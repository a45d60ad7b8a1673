//! The element contract of issue #2: what `gst-inspect-1.0` and applications see must match the
//! reference C++ `kvssink` (factory, rank, klass, templates, 39 properties, signals), the
//! configuration checks at NULL→READY, pads, EOS, and logging configuration.

mod common;

use common::*;
use gst::glib;
use gst::prelude::*;

/// A kvssink with (fake) credentials, so NULL→READY passes the credentials check.
fn element() -> gst::Element {
    init();
    gst::ElementFactory::make("kvssink")
        .property("access-key", "AKIDTEST")
        .property("secret-key", "not-a-real-secret")
        .build()
        .unwrap()
}

#[test]
fn factory_metadata_matches_reference() {
    init();
    let factory = gst::ElementFactory::find("kvssink").expect("kvssink registered");
    assert_eq!(factory.rank(), gst::Rank::from(266));
    assert_eq!(
        factory.metadata(gst::ELEMENT_METADATA_LONGNAME),
        Some("KVS Sink")
    );
    assert_eq!(
        factory.metadata(gst::ELEMENT_METADATA_KLASS),
        Some("Sink/Video/Network")
    );
    assert_eq!(
        factory.metadata(gst::ELEMENT_METADATA_DESCRIPTION),
        Some("GStreamer AWS KVS plugin")
    );
    let e = element();
    assert_eq!(e.type_().name(), "GstRsKvsSink");
    assert_ne!(e.type_().name(), "GstKvsSink");
    assert!(e.element_flags().contains(gst::ElementFlags::SINK));
    assert!(e.name().starts_with("kvssink"), "default name {}", e.name());
}

/// Compares our listing with the reference's, property by property. The only differences allowed
/// are the run-time defaults (`user-agent` carries our name and version, `file-start-time` is
/// "now") and the enum's GType name (ours must differ so both plugins can be installed).
fn assert_properties_match(ours: &[InspectProperty]) {
    let reference = parse_inspect_properties(&reference_inspect());
    let element_props: Vec<_> = reference
        .iter()
        .filter(|p| p.name != "name" && p.name != "parent")
        .collect();
    assert_eq!(
        element_props.len(),
        39,
        "the reference lists 39 element properties"
    );
    // One documented addition: the read-only `stats` structure.
    let (added, ours): (Vec<_>, Vec<_>) = ours.iter().cloned().partition(|p| p.name == "stats");
    assert_eq!(added.len(), 1, "the stats property");
    assert_eq!(added[0].flags, "readable");
    assert!(
        added[0].type_line.contains("GstStructure"),
        "{}",
        added[0].type_line
    );
    let ours = &ours[..];
    let names = |v: &[InspectProperty]| v.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(ours), names(&reference));
    for (r, o) in reference.iter().zip(ours) {
        assert_eq!(o.flags, r.flags, "flags of {}", r.name);
        assert_eq!(o.enum_values, r.enum_values, "enum values of {}", r.name);
        match r.name.as_str() {
            "user-agent" => assert_eq!(
                o.type_line,
                format!(
                    "String. Default: \"AWS-SDK-KVS-RS-CLIENT/{}\"",
                    env!("CARGO_PKG_VERSION")
                )
            ),
            "file-start-time" => {
                let prefix = "Unsigned Integer64. Range: 0 - 18446744073709551615 Default: ";
                assert!(r.type_line.starts_with(prefix));
                let value: u64 = o
                    .type_line
                    .strip_prefix(prefix)
                    .unwrap_or_else(|| panic!("{}", o.type_line))
                    .parse()
                    .unwrap();
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs();
                assert!(
                    now.abs_diff(value) < 600,
                    "file-start-time default {value} is not now"
                );
            }
            "streaming-type" => assert_eq!(
                o.type_line,
                r.type_line
                    .replace("GstKvsSinkStreamingType", "GstRsKvsSinkStreamingType")
            ),
            _ => assert_eq!(o.type_line, r.type_line, "type/range/default of {}", r.name),
        }
    }
}

#[test]
fn gst_inspect_of_built_plugin_matches_reference() {
    init();
    let (mut cmd, _dir) = gst_tool("gst-inspect-1.0");
    let out = cmd.arg("kvssink").output().expect("gst-inspect-1.0 runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "gst-inspect failed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("libgstkvssink.so"), "{text}");
    assert!(text.contains("primary + 10 (266)"));
    assert!(text.contains("Sink/Video/Network"));
    assert_properties_match(&parse_inspect_properties(&text));
    // One documented addition: H.264 also in byte-stream (Annex-B) format.
    let reference_templates: Vec<_> = parse_inspect_templates(&reference_inspect())
        .into_iter()
        .map(|(name, lines)| {
            let lines = lines
                .into_iter()
                .map(|l| {
                    if name == "video_%u" && l == "stream-format: avc" {
                        "stream-format: { (string)avc, (string)byte-stream }".to_owned()
                    } else {
                        l
                    }
                })
                .collect::<Vec<_>>();
            (name, lines)
        })
        .collect();
    let templates = parse_inspect_templates(&text);
    assert_eq!(templates, reference_templates);
    for signal in [
        "\"stream-error\" :  void user_function (GstElement* object,",
        "guint64 arg0,",
        "\"fragment-ack\" :  void user_function (GstElement* object,",
        "\"stream-client-metric\" :  void user_function (GstElement* object,",
    ] {
        assert!(text.contains(signal), "missing {signal}");
    }
    let actions = text
        .split("Element Actions:")
        .nth(1)
        .expect("actions section");
    assert!(actions.contains("fragment-ack") && actions.contains("stream-client-metric"));
}

/// The same table, checked in-process against the pspecs of the statically registered element.
#[test]
fn property_specs_match_reference_table() {
    init();
    let e = gst::ElementFactory::make("kvssink").build().unwrap();
    let reference = parse_inspect_properties(&reference_inspect());
    for r in reference
        .iter()
        .filter(|p| p.name != "name" && p.name != "parent")
    {
        let pspec = e
            .find_property(&r.name)
            .unwrap_or_else(|| panic!("missing property {}", r.name));
        assert!(
            pspec.flags().contains(glib::ParamFlags::READWRITE),
            "{}",
            r.name
        );
        assert!(
            !pspec.flags().contains(gst::PARAM_FLAG_MUTABLE_PLAYING),
            "{} must not be mutable in PLAYING, as in the reference",
            r.name
        );
        let expected_type = match r.type_line.split('.').next().unwrap() {
            "Boolean" => glib::Type::BOOL,
            "String" => glib::Type::STRING,
            "Unsigned Integer" => glib::Type::U32,
            "Unsigned Integer64" => glib::Type::U64,
            t if t.starts_with("Boxed pointer") => gst::Structure::static_type(),
            t if t.starts_with("Enum") => pspec.value_type(),
            t => panic!("unexpected type {t}"),
        };
        assert_eq!(pspec.value_type(), expected_type, "type of {}", r.name);
        if let Some(range) = r.type_line.split("Range: ").nth(1) {
            let mut it = range.split_whitespace();
            let min = it.next().unwrap();
            let max = it.nth(1).unwrap();
            if let Some(p) = pspec.downcast_ref::<glib::ParamSpecUInt>() {
                assert_eq!(
                    (p.minimum().to_string(), p.maximum().to_string()),
                    (min.into(), max.into()),
                    "{}",
                    r.name
                );
                let default = r.type_line.split("Default: ").nth(1).unwrap().trim();
                assert_eq!(
                    p.default_value().to_string(),
                    default,
                    "default of {}",
                    r.name
                );
                assert_eq!(
                    e.property::<u32>(&r.name).to_string(),
                    default,
                    "value of {}",
                    r.name
                );
            } else if let Some(p) = pspec.downcast_ref::<glib::ParamSpecUInt64>() {
                assert_eq!(
                    (p.minimum().to_string(), p.maximum().to_string()),
                    (min.into(), max.into())
                );
            }
        }
        if r.type_line.starts_with("Boolean") {
            let default = r.type_line.ends_with("true");
            assert_eq!(e.property::<bool>(&r.name), default, "value of {}", r.name);
        }
        if r.type_line.starts_with("String") && r.name != "user-agent" {
            let default = r.type_line.split("Default: ").nth(1).unwrap();
            let value = e.property::<Option<String>>(&r.name);
            match default {
                "null" => assert_eq!(value, None, "{}", r.name),
                d => assert_eq!(Some(d.trim_matches('"').to_owned()), value, "{}", r.name),
            }
        }
    }
    let st = e.find_property("streaming-type").unwrap();
    let st = st.downcast_ref::<glib::ParamSpecEnum>().unwrap();
    let class = st.enum_class();
    let values: Vec<_> = class
        .values()
        .iter()
        .map(|v| (v.value(), v.nick().to_owned()))
        .collect();
    assert_eq!(
        values,
        vec![
            (0, "realtime".into()),
            (1, "near-realtime".into()),
            (2, "offline".into())
        ]
    );
}

#[test]
fn structure_properties_round_trip() {
    let e = element();
    let tags = gst::Structure::builder("tags")
        .field("team", "video")
        .build();
    e.set_property("stream-tags", &tags);
    assert_eq!(
        e.property::<Option<gst::Structure>>("stream-tags"),
        Some(tags)
    );
    assert_eq!(
        e.property::<Option<gst::Structure>>("iot-certificate"),
        None
    );
    e.set_property_from_str("streaming-type", "offline");
    assert_eq!(
        e.property_value("streaming-type")
            .get::<gstkvssink::kvssink::StreamingType>()
            .unwrap(),
        gstkvssink::kvssink::StreamingType::Offline
    );
}

fn assert_ready_fails(e: &gst::Element, property: &str) -> String {
    let bus = gst::Bus::new();
    e.set_bus(Some(&bus));
    assert!(
        e.set_state(gst::State::Ready).is_err(),
        "NULL→READY must fail for {property}"
    );
    let errors: Vec<String> = drain_bus(&bus)
        .iter()
        .filter_map(|m| match m.view() {
            gst::MessageView::Error(err) => Some(err.error().to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "exactly one error for {property}: {errors:?}"
    );
    assert!(
        errors[0].contains(&format!("'{property}'")),
        "error must name {property}: {}",
        errors[0]
    );
    e.set_state(gst::State::Null).unwrap();
    errors[0].clone()
}

#[test]
fn invalid_configuration_fails_null_to_ready_naming_the_property() {
    type Setup = fn(&gst::Element);
    let cases: &[(&str, Setup, &str)] = &[
        (
            "fragment-duration",
            |e| {
                e.set_property("fragment-duration", 40_000u32);
                e.set_property("key-frame-fragmentation", false);
            },
            "40000",
        ),
        (
            "stream-name",
            |e| e.set_property("stream-name", "front door"),
            "front door",
        ),
        (
            "stream-name",
            |e| e.set_property("stream-name", "x".repeat(257)),
            "256",
        ),
        (
            "user-agent",
            |e| e.set_property("user-agent", "u".repeat(33)),
            "32",
        ),
        (
            "codec-id",
            |e| e.set_property("codec-id", "c".repeat(33)),
            "32",
        ),
        (
            "track-name",
            |e| e.set_property("track-name", "t".repeat(33)),
            "32",
        ),
        (
            "timecode-scale",
            |e| e.set_property("timecode-scale", 1001u32),
            "1001",
        ),
        (
            "replay-duration",
            |e| e.set_property("replay-duration", 200u32),
            "buffer-duration",
        ),
        (
            "storage-size",
            |e| e.set_property("storage-size", 0u32),
            "1 MB",
        ),
        (
            "stream-tags",
            |e| {
                e.set_property(
                    "stream-tags",
                    gst::Structure::builder("tags").field("n", 1i32).build(),
                )
            },
            "string",
        ),
        (
            "iot-certificate",
            |e| {
                e.set_property(
                    "iot-certificate",
                    gst::Structure::builder("iot")
                        .field("endpoint", "x.example")
                        .field("cert-path", "/c")
                        .field("key-path", "/k")
                        .field("ca-path", "/ca")
                        .field("role-aliases", "r")
                        .field("thing", "t")
                        .build(),
                )
            },
            "unknown field 'thing'",
        ),
        (
            "file-start-time",
            |e| {
                e.set_property_from_str("streaming-type", "offline");
                e.set_property("file-start-time", 1_700_000_000_000u64);
            },
            "milliseconds",
        ),
    ];
    for (property, setup, detail) in cases {
        let e = element();
        setup(&e);
        let msg = assert_ready_fails(&e, property);
        assert!(
            msg.contains(detail),
            "{property}: '{msg}' should mention '{detail}'"
        );
    }
}

#[test]
fn valid_configuration_reaches_ready_and_back() {
    let e = element();
    e.set_property("fragment-duration", 30_000u32);
    e.set_property("key-frame-fragmentation", false);
    e.set_property("stream-name", "camera-1_front.door");
    for _ in 0..3 {
        e.set_state(gst::State::Ready).unwrap();
        e.set_state(gst::State::Null).unwrap();
    }
}

#[test]
fn explicit_missing_log_config_is_an_error() {
    let e = element();
    e.set_property("log-config", "/nonexistent/dir/kvs_log_configuration");
    let msg = assert_ready_fails_with(&e);
    assert!(
        msg.contains("/nonexistent/dir/kvs_log_configuration"),
        "{msg}"
    );
}

fn assert_ready_fails_with(e: &gst::Element) -> String {
    let bus = gst::Bus::new();
    e.set_bus(Some(&bus));
    assert!(e.set_state(gst::State::Ready).is_err());
    drain_bus(&bus)
        .iter()
        .find_map(|m| match m.view() {
            gst::MessageView::Error(err) => Some(err.error().to_string()),
            _ => None,
        })
        .expect("an error message")
}

#[test]
fn log_config_file_sets_thresholds_and_output() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("kvssink.log");
    let config = dir.path().join("kvs_log_configuration");
    std::fs::write(
        &config,
        format!(
            "# test\nfilter = kvssink-upload:6\noutput = {}\n",
            output.display()
        ),
    )
    .unwrap();
    let e = element();
    e.set_property("log-config", config.to_str().unwrap());
    e.set_state(gst::State::Ready).unwrap();
    let cat = gst::DebugCategory::get("kvssink-upload").unwrap();
    assert_eq!(cat.threshold(), gst::DebugLevel::Log);
    gst::log!(cat, obj = &e, "a message for the output file");
    e.set_state(gst::State::Null).unwrap();
    let text = std::fs::read_to_string(&output).unwrap();
    assert!(text.contains("a message for the output file"), "{text}");
    assert!(text.contains("kvssink-upload"), "{text}");
    cat.reset_threshold();

    let bad = dir.path().join("bad");
    std::fs::write(&bad, "filter = kvssink:4\nverbosity = 3\n").unwrap();
    let e = element();
    e.set_property("log-config", bad.to_str().unwrap());
    let msg = assert_ready_fails_with(&e);
    assert!(msg.contains("line 2") && msg.contains("verbosity"), "{msg}");
}

#[test]
fn request_pads_at_most_one_video_and_one_audio() {
    let e = element();
    let bus = gst::Bus::new();
    e.set_bus(Some(&bus));
    let v = e.request_pad_simple("video_%u").expect("video pad");
    assert_eq!(v.name(), "video_0");
    let a = e.request_pad_simple("audio_%u").expect("audio pad");
    assert_eq!(a.name(), "audio_0");
    assert!(e.request_pad_simple("video_%u").is_none());
    assert!(e.request_pad_simple("audio_%u").is_none());
    let warnings: Vec<String> = drain_bus(&bus)
        .iter()
        .filter_map(|m| match m.view() {
            gst::MessageView::Warning(w) => Some(w.error().to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[0].contains("at most one video pad"),
        "{warnings:?}"
    );
    e.release_request_pad(&v);
    assert_eq!(e.sink_pads().len(), 1);
    let v2 = e
        .request_pad_simple("video_%u")
        .expect("a video pad again after release");
    assert_eq!(v2.name(), "video_1");
}

#[test]
fn eos_is_posted_once_when_all_pads_are_eos() {
    let e = element();
    let mut hv = gst_check::Harness::with_element(&e, Some("video_%u"), None);
    let mut ha = gst_check::Harness::with_element(&e, Some("audio_%u"), None);
    let bus = gst::Bus::new();
    e.set_bus(Some(&bus));
    hv.play();
    ha.play();
    let eos_count = |bus: &gst::Bus| {
        drain_bus(bus)
            .iter()
            .filter(|m| matches!(m.view(), gst::MessageView::Eos(_)))
            .count()
    };
    assert!(hv.push_event(gst::event::Eos::new()));
    assert_eq!(
        eos_count(&bus),
        0,
        "one pad at EOS is not the end of the stream"
    );
    assert!(ha.push_event(gst::event::Eos::new()));
    assert_eq!(eos_count(&bus), 1);
    // A pad at EOS refuses further events; either way no second EOS is posted.
    let _ = ha.push_event(gst::event::Eos::new());
    assert_eq!(eos_count(&bus), 0, "EOS is posted once");

    // A flush starts a new stream: EOS can be posted again.
    for h in [&mut hv, &mut ha] {
        h.push_event(gst::event::FlushStart::new());
        h.push_event(gst::event::FlushStop::new(true));
    }
    assert!(hv.push_event(gst::event::Eos::new()));
    assert_eq!(eos_count(&bus), 0);
    assert!(ha.push_event(gst::event::Eos::new()));
    assert_eq!(eos_count(&bus), 1);
}

#[test]
fn releasing_the_last_running_pad_mid_stream_completes_eos() {
    let e = element();
    let mut hv = gst_check::Harness::with_element(&e, Some("video_%u"), None);
    let ha = gst_check::Harness::with_element(&e, Some("audio_%u"), None);
    let bus = gst::Bus::new();
    e.set_bus(Some(&bus));
    hv.play();
    assert!(hv.push_event(gst::event::Eos::new()));
    let audio = ha.element().unwrap().static_pad("audio_0").unwrap();
    drop(ha);
    if audio.parent().is_some() {
        e.release_request_pad(&audio);
    }
    assert_eq!(e.sink_pads().len(), 1);
    let eos = drain_bus(&bus)
        .iter()
        .filter(|m| matches!(m.view(), gst::MessageView::Eos(_)))
        .count();
    assert_eq!(eos, 1);
}

#[test]
fn signals_have_reference_signatures() {
    let e = element();
    let check = |name: &str, param: glib::Type, action: bool| {
        let id = glib::subclass::SignalId::lookup(name, e.type_())
            .unwrap_or_else(|| panic!("signal {name}"));
        let q = id.query();
        assert_eq!(q.return_type().type_(), glib::Type::UNIT, "{name}");
        let params: Vec<_> = q.param_types().iter().map(|t| t.type_()).collect();
        assert_eq!(params, vec![param], "{name}");
        assert_eq!(
            q.flags().contains(glib::SignalFlags::ACTION),
            action,
            "{name}"
        );
    };
    check("stream-error", glib::Type::U64, false);
    check("fragment-ack", glib::Type::POINTER, true);
    check("stream-client-metric", glib::Type::POINTER, true);
}

#[test]
fn fragment_ack_handler_reads_the_c_struct() {
    use gstkvssink::kvssink::{AckType, FragmentAck};
    let e = element();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let s = seen.clone();
    e.connect("fragment-ack", false, move |args| {
        let ptr = args[1].get::<glib::Pointer>().unwrap() as *const FragmentAck;
        // SAFETY: the emitter passes a valid FragmentAck for the duration of the emission.
        let ack = unsafe { *ptr };
        *s.lock().unwrap() = Some((
            ack.ack_type,
            ack.timestamp,
            ack.fragment_number().to_owned(),
            ack.result,
        ));
        None
    });
    let ack = FragmentAck::new(AckType::Persisted, 1234, "9134385", 200);
    e.emit_by_name::<()>(
        "fragment-ack",
        &[&(&ack as *const FragmentAck as glib::Pointer)],
    );
    assert_eq!(
        seen.lock().unwrap().clone(),
        Some((AckType::Persisted, 1234, "9134385".to_owned(), 200))
    );
}

#[test]
fn gst_launch_with_bad_fragment_duration_fails_at_start() {
    init();
    let (mut cmd, _dir) = gst_tool("gst-launch-1.0");
    let out = cmd
        .args([
            "videotestsrc",
            "num-buffers=1",
            "!",
            "x264enc",
            "!",
            "h264parse",
            "!",
            "kvssink",
            "stream-name=x",
            "fragment-duration=40000",
            "key-frame-fragmentation=false",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        all.contains("'fragment-duration'") && all.contains("40000"),
        "{all}"
    );
}

#[test]
fn aws_default_region_overrides_and_is_checked() {
    init();
    let (mut cmd, _dir) = gst_tool("gst-launch-1.0");
    let out = cmd
        .env("AWS_DEFAULT_REGION", "Not A Region")
        .args([
            "fakesrc",
            "num-buffers=0",
            "!",
            "kvssink",
            "aws-region=eu-west-1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        all.contains("aws-region (from AWS_DEFAULT_REGION)") && all.contains("Not A Region"),
        "{all}"
    );
}

#[test]
fn missing_credentials_fail_the_start_listing_what_was_tried() {
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_some() {
        eprintln!("skipped: AWS_ACCESS_KEY_ID is set in this environment");
        return;
    }
    init();
    let e = gst::ElementFactory::make("kvssink").build().unwrap();
    let msg = assert_ready_fails_with(&e);
    assert!(
        msg.contains("access-key") && msg.contains("AWS_ACCESS_KEY_ID"),
        "{msg}"
    );
}
