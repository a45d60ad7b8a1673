//! Running the crate's examples (`examples/*.rs`) as the processes users run, against the local
//! endpoint: their binaries are built once per test process (`cargo build --examples`, a no-op
//! when `cargo test`/`nextest` already built them), spawned with the endpoint's environment, and
//! killed if a test ends early.
#![allow(dead_code)]

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvs_local_endpoint::LocalEndpoint;

/// The path of example `name`, built with the features of this test build.
pub fn example_bin(name: &str) -> PathBuf {
    use std::sync::Once;
    static BUILD: Once = Once::new();
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_owned();
    BUILD.call_once(|| {
        let target_dir = profile_dir.parent().unwrap();
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--examples", "--locked"])
            .arg("--target-dir")
            .arg(target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("cargo runs");
        assert!(status.success(), "building the examples failed");
    });
    let bin = profile_dir.join("examples").join(name);
    assert!(bin.is_file(), "{} was not built", bin.display());
    bin
}

/// A running example; killed when dropped.
pub struct Example {
    child: Option<Child>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

/// What an example did.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// The first stdout line starting with `prefix`.
    pub fn line(&self, prefix: &str) -> Option<&str> {
        self.stdout.lines().find(|l| l.starts_with(prefix))
    }

    /// `key=N` of the first stdout line starting with `prefix`.
    pub fn number(&self, prefix: &str, key: &str) -> u64 {
        let line = self
            .line(prefix)
            .unwrap_or_else(|| panic!("no '{prefix}' line in:\n{}", self.stdout));
        line.split_whitespace()
            .find_map(|t| t.strip_prefix(&format!("{key}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key}= in '{line}'"))
    }
}

impl Example {
    /// Starts example `name` with `args`, pointed at `ep` (no GST_DEBUG, no user plugins).
    pub fn start(name: &str, args: &[&str], ep: &LocalEndpoint) -> Example {
        let mut cmd = Command::new(example_bin(name));
        cmd.args(args)
            .envs(ep.env())
            .env_remove("GST_DEBUG")
            .env_remove("GST_PLUGIN_PATH")
            .env_remove("KVS_DEBUG_DUMP_DATA_FILE_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("the example starts");
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let readers = vec![
            collect(child.stdout.take().unwrap(), stdout.clone()),
            collect(child.stderr.take().unwrap(), stderr.clone()),
        ];
        Example {
            child: Some(child),
            stdout,
            stderr,
            readers,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// Waits until stdout has a line containing `needle`, at most `timeout`.
    pub fn wait_for_output(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.stdout().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Sends SIGINT (what Ctrl-C does).
    pub fn interrupt(&self) {
        let status = Command::new("kill")
            .args(["-INT", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the exit, at most `timeout` (then kills it and panics).
    pub fn wait(mut self, timeout: Duration) -> Output {
        let deadline = Instant::now() + timeout;
        let mut child = self.child.take().unwrap();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the example did not exit within {timeout:?}; stdout:\n{}\nstderr:\n{}",
                    self.stdout(),
                    self.stderr.lock().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let out = Output {
            status,
            stdout: self.stdout(),
            stderr: self.stderr.lock().unwrap().clone(),
        };
        eprintln!("--- stdout\n{}--- stderr\n{}---", out.stdout, out.stderr);
        out
    }

    /// Runs example `name` to its end.
    pub fn run(name: &str, args: &[&str], ep: &LocalEndpoint, timeout: Duration) -> Output {
        Example::start(name, args, ep).wait(timeout)
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn collect(
    mut from: impl Read + Send + 'static,
    into: Arc<Mutex<String>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
}
