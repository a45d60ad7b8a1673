//! Soak test: a live A/V pipeline through kvssink into the local KVS endpoint for N minutes while
//! the endpoint injects a random fault every ~20 s; at the end, what the endpoint persisted is
//! compared, frame by frame, with what entered the sink.
//!
//! Two processes, one binary:
//! - the **driver** (this process, default mode) runs the local endpoint in-process, arms the
//!   faults through its [`Faults`] handle, rotates a credential file like a credentials agent
//!   would, watches for hangs and measures the RSS of the pipeline process;
//! - the **pipeline** process (`--pipeline-child`, started by the driver) runs
//!   `videotestsrc is-live ! x264enc ! h264parse ! kvssink` + `audiotestsrc is-live ! avenc_aac`,
//!   counts the buffers that enter each sink pad and reports the bus messages (drops, warnings,
//!   errors, EOS) on stdout, one line each. Its RSS is the one measured, undisturbed by the
//!   endpoint's own memory.
//!
//! Faults (uniformly drawn, seeded; `--seed` replays the same schedule — kvssink's own backoff
//! jitter is not seeded): connection reset (RST) or close (FIN) at a random byte of the next
//! fragment; a 5–20 s stall (no reads, no ACKs); an ERROR ACK for the next fragment with one of
//! 4000 4001 4002 4003 4004 4006 4009 5000 5001 (4000/4003/5000/5001 are resent by kvssink, the
//! others are skipped and reported as dropped, as the reference SDK does); control-plane 5xx
//! (500/503) or throttling (`ClientLimitExceededException`) for the next 1–3 calls, with the
//! PutMedia request failing the same way once so that the data endpoint is looked up again;
//! credentials expiring at once (the endpoint refuses them for new requests, a new key is in the
//! credential file). Besides, the credential file holds temporary credentials (2 min lifetime)
//! renewed every 40 s, so kvssink also rotates sessions on its own.
//!
//! Checks: every frame that entered the sink is persisted exactly once or was reported in a
//! `kvssink-fragment-dropped` message (`frames`); no duplicate `(track, timecode)` among the
//! persisted frames; no ERROR message, no crash; a hang watchdog (no fragment persisted for
//! `--hang-seconds`, EOS not reached in time, shutdown not finished) — on a hang the pipeline
//! process's threads are dumped with gdb when it is installed; RSS growth of the pipeline process
//! from the end of warm-up to the end ≤ `--max-rss-growth-mib`. The last line is
//! `soak: <N> frames in, <M> persisted, <L> lost, <D> duplicated, <F> faults, RSS start <A> MiB end <B> MiB`,
//! where `L` counts frames neither persisted nor reported dropped.
//!
//! `scripts/soak.sh` builds and runs it.

#[path = "support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gst::prelude::*;
use kvs_local_endpoint::{
    Config, Credentials, FragmentInfo, FragmentState, HttpFault, LocalEndpoint, SessionEnd, Trigger,
};

const HELP: &str = "\
soak — kvssink under random faults against the local KVS endpoint

usage: soak [--minutes N] [--seed S] [options]

  --minutes N               streaming time (default 10)
  --seed S                  fault schedule seed (default: from the clock; printed)
  --fault-interval-s N      mean time between faults (default 20; each is drawn from N/2..3N/2)
  --hang-seconds N          no fragment persisted for this long = a hang (default 90)
  --warmup-s N              RSS baseline after this long (default: min(60, minutes*60/3))
  --max-rss-growth-mib N    allowed RSS growth of the pipeline process (default 10)
  --workdir DIR             logs, credential file, endpoint storage (default: a new /tmp dir)
  --bitrate KBPS            x264enc bitrate (default 500)
  --only KIND,…             draw only these faults: reset close stall error-ack cp-5xx
                            cp-throttling credentials (default: all)
";

const STREAM: &str = "soak";
const ERROR_IDS: [u32; 9] = [4000, 4001, 4002, 4003, 4004, 4006, 4009, 5000, 5001];
const CREDENTIAL_LIFETIME: Duration = Duration::from_secs(120);
const CREDENTIAL_RENEWAL: Duration = Duration::from_secs(40);

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--pipeline-child") {
        std::process::exit(pipeline_child());
    }
    std::process::exit(driver());
}

// ------------------------------------------------------------------------------------------
// Seeded randomness (splitmix64: tiny, stable across versions of any crate).

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.range(0, items.len() as u64 - 1) as usize]
    }
}

// ------------------------------------------------------------------------------------------
// The driver.

#[derive(Debug, Default)]
struct ChildReport {
    frames: BTreeMap<String, u64>,
    dropped_frames: u64,
    dropped_fragments: u64,
    drop_reasons: BTreeMap<String, u64>,
    /// `(timecode, frames, reason)` of each `kvssink-fragment-dropped` message.
    dropped: Vec<(u64, u64, String)>,
    warnings: Vec<String>,
    errors: Vec<String>,
    eos: bool,
    done: bool,
}

enum ChildLine {
    Line(String),
    Closed,
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn kvs_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (H. Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Temporary credentials in a rotating file, as an agent (IoT, STS) would keep it.
struct CredentialFile {
    path: PathBuf,
    serial: u64,
    last_write: Instant,
}

impl CredentialFile {
    fn renew(&mut self, ep: &LocalEndpoint) {
        self.serial += 1;
        let ak = format!("AKSOAK{:08}", self.serial);
        let sk = format!("soak-secret-{}", self.serial);
        let token = format!("soak-token-{}", self.serial);
        ep.add_credentials_expiring(
            Credentials::new(&ak, &sk).with_session_token(&token),
            CREDENTIAL_LIFETIME,
        );
        let exp = kvs_date(SystemTime::now() + CREDENTIAL_LIFETIME);
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, format!("CREDENTIALS {ak} {exp} {sk} {token}\n"))
            .expect("the credential file is written");
        std::fs::rename(&tmp, &self.path).expect("the credential file is renamed");
        self.last_write = Instant::now();
    }
}

struct Opts {
    minutes: f64,
    seed: u64,
    fault_interval: Duration,
    hang: Duration,
    warmup: Duration,
    max_rss_growth_mib: f64,
    workdir: PathBuf,
    bitrate: u32,
    kinds: Vec<u64>,
}

fn parse_opts() -> Opts {
    let mut args = support::Args::parse(HELP, &[]);
    let minutes: f64 = args.value("minutes", 10.0);
    if minutes <= 0.0 {
        args.fail("--minutes must be > 0");
    }
    let seed = args.opt("seed").unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            % 1_000_000_007
    });
    let warmup_default = (minutes * 60.0 / 3.0).min(60.0);
    let workdir = match args.opt::<String>("workdir") {
        Some(d) => PathBuf::from(d),
        None => std::env::temp_dir().join(format!("kvssink-soak-{seed}-{}", std::process::id())),
    };
    let only: Option<String> = args.opt("only");
    let mut opts = Opts {
        minutes,
        seed,
        fault_interval: Duration::from_secs(args.value("fault-interval-s", 20)),
        hang: Duration::from_secs(args.value("hang-seconds", 90)),
        warmup: Duration::from_secs_f64(args.value("warmup-s", warmup_default)),
        max_rss_growth_mib: args.value("max-rss-growth-mib", 10.0),
        workdir,
        bitrate: args.value("bitrate", 500),
        kinds: (0..KINDS.len() as u64).collect(),
    };
    if let Some(only) = only {
        opts.kinds = only
            .split(',')
            .map(|k| match KINDS.iter().position(|n| *n == k.trim()) {
                Some(i) => i as u64,
                None => args.fail(&format!("unknown fault kind '{k}'")),
            })
            .collect();
    }
    args.finish();
    opts
}

/// Fault kinds, by the number `Injector::inject` draws.
const KINDS: [&str; 7] = [
    "reset",
    "close",
    "stall",
    "error-ack",
    "cp-5xx",
    "cp-throttling",
    "credentials",
];

struct Injector {
    rng: Rng,
    /// The kinds drawn from (indexes into `KINDS`).
    kinds: Vec<u64>,
    counts: BTreeMap<String, u64>,
    total: u64,
}

impl Injector {
    /// Arms one random fault; returns its description.
    fn inject(&mut self, ep: &LocalEndpoint, creds: &mut CredentialFile) -> String {
        let f = ep.faults();
        // The open PutMedia connection: where "the next fragment" and "mid-fragment" are.
        let open = ep
            .sessions(Some(STREAM))
            .into_iter()
            .rfind(|s| s.ended.is_none());
        let (bytes, frags) = open
            .map(|s| (s.bytes_received, s.fragments))
            .unwrap_or((0, 0));
        // A random byte within the next ~fragment (1 s of 320x240 at the configured bitrate).
        let mid = bytes + self.rng.range(1, 60_000);
        let kind = *self.rng.pick(&self.kinds);
        let (key, what) = match kind {
            0 => {
                f.reset_after_bytes(mid);
                (
                    "reset".to_owned(),
                    format!("reset (RST) at body byte {mid}"),
                )
            }
            1 => {
                f.close_after_bytes(mid);
                (
                    "close".to_owned(),
                    format!("close (FIN) at body byte {mid}"),
                )
            }
            2 => {
                let secs = self.rng.range(5, 20);
                let trigger = if self.rng.range(0, 1) == 0 {
                    Trigger::Bytes(mid)
                } else {
                    Trigger::Fragment(frags + 1)
                };
                f.stall(trigger, Duration::from_secs(secs));
                ("stall".to_owned(), format!("stall {secs} s at {trigger:?}"))
            }
            3 => {
                let id = *self.rng.pick(&ERROR_IDS);
                f.error_ack(frags + 1, id);
                (
                    format!("error-ack-{id}"),
                    format!("ERROR ACK {id} for connection fragment {}", frags + 1),
                )
            }
            4 | 5 => {
                let (name, fault) = match (kind, self.rng.range(0, 1)) {
                    (4, 0) => ("cp-500", HttpFault::internal_error()),
                    (4, _) => ("cp-503", HttpFault::service_unavailable()),
                    _ => ("cp-throttling", HttpFault::throttling()),
                };
                let n = self.rng.range(1, 3) as u32;
                f.fail_requests(n, fault.clone());
                // PutMedia fails the same way once (the next connection), so kvssink looks the
                // data endpoint up again and meets the control-plane failures.
                f.fail_requests(1, fault.for_operation("PutMedia"));
                f.reset_after_bytes(mid);
                (
                    name.to_owned(),
                    format!(
                        "{name}: next {n} control-plane call(s) + 1 PutMedia fail, reset at byte {mid}"
                    ),
                )
            }
            _ => {
                f.expire_credentials();
                creds.renew(ep);
                (
                    "credentials-expired".to_owned(),
                    format!("credentials expired; new key {} in the file", creds.serial),
                )
            }
        };
        *self.counts.entry(key).or_default() += 1;
        self.total += 1;
        what
    }
}

fn spawn_child(
    opts: &Opts,
    ep: &LocalEndpoint,
    creds: &Path,
) -> std::io::Result<(Child, ChildStdin, mpsc::Receiver<ChildLine>)> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.arg("--pipeline-child")
        .arg(creds)
        .arg(opts.bitrate.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(
            opts.workdir.join("pipeline.stderr"),
        )?));
    for k in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "KVS_DEBUG_DUMP_DATA_FILE_DIR",
    ] {
        cmd.env_remove(k);
    }
    for (k, v) in ep.env() {
        if !k.starts_with("AWS_ACCESS") && !k.starts_with("AWS_SECRET") && k != "AWS_SESSION_TOKEN"
        {
            cmd.env(k, v);
        }
    }
    // Keep kvssink's log (INFO and above) so that a hang can be understood afterwards.
    if std::env::var_os("GST_DEBUG").is_none() {
        cmd.env("GST_DEBUG", "kvssink*:4");
    }
    cmd.env("GST_DEBUG_FILE", opts.workdir.join("pipeline.log"));
    cmd.env("GST_DEBUG_NO_COLOR", "1");
    // The credential chain must not find a developer's own AWS files.
    cmd.env(
        "AWS_SHARED_CREDENTIALS_FILE",
        opts.workdir.join("no-aws-credentials"),
    );
    cmd.env("AWS_CONFIG_FILE", opts.workdir.join("no-aws-config"));
    cmd.env("AWS_EC2_METADATA_DISABLED", "true");
    let mut child = cmd.spawn()?;
    let stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            match line {
                Ok(l) => {
                    if tx.send(ChildLine::Line(l)).is_err() {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        let _ = tx.send(ChildLine::Closed);
    });
    Ok((child, stdin, rx))
}

fn apply_line(report: &mut ChildReport, line: &str, t: f64) {
    let (tag, rest) = line.split_once(' ').unwrap_or((line, ""));
    match tag {
        "frames" => {
            for kv in rest.split_whitespace() {
                if let Some((k, v)) = kv.split_once('=') {
                    report.frames.insert(k.to_owned(), v.parse().unwrap_or(0));
                }
            }
        }
        "dropped" => {
            // dropped <frames> <timecode> <reason…>
            let mut it = rest.splitn(3, ' ');
            let frames: u64 = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            let tc = it.next().unwrap_or("");
            let reason = it.next().unwrap_or("").to_owned();
            report
                .dropped
                .push((tc.parse().unwrap_or(0), frames, reason.clone()));
            report.dropped_frames += frames;
            report.dropped_fragments += 1;
            *report.drop_reasons.entry(reason.clone()).or_default() += frames;
            println!("[{t:7.1}] kvssink dropped fragment {tc}: {frames} frames, {reason}");
        }
        "warning" => {
            println!("[{t:7.1}] kvssink warning: {rest}");
            report.warnings.push(rest.to_owned());
        }
        "error" => {
            println!("[{t:7.1}] ERROR: {rest}");
            report.errors.push(rest.to_owned());
        }
        "eos" => report.eos = true,
        "done" => report.done = true,
        "playing" => println!("[{t:7.1}] pipeline PLAYING"),
        _ => println!("[{t:7.1}] pipeline: {line}"),
    }
}

/// Dumps the pipeline process's threads (gdb, when installed) into the workdir.
fn dump_threads(pid: u32, workdir: &Path) {
    let out = workdir.join("hang-threads.txt");
    let r = Command::new("gdb")
        .args([
            "-p",
            &pid.to_string(),
            "-batch",
            "-ex",
            "thread apply all bt",
        ])
        .stdout(Stdio::from(match std::fs::File::create(&out) {
            Ok(f) => f,
            Err(_) => return,
        }))
        .stderr(Stdio::null())
        .status();
    match r {
        Ok(_) => println!("threads of the pipeline process: {}", out.display()),
        Err(e) => println!("(no thread dump: gdb: {e})"),
    }
}

/// `(track, timecode)` of every frame of a persisted fragment (its Cluster's SimpleBlocks).
fn fragment_frames(bytes: &[u8]) -> Result<Vec<(u64, i64)>, String> {
    const CLUSTER: u32 = 0x1F43_B675;
    const TIMECODE: u32 = 0xE7;
    const SIMPLE_BLOCK: u32 = 0xA3;
    const BLOCK_GROUP: u32 = 0xA0;
    const BLOCK: u32 = 0xA1;
    const TOP_LEVEL: [u32; 5] = [CLUSTER, 0x1254_C367, 0x1549_A966, 0x1654_AE6B, 0x1C53_BB6B];

    fn vint(b: &[u8], keep_marker: bool) -> Result<(u64, usize, bool), String> {
        let first = *b.first().ok_or("truncated")?;
        let len = first.leading_zeros() as usize + 1;
        if len > 8 || b.len() < len {
            return Err(format!("bad vint {first:#x}"));
        }
        let mut v = if keep_marker {
            u64::from(first)
        } else {
            u64::from(first) & ((1u64 << (8 - len)) - 1)
        };
        for x in &b[1..len] {
            v = (v << 8) | u64::from(*x);
        }
        let all_ones = !keep_marker && v == (1u64 << (7 * len)) - 1;
        Ok((v, len, all_ones))
    }
    fn header(b: &[u8]) -> Result<(u32, usize, Option<usize>), String> {
        let (id, il, _) = vint(b, true)?;
        let (size, sl, unknown) = vint(&b[il..], false)?;
        Ok((id as u32, il + sl, (!unknown).then_some(size as usize)))
    }
    fn block(b: &[u8], cluster_tc: Option<i64>, out: &mut Vec<(u64, i64)>) -> Result<(), String> {
        let (track, l, _) = vint(b, false)?;
        if b.len() < l + 3 {
            return Err("short block".into());
        }
        let rel = i16::from_be_bytes([b[l], b[l + 1]]);
        let tc = cluster_tc.ok_or("block before the Cluster Timecode")?;
        out.push((track, tc + i64::from(rel)));
        Ok(())
    }

    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let (id, hl, size) = header(&bytes[pos..])?;
        let body = pos + hl;
        if id != CLUSTER {
            let size = size.ok_or("unknown-size element other than a Cluster")?;
            pos = body + size;
            continue;
        }
        let end = size.map_or(bytes.len(), |s| body + s).min(bytes.len());
        let mut tc: Option<i64> = None;
        let mut p = body;
        while p < end {
            let (cid, chl, csize) = header(&bytes[p..])?;
            if size.is_none() && TOP_LEVEL.contains(&cid) {
                break;
            }
            let csize = csize.ok_or("unknown-size Cluster child")?;
            let cb = &bytes[p + chl..(p + chl + csize).min(bytes.len())];
            match cid {
                TIMECODE => tc = Some(cb.iter().fold(0i64, |a, x| (a << 8) | i64::from(*x))),
                SIMPLE_BLOCK => block(cb, tc, &mut out)?,
                BLOCK_GROUP => {
                    let mut q = 0;
                    while q < cb.len() {
                        let (gid, ghl, gsize) = header(&cb[q..])?;
                        let gsize = gsize.ok_or("unknown size in BlockGroup")?;
                        if gid == BLOCK {
                            block(&cb[q + ghl..(q + ghl + gsize).min(cb.len())], tc, &mut out)?;
                        }
                        q += ghl + gsize;
                    }
                }
                _ => {}
            }
            p += chl + csize;
        }
        pos = p;
    }
    Ok(out)
}

fn driver() -> i32 {
    let opts = parse_opts();
    std::fs::create_dir_all(&opts.workdir).expect("the work directory is created");
    let total = Duration::from_secs_f64(opts.minutes * 60.0);
    println!(
        "soak: seed {} (replay: --seed {}), {} min, a fault every ~{} s, work directory {}",
        opts.seed,
        opts.seed,
        opts.minutes,
        opts.fault_interval.as_secs(),
        opts.workdir.display()
    );

    let ep = match LocalEndpoint::start(Config {
        storage_dir: Some(opts.workdir.join("endpoint")),
        ..Config::default()
    }) {
        Ok(ep) => ep,
        Err(e) => {
            eprintln!("soak: the local endpoint did not start: {e}");
            return 2;
        }
    };
    ep.create_stream(STREAM, 2).expect("the stream is created");
    let mut creds = CredentialFile {
        path: opts.workdir.join("credential"),
        serial: 0,
        last_write: Instant::now(),
    };
    creds.renew(&ep);

    let (mut child, mut child_in, lines) = match spawn_child(&opts, &ep, &creds.path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("soak: cannot start the pipeline process: {e}");
            return 2;
        }
    };
    let pid = child.id();
    let started = Instant::now();
    let t = || started.elapsed().as_secs_f64();
    let mut report = ChildReport::default();
    let mut injector = Injector {
        rng: Rng(opts.seed),
        kinds: opts.kinds.clone(),
        counts: BTreeMap::new(),
        total: 0,
    };
    let mut failures: Vec<String> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let mut hung = false;
    let interval = opts.fault_interval.as_secs_f64();
    let mut next_fault = interval * (0.5 + injector.rng.range(0, 1000) as f64 / 1000.0);
    // No new fault in the last 30 s: what was armed must have played out before EOS.
    let last_fault_at = total.as_secs_f64() - 30.0;
    let mut rss_start: Option<u64> = None;
    let mut rss_max = 0u64;
    let mut persisted_seen = 0usize;
    let mut last_progress = Instant::now();
    let mut child_closed = false;

    let poll = |report: &mut ChildReport, child_closed: &mut bool, wait: Duration| {
        let end = Instant::now() + wait;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(ChildLine::Line(l)) => apply_line(report, &l, started.elapsed().as_secs_f64()),
                Ok(ChildLine::Closed) => {
                    *child_closed = true;
                    std::thread::sleep(left);
                    return;
                }
                Err(_) => return,
            }
        }
    };

    // Streaming phase.
    while started.elapsed() < total {
        poll(&mut report, &mut child_closed, Duration::from_millis(500));
        if child_closed || !report.errors.is_empty() {
            break;
        }
        let now = t();
        if let Some(r) = rss_kib(pid) {
            rss_max = rss_max.max(r);
            if rss_start.is_none() && started.elapsed() >= opts.warmup {
                rss_start = Some(r);
                println!("[{now:7.1}] RSS after warm-up: {:.1} MiB", mib(r));
            }
        }
        if creds.last_write.elapsed() >= CREDENTIAL_RENEWAL {
            creds.renew(&ep);
        }
        if now >= next_fault && now < last_fault_at {
            let what = injector.inject(&ep, &mut creds);
            println!("[{now:7.1}] fault {}: {what}", injector.total);
            next_fault = now + interval * (0.5 + injector.rng.range(0, 1000) as f64 / 1000.0);
        }
        let persisted = ep
            .fragments(STREAM)
            .iter()
            .filter(|f| f.state == FragmentState::Persisted)
            .count();
        if persisted > persisted_seen {
            persisted_seen = persisted;
            last_progress = Instant::now();
        } else if last_progress.elapsed() >= opts.hang {
            failures.push(format!(
                "hang: no fragment persisted for {} s (at {now:.0} s; {persisted} so far)",
                opts.hang.as_secs()
            ));
            hung = true;
            break;
        }
    }

    // End: disarm, EOS, a bounded wait for the element's EOS (stop-stream-timeout is 120 s).
    ep.faults().clear();
    let rss_end = rss_kib(pid);
    if let Some(r) = rss_end {
        rss_max = rss_max.max(r);
    }
    if !hung && !child_closed && report.errors.is_empty() {
        println!("[{:7.1}] sending EOS", t());
        let _ = writeln!(child_in, "eos");
        let eos_deadline = Instant::now() + Duration::from_secs(150);
        while !report.eos && !child_closed && Instant::now() < eos_deadline {
            poll(&mut report, &mut child_closed, Duration::from_millis(500));
            if creds.last_write.elapsed() >= CREDENTIAL_RENEWAL {
                creds.renew(&ep);
            }
        }
        if report.eos {
            println!("[{:7.1}] EOS reached", t());
        } else if !child_closed && report.errors.is_empty() {
            failures.push("hang: no EOS within 150 s of sending it".into());
            hung = true;
        }
    }
    if hung {
        dump_threads(pid, &opts.workdir);
        let _ = child.kill();
    }
    // Shutdown to NULL and the final counts.
    drop(child_in);
    let exit_deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if !child_closed {
            poll(&mut report, &mut child_closed, Duration::from_millis(200));
        }
        match child.try_wait() {
            Ok(Some(s)) if child_closed => break Some(s),
            Ok(_) if Instant::now() >= exit_deadline => break None,
            Ok(_) => {
                if child_closed {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            Err(_) => break None,
        }
    };
    match status {
        None => {
            failures.push("hang: the pipeline process did not exit within 30 s".into());
            dump_threads(pid, &opts.workdir);
            let _ = child.kill();
            let _ = child.wait();
        }
        Some(s) if !s.success() && !hung => {
            failures.push(format!("the pipeline process failed: {s}"));
        }
        Some(_) => {}
    }
    if !hung && !report.done {
        failures.push("the pipeline process ended without its final counts (crash?)".into());
    }
    for e in &report.errors {
        failures.push(format!("error message: {e}"));
    }

    // What arrived, frame by frame.
    let fragments = ep.fragments(STREAM);
    let persisted: Vec<_> = fragments
        .iter()
        .filter(|f| f.state == FragmentState::Persisted)
        .collect();
    let mut seen: HashMap<(u64, i64), u32> = HashMap::new();
    let mut per_track: BTreeMap<u64, u64> = BTreeMap::new();
    for f in &persisted {
        let Some(bytes) = ep.fragment_bytes(STREAM, f.index) else {
            failures.push(format!(
                "persisted fragment {} has no stored bytes",
                f.index
            ));
            continue;
        };
        match fragment_frames(&bytes) {
            Ok(frames) => {
                let counted: u64 = f.frames_per_track.values().sum();
                if counted != frames.len() as u64 {
                    failures.push(format!(
                        "fragment {}: {} frames parsed, the endpoint counted {counted}",
                        f.index,
                        frames.len()
                    ));
                }
                for k in frames {
                    *seen.entry(k).or_default() += 1;
                }
            }
            Err(e) => failures.push(format!("fragment {} unreadable: {e}", f.index)),
        }
    }
    let mut duplicated = 0u64;
    for ((track, _), n) in &seen {
        *per_track.entry(*track).or_default() += 1;
        duplicated += u64::from(n - 1);
    }
    let unique: u64 = per_track.values().sum();
    let video_in = report.frames.get("video_0").copied().unwrap_or(0);
    let audio_in = report.frames.get("audio_0").copied().unwrap_or(0);
    let frames_in = video_in + audio_in;
    let video_p = per_track.get(&1).copied().unwrap_or(0);
    let audio_p = per_track.get(&2).copied().unwrap_or(0);
    // A fragment reported dropped that the endpoint persisted all the same (e.g. its PERSISTED
    // ACK was lost with the connection): not a loss, but a false report; it is counted once.
    let persisted_tcs: BTreeMap<u64, &FragmentInfo> =
        persisted.iter().map(|f| (f.timecode, *f)).collect();
    let mut false_drops = 0u64;
    for (tc, frames, reason) in &report.dropped {
        if let Some(f) = persisted_tcs.get(tc) {
            false_drops += frames;
            notes.push(format!(
                "fragment {tc} ({frames} frames) was reported dropped ({reason}) but is persisted (endpoint fragment {}, session {}, its {}th)",
                f.index, f.session_id, f.connection_index
            ));
        }
    }
    let reported = report.dropped_frames - false_drops;
    let lost = frames_in.saturating_sub(unique + reported);
    if unique + reported > frames_in && report.done {
        failures.push(format!(
            "persisted ({unique}) + reported dropped ({reported}) exceeds the frames in ({frames_in})"
        ));
    }
    if video_p > video_in || audio_p > audio_in {
        failures.push(format!(
            "more persisted than entered: video {video_p}/{video_in}, audio {audio_p}/{audio_in}"
        ));
    }
    if lost > 0 {
        failures.push(format!("{lost} frames lost without a drop report"));
    }
    if duplicated > 0 {
        failures.push(format!("{duplicated} frames persisted more than once"));
    }

    let sessions = ep.sessions(Some(STREAM));
    let mut ends: BTreeMap<String, u64> = BTreeMap::new();
    for s in &sessions {
        let k = match &s.end {
            None => "open".to_owned(),
            Some(SessionEnd::ErrorAck { error_id }) => format!("error-ack-{error_id}"),
            Some(e) => format!("{e:?}"),
        };
        *ends.entry(k).or_default() += 1;
    }
    let mut http_errors: BTreeMap<String, u64> = BTreeMap::new();
    for q in ep.requests() {
        if q.status >= 400 {
            *http_errors
                .entry(format!(
                    "{} {} {}",
                    q.operation,
                    q.status,
                    q.error_type.unwrap_or_default()
                ))
                .or_default() += 1;
        }
    }
    let rss_a = rss_start.or(rss_end).unwrap_or(0);
    let rss_b = rss_end.unwrap_or(0);
    if rss_start.is_some() && mib(rss_b) - mib(rss_a) > opts.max_rss_growth_mib {
        failures.push(format!(
            "RSS grew {:.1} MiB (> {} MiB)",
            mib(rss_b) - mib(rss_a),
            opts.max_rss_growth_mib
        ));
    }
    println!("---");
    println!("faults injected: {:?}", injector.counts);
    println!("PutMedia sessions by end: {ends:?}");
    println!("HTTP errors answered: {http_errors:?}");
    println!(
        "fragments: {} begun, {} persisted; credential keys used: {}",
        fragments.len(),
        persisted.len(),
        creds.serial
    );
    println!(
        "frames in: video {video_in}, audio {audio_in}; persisted (unique): video {video_p}, audio {audio_p}; reported dropped: {} frames in {} fragments {:?}",
        report.dropped_frames, report.dropped_fragments, report.drop_reasons
    );
    println!(
        "kvssink warnings: {}; RSS max {:.1} MiB",
        report.warnings.len(),
        mib(rss_max)
    );
    for n in &notes {
        println!("NOTE: {n}");
    }
    for f in &failures {
        println!("FAIL: {f}");
    }
    if !failures.is_empty() || !notes.is_empty() {
        // What the endpoint saw, fragment by fragment, for the post-mortem.
        let mut table = String::new();
        for f in &fragments {
            let acks: Vec<String> = f
                .acks
                .iter()
                .map(|a| {
                    let at = a.at.duration_since(UNIX_EPOCH).unwrap_or_default();
                    format!(
                        "{:?}{}@{}.{:03}",
                        a.ack.event_type,
                        if a.sent { "" } else { "(unsent)" },
                        at.as_secs(),
                        at.subsec_millis()
                    )
                })
                .collect();
            table.push_str(&format!(
                "{} session {} #{} tc {} {:?} err {:?} frames {:?} acks {}\n",
                f.index,
                f.session_id,
                f.connection_index,
                f.timecode,
                f.state,
                f.error_id,
                f.frames_per_track,
                acks.join(" ")
            ));
        }
        for s in &sessions {
            table.push_str(&format!(
                "session {} started {:?} ended {:?} bytes {} fragments {} end {:?}\n",
                s.id, s.started, s.ended, s.bytes_received, s.fragments, s.end
            ));
        }
        let _ = std::fs::write(opts.workdir.join("fragments.txt"), table);
    }
    if failures.is_empty() {
        let _ = std::fs::remove_dir_all(opts.workdir.join("endpoint"));
    } else {
        println!("logs kept in {}", opts.workdir.display());
    }
    println!(
        "soak: {frames_in} frames in, {unique} persisted, {lost} lost, {duplicated} duplicated, {} faults, RSS start {:.1} MiB end {:.1} MiB",
        injector.total,
        mib(rss_a),
        mib(rss_b)
    );
    ep.shutdown();
    i32::from(!failures.is_empty())
}

// ------------------------------------------------------------------------------------------
// The pipeline process.

fn pipeline_child() -> i32 {
    let args: Vec<String> = std::env::args().collect();
    let creds = &args[2];
    let bitrate = &args[3];
    support::init();
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let say = {
        let out = out.clone();
        move |line: String| {
            let mut o = out.lock().unwrap();
            let _ = writeln!(o, "{line}");
            let _ = o.flush();
        }
    };
    let description = format!(
        "videotestsrc is-live=true ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 bframes=0 bitrate={bitrate} \
         ! h264parse ! queue ! kvssink name=sink stream-name={STREAM} credential-path={creds} \
         audiotestsrc is-live=true samplesperbuffer=1024 ! audio/x-raw,rate=44100,channels=1 \
         ! avenc_aac ! aacparse ! queue ! sink."
    );
    let pipeline = match gst::parse::launch(&description) {
        Ok(p) => p.downcast::<gst::Pipeline>().unwrap(),
        Err(e) => {
            say(format!("error cannot build the pipeline: {e}"));
            return 1;
        }
    };
    let sink = pipeline.by_name("sink").unwrap();
    let counts: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    // Audio that precedes the first video frame is dropped by kvssink by design ("audio before
    // the first video key frame"): it is held back here and not counted as entering the sink.
    let first_video: Arc<Mutex<Option<gst::ClockTime>>> = Arc::default();
    for pad in sink.sink_pads() {
        let name = pad.name().to_string();
        counts.lock().unwrap().insert(name.clone(), 0);
        let counts = counts.clone();
        let first_video = first_video.clone();
        let is_video = name.starts_with("video");
        pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
            // Running time: what kvssink orders the tracks by.
            let pts = info.buffer().and_then(|b| b.pts()).and_then(|pts| {
                let seg = pad.sticky_event::<gst::event::Segment>(0)?;
                let seg = seg.segment().downcast_ref::<gst::ClockTime>()?.clone();
                seg.to_running_time(pts)
            });
            if std::env::var_os("SOAK_DEBUG_PTS").is_some() {
                eprintln!("{} {:?}", if is_video { "video" } else { "audio" }, pts);
            }
            if is_video {
                let mut fv = first_video.lock().unwrap();
                if fv.is_none() {
                    *fv = pts;
                }
            } else {
                let fv = *first_video.lock().unwrap();
                match (fv, pts) {
                    (Some(v), Some(a)) if a >= v => {}
                    _ => {
                        // Taken and dropped here (`Drop` makes GStreamer unref a NULL).
                        info.data = None;
                        return gst::PadProbeReturn::Handled;
                    }
                }
            }
            *counts.lock().unwrap().get_mut(&name).unwrap() += 1;
            gst::PadProbeReturn::Ok
        });
    }
    if pipeline.set_state(gst::State::Playing).is_err() {
        say("error the pipeline did not start".into());
    } else {
        say("playing".into());
    }
    // Commands on stdin: "eos"; end of input = stop.
    let (cmd_tx, cmd_rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            match line {
                Ok(l) => {
                    if cmd_tx.send(l).is_err() {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
    });
    let bus = pipeline.bus().unwrap();
    let mut code = 0;
    loop {
        match cmd_rx.try_recv() {
            Ok(c) if c == "eos" => {
                pipeline.send_event(gst::event::Eos::new());
            }
            Ok(_) | Err(mpsc::TryRecvError::Empty) => {}
            Err(mpsc::TryRecvError::Disconnected) => break,
        }
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(100)) else {
            continue;
        };
        match msg.view() {
            gst::MessageView::Eos(_) => {
                say("eos".into());
                // Wait for the driver to close stdin.
                while cmd_rx.recv().is_ok() {}
                break;
            }
            gst::MessageView::Error(e) => {
                say(format!("error {} ({:?})", e.error(), e.debug()));
                code = 1;
                break;
            }
            gst::MessageView::Warning(w) => {
                say(format!(
                    "warning {}",
                    w.error().to_string().replace('\n', " ")
                ));
            }
            gst::MessageView::Element(e) => {
                if let Some(s) = e.structure()
                    && s.name() == "kvssink-fragment-dropped"
                {
                    say(format!(
                        "dropped {} {} {}",
                        s.get::<u32>("frames").unwrap_or(0),
                        s.get::<u64>("timecode").unwrap_or(0),
                        s.get::<String>("reason").unwrap_or_default()
                    ));
                }
            }
            _ => {}
        }
    }
    let stop = Instant::now();
    let _ = pipeline.set_state(gst::State::Null);
    let c = counts.lock().unwrap().clone();
    say(format!(
        "frames {}",
        c.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    ));
    say(format!("stopped in {} ms", stop.elapsed().as_millis()));
    say("done".into());
    code
}
