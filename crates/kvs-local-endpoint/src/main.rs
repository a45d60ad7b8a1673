//! Runs the local KVS-compatible endpoint by hand.
//!
//! ```text
//! cargo run --release --bin kvs_local_endpoint -- \
//!     --port 8080 --stream my-stream --verbose
//! ```
//!
//! It prints its URL and the environment that points `kvssink` at it, then serves until
//! interrupted. Persisted fragments land in `--storage-dir` (default `$TMPDIR/kvs-local-endpoint`) as
//! `<stream>.mkv`, playable with `ffplay` or `gst-play-1.0`. `curl <url>/_local/streams`,
//! `/_local/streams/<name>/fragments`, `/_local/sessions` and `/_local/requests` show what arrived;
//! `<url>/_local/` is a page with the streams, their fragments and a live player, and
//! `/_local/streams/<name>/hls?PlaybackMode=LIVE|ON_DEMAND` opens an HLS session (unsigned).
//! `--iot` also serves the AWS IoT credentials provider (mutual TLS) and prints a ready
//! `iot-certificate` value. `--help` lists the options, fault injection included.

use std::path::PathBuf;
use std::time::Duration;

use kvs_local_endpoint::{
    AckDrop, AckEventType, Config, Credentials, Disconnect, HttpFault, IotEndpointConfig,
    LocalEndpoint, Trigger,
};

const HELP: &str = "\
kvs_local_endpoint: a local Kinesis Video Streams endpoint (control plane, PutMedia,
GetMedia, ListFragments, GetMediaForFragmentList)

Options:
  --bind ADDR                 address to listen on (default 127.0.0.1)
  --port N                    port (default 0: any free port)
  --region R                  region of the credential scope (default us-west-2)
  --access-key K --secret-key S [--session-token T]
                              accepted credentials (default AKIDLOCALKVSEXAMPLE / local-kvs-secret)
  --storage-dir DIR           where fragments are stored (default $TMPDIR/kvs-local-endpoint)
  --stream NAME               create this stream at start (repeatable)
  --retention HOURS           retention of --stream streams (default 2; 0: no PERSISTED ACKs)
  --tls                       serve HTTPS with a generated certificate (printed as KVSSINK_CA_CERT_PATH)
  --max-fragment-duration-ms N   ERROR 4002 above this (default 10000)
  --max-connection-duration-s N  ERROR 4003 after this (default 2700)
  --idle-timeout-s N          end a PutMedia response after N s without data (default 30)
  --uplink-bps N              read each PutMedia body at most N bits/s (a device's uplink)
  --record-frame-arrivals     record when each block was read (frame_arrivals in
                              /_local/streams/NAME/fragments)
  --activation-delay-ms N     streams stay CREATING this long (default 0)
  --credential-lifetime SECS  credentials (given, added, IoT-minted) expire after SECS seconds;
                              then new requests get ExpiredTokenException (default: never;
                              IoT-minted: 3600)
  --iot                       also serve the AWS IoT credentials provider (mutual TLS, own port);
                              prints the iot-certificate property for kvssink
  --iot-role-alias NAME       role alias the IoT endpoint knows (repeatable; default kvs-local-role-alias)
  --iot-thing NAME            thing name it accepts (repeatable; default: any)
  --verbose                   log requests, sessions, fragments and ACKs (RUST_LOG overrides)
  --fault SPEC                arm a fault (repeatable):
        close-after-bytes=N | reset-after-bytes=N      end the next PutMedia connection
        close-at-fragment=K | reset-at-fragment=K      … when its fragment K begins
        stall=N:MS                                     stop reading for MS ms after N body bytes
        delay-acks=MS                                  send every ACK MS ms late
        drop-acks=TYPES                                drop ACKs of these types (comma list, e.g. PERSISTED)
        error-ack=K:ID                                 ERROR ACK with ErrorId ID for fragment K
        fail-control-plane=N:KIND                      next N control-plane calls fail; KIND is
                                                       500, 503, throttle, 404 or 401
        expire-credentials-after=S                     credentials expire S seconds after start
";

fn parse_fault(spec: &str, ep: &LocalEndpoint) -> Result<(), String> {
    let f = ep.faults();
    let (name, value) = spec.split_once('=').ok_or(format!("bad fault '{spec}'"))?;
    let num = |s: &str| {
        s.parse::<u64>()
            .map_err(|_| format!("bad number in '{spec}'"))
    };
    let pair = |s: &str| -> Result<(u64, u64), String> {
        let (a, b) = s
            .split_once(':')
            .ok_or(format!("expected A:B in '{spec}'"))?;
        Ok((num(a)?, num(b)?))
    };
    match name {
        "close-after-bytes" => f.close_after_bytes(num(value)?),
        "reset-after-bytes" => f.reset_after_bytes(num(value)?),
        "close-at-fragment" => f.disconnect(Trigger::Fragment(num(value)?), Disconnect::Close),
        "reset-at-fragment" => f.disconnect(Trigger::Fragment(num(value)?), Disconnect::Reset),
        "stall" => {
            let (n, ms) = pair(value)?;
            f.stall(Trigger::Bytes(n), Duration::from_millis(ms));
        }
        "delay-acks" => f.delay_acks(Duration::from_millis(num(value)?)),
        "drop-acks" => {
            let types = value
                .split(',')
                .filter(|t| !t.is_empty())
                .map(|t| {
                    serde_json::from_value::<AckEventType>(serde_json::Value::String(
                        t.to_uppercase(),
                    ))
                    .map_err(|_| format!("unknown ACK type '{t}'"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            f.drop_acks(AckDrop {
                event_types: types,
                ..Default::default()
            });
        }
        "error-ack" => {
            let (k, id) = pair(value)?;
            f.error_ack(k, id as u32);
        }
        "fail-control-plane" => {
            let (n, kind) = value
                .split_once(':')
                .ok_or(format!("expected N:KIND in '{spec}'"))?;
            let fault = match kind {
                "500" => HttpFault::internal_error(),
                "503" => HttpFault::service_unavailable(),
                "throttle" => HttpFault::throttling(),
                "404" => HttpFault::not_found(),
                "401" => HttpFault::not_authorized(),
                other => return Err(format!("unknown control-plane fault '{other}'")),
            };
            f.fail_requests(num(n)? as u32, fault);
        }
        "expire-credentials-after" => {
            let after = Duration::from_secs(num(value)?);
            std::thread::spawn(move || {
                std::thread::sleep(after);
                f.expire_credentials();
                eprintln!("credentials expired");
            });
        }
        other => return Err(format!("unknown fault '{other}'")),
    }
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}\n\n{HELP}");
        std::process::exit(2);
    }
}

fn run() -> Result<(), String> {
    let mut config = Config {
        storage_dir: Some(std::env::temp_dir().join("kvs-local-endpoint")),
        ..Default::default()
    };
    let mut bind_ip = "127.0.0.1".to_owned();
    let mut port = 0u16;
    let mut streams = Vec::new();
    let mut retention = 2u32;
    let mut faults = Vec::new();
    let mut verbose = false;
    let (mut ak, mut sk, mut token) = (None, None, None);
    let mut iot: Option<IotEndpointConfig> = None;
    let (mut aliases, mut things) = (Vec::new(), Vec::new());

    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        let ms = |v: String| {
            v.parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|e| e.to_string())
        };
        let secs = |v: String| {
            v.parse::<u64>()
                .map(Duration::from_secs)
                .map_err(|e| e.to_string())
        };
        match arg.as_str() {
            "--help" | "-h" => {
                print!("{HELP}");
                return Ok(());
            }
            "--bind" => bind_ip = value()?,
            "--port" => port = value()?.parse().map_err(|e| format!("--port: {e}"))?,
            "--region" => config.region = value()?,
            "--access-key" => ak = Some(value()?),
            "--secret-key" => sk = Some(value()?),
            "--session-token" => token = Some(value()?),
            "--storage-dir" => config.storage_dir = Some(PathBuf::from(value()?)),
            "--stream" => streams.push(value()?),
            "--retention" => {
                retention = value()?.parse().map_err(|e| format!("--retention: {e}"))?
            }
            "--tls" => config.tls = true,
            "--max-fragment-duration-ms" => config.limits.max_fragment_duration = ms(value()?)?,
            "--max-connection-duration-s" => config.max_connection_duration = secs(value()?)?,
            "--idle-timeout-s" => config.idle_timeout = secs(value()?)?,
            "--uplink-bps" => {
                config.uplink_bps =
                    Some(value()?.parse().map_err(|e| format!("--uplink-bps: {e}"))?)
            }
            "--record-frame-arrivals" => config.record_frame_arrivals = true,
            "--activation-delay-ms" => config.stream_activation_delay = ms(value()?)?,
            "--credential-lifetime" => config.credential_lifetime = Some(secs(value()?)?),
            "--iot" => iot = Some(IotEndpointConfig::default()),
            "--iot-role-alias" => aliases.push(value()?),
            "--iot-thing" => things.push(value()?),
            "--verbose" | "-v" => verbose = true,
            "--fault" => faults.push(value()?),
            other => return Err(format!("unknown option {other}")),
        }
    }
    if let Some(c) = iot.as_mut() {
        if !aliases.is_empty() {
            c.role_aliases = aliases;
        }
        c.thing_names = things;
    } else if !aliases.is_empty() || !things.is_empty() {
        return Err("--iot-role-alias and --iot-thing need --iot".into());
    }
    config.iot = iot;
    config.bind = format!("{bind_ip}:{port}")
        .parse()
        .map_err(|e| format!("--bind/--port: {e}"))?;
    if ak.is_some() || sk.is_some() {
        let mut c = Credentials::new(
            ak.as_deref().ok_or("--secret-key needs --access-key")?,
            sk.as_deref().ok_or("--access-key needs --secret-key")?,
        );
        if let Some(t) = &token {
            c = c.with_session_token(t);
        }
        config.credentials = c;
    }
    if verbose {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("kvs_local_endpoint=debug"));
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }

    let config_lifetime = config.credential_lifetime;
    let ep = LocalEndpoint::start(config).map_err(|e| e.to_string())?;
    for s in &streams {
        ep.create_stream(s, retention).map_err(|e| e.to_string())?;
    }
    for f in &faults {
        parse_fault(f, &ep)?;
    }
    println!("KVS local endpoint listening on {}", ep.url());
    println!(
        "storage: {} (<stream>.mkv per stream)",
        ep.storage_dir().display()
    );
    if !streams.is_empty() {
        println!("streams: {}", streams.join(", "));
    }
    println!("\n# point kvssink at it:");
    for (k, v) in ep.env() {
        println!("export {k}={v}");
    }
    if let Some(info) = ep.iot() {
        let thing = streams.first().map(String::as_str);
        println!("\n# or, with the IoT credentials provider instead of static credentials:");
        println!("export IOT_ENDPOINT={}", info.endpoint);
        println!("export IOT_CA_PATH={}", info.ca_path.display());
        println!("export IOT_CERT_PATH={}", info.cert_path.display());
        println!("export IOT_KEY_PATH={}", info.key_path.display());
        println!("export IOT_ROLE_ALIAS={}", info.role_alias);
        println!(
            "# kvssink property (thing name: {}):",
            thing.unwrap_or("the stream name")
        );
        println!("iot-certificate=\"{}\"", info.structure_string(thing));
        if let Some(other) = ep.iot_untrusted_client_cert() {
            println!(
                "# a certificate of another CA (refused): {} / {}",
                other.cert_path.display(),
                other.key_path.display()
            );
        }
    }
    if let Some(l) = config_lifetime {
        println!(
            "\n# credentials expire {}s after they are issued",
            l.as_secs()
        );
    }
    println!("\n# see what arrived: curl {}/_local/streams", ep.url());
    println!(
        "# the page (streams, fragments, ACKs, a live player): {}/_local/",
        ep.url()
    );
    println!(
        "# an HLS session URL (for ffplay): curl -s '{}/_local/streams/<name>/hls?PlaybackMode=LIVE' (or ON_DEMAND)",
        ep.url()
    );
    loop {
        std::thread::park();
    }
}
