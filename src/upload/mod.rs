//! The uploader: one tokio task per element that takes fragments from the [`FragmentStore`] as
//! they are packed (the open one frame by frame), sets the stream up through the control plane,
//! streams them over PutMedia sessions, reads the ACKs, and recovers by itself.
//!
//! ```text
//! element (streaming thread) ──push──▶ Shared{store} ──notify──▶ uploader task
//!                                                          │  setup: control plane (cached)
//!                                                          │  session: PutMedia, ACKs → store
//!        ◀──── UploadEvent (ACK, drop, retry, fatal, finished) ────┘
//! ```
//!
//! Nothing here blocks a streaming thread except [`Uploader::put_blocking`] (offline mode), and
//! that wait ends on cancellation. Every network wait has a deadline or a cancel: the control
//! plane has `completion-timeout`, a PutMedia session has `connection-staleness` on its ACKs (it
//! has no total timeout: a session lasts up to ~40 minutes), and stopping cancels everything.
//! All elements share one small runtime, [`RUNTIME`].

pub mod ack;
pub mod backoff;
pub mod control;
pub mod credentials;
pub mod iot;
pub mod putmedia;
mod sdk_http;
mod session;
pub mod stats;
pub mod store;
pub mod transport;

use std::sync::{Arc, Condvar, LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use tracing::instrument::WithSubscriber as _;

use crate::upload::ack::Ack;
use crate::upload::store::{Dropped, FragmentState, FragmentStore, StorePiece};
use backoff::Backoff;
use control::{ControlConfig, ControlError, ControlPlane, StreamSpec};
use credentials::KvsCredentials;
use stats::{PieceNote, UploadStats};

/// The runtime every kvssink in the process shares: two named worker threads.
pub static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .thread_name("kvssink-runtime")
        .build()
        .expect("the tokio runtime starts")
});

/// Runs `fut` on [`RUNTIME`] and waits for its output; for callers outside the runtime (an
/// application thread changing the element's state).
pub fn wait_for<F>(fut: F) -> F::Output
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    RUNTIME.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv().expect("the runtime runs the task to completion")
}

/// GetDataEndpoint answers are reused this long, as in the reference.
pub const ENDPOINT_CACHE_DURATION: Duration = Duration::from_secs(40 * 60);
/// A PutMedia session is rotated after this long; the service ends connections at 45 minutes.
pub const MAX_SESSION_DURATION: Duration = Duration::from_secs(40 * 60);
/// Credentials that cannot be had for this long end the stream with an error.
pub const CREDENTIAL_FAILURE_LIMIT: Duration = Duration::from_secs(120);

/// Everything the uploader needs, resolved by the element at start.
#[derive(Debug, Clone)]
pub struct UploadConfig {
    pub control: ControlConfig,
    pub stream: StreamSpec,
    pub credentials: KvsCredentials,
    /// The control-plane endpoint was configured explicitly: plain HTTP is allowed.
    pub explicit_endpoint: bool,
    pub user_agent: String,
    pub fragment_acks: bool,
    pub absolute_fragment_times: bool,
    /// `connection-staleness`; `None` disables the check.
    pub connection_staleness: Option<Duration>,
    /// `replay-duration`, in timecode-scale units.
    pub replay_window: u64,
    pub restart_on_error: bool,
    /// False when `retention-period=0`: nothing is persisted, RECEIVED is final.
    pub wait_for_persisted: bool,
    pub max_session: Duration,
}

/// What the uploader reports to the element.
#[derive(Debug, Clone)]
pub enum UploadEvent {
    /// Every ACK but IDLE.
    /// An ACK; for PERSISTED, `latency` is the time from the fragment's last byte handed to the
    /// connection until the ACK was read.
    Ack { ack: Ack, latency: Option<Duration> },
    /// A fragment left the store without being persisted.
    Dropped(Dropped),
    /// Something failed and will be retried after `delay`.
    Retrying { error: String, delay: Duration },
    /// A PutMedia session is streaming.
    Connected { endpoint: String },
    /// Nothing more can be done: the element posts an error and emits `stream-error`.
    Fatal { status: u32, message: String },
    /// After [`Uploader::finish`]: everything was persisted, or the deadline passed with
    /// `unconfirmed` fragments left.
    Finished { unconfirmed: usize },
}

pub type EventSink = Arc<dyn Fn(UploadEvent) + Send + Sync>;

/// State shared by the element and its uploader task.
pub(crate) struct Shared {
    store: Mutex<FragmentStore>,
    /// Wakes the task: new fragment, finish request.
    data: Notify,
    /// Wakes a producer blocked on a full store (offline mode).
    space: Condvar,
    finish_deadline: Mutex<Option<Instant>>,
    cancel: CancellationToken,
    stats: Arc<UploadStats>,
}

impl Shared {
    fn store(&self) -> MutexGuard<'_, FragmentStore> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a PERSISTED ACK (or a final RECEIVED one) in the store and, the first time, in
    /// the statistics. Returns whether the store knew the fragment.
    fn persisted(&self, store: &mut FragmentStore, timecode: u64) -> bool {
        let before = store.persisted_count();
        let known = store.on_persisted(timecode);
        if store.persisted_count() > before {
            self.stats.persisted(timecode);
        }
        known
    }

    fn finish_deadline(&self) -> Option<Instant> {
        *self
            .finish_deadline
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn freed(&self) {
        self.space.notify_all();
    }
}

/// Returned by [`Uploader::put_blocking`] when the wait was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cancelled while waiting for space in the fragment store")]
pub struct Cancelled;

/// Handle on a running uploader task.
pub struct Uploader {
    shared: Arc<Shared>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Uploader {
    /// Starts the task. `dispatch` receives the task's `tracing` events (see `logging`); `stats`
    /// what it puts, sends and gets confirmed.
    pub fn start(
        config: UploadConfig,
        store: FragmentStore,
        events: EventSink,
        dispatch: tracing::Dispatch,
        stats: Arc<UploadStats>,
    ) -> Self {
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            data: Notify::new(),
            space: Condvar::new(),
            finish_deadline: Mutex::new(None),
            cancel: CancellationToken::new(),
            stats,
        });
        let task = RUNTIME.spawn(
            run(shared.clone(), config, events)
                .instrument(tracing::info_span!("uploader"))
                .with_subscriber(dispatch),
        );
        Self {
            shared,
            task: Mutex::new(Some(task)),
        }
    }

    /// Adds a piece of fragment (realtime modes: evicting the oldest fragments if needed) and
    /// wakes the sender.
    /// An offline-mode store that is full takes the piece over its budget instead of waiting.
    pub fn put(&self, piece: StorePiece) -> Vec<Dropped> {
        let dropped = {
            let mut store = self.shared.store();
            let note = PieceNote::of(&piece);
            let dropped = match store.put(piece) {
                Ok(d) => d,
                Err(p) => store.put_over_budget(p),
            };
            self.shared.stats.put(note);
            dropped
        };
        self.shared.data.notify_one();
        dropped
    }

    /// Adds a piece of fragment, waiting for space (offline mode). Ends early when the uploader
    /// is cancelled or `cancelled()` returns true.
    pub fn put_blocking(
        &self,
        piece: StorePiece,
        cancelled: impl Fn() -> bool,
    ) -> Result<Vec<Dropped>, Cancelled> {
        let mut store = self.shared.store();
        let mut piece = piece;
        let note = PieceNote::of(&piece);
        loop {
            match store.put(piece) {
                Ok(dropped) => {
                    self.shared.stats.put(note);
                    drop(store);
                    self.shared.data.notify_one();
                    return Ok(dropped);
                }
                Err(p) => {
                    piece = p;
                    if cancelled() || self.shared.cancel.is_cancelled() {
                        return Err(Cancelled);
                    }
                    store = self
                        .shared
                        .space
                        .wait_timeout(store, Duration::from_millis(100))
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    }

    /// Bytes of media held in the store.
    pub fn bytes_held(&self) -> usize {
        self.shared.store().bytes_held()
    }

    /// Fragments in the store (sent or not, until persisted).
    pub fn fragments_held(&self) -> usize {
        self.shared.store().len()
    }

    /// No more fragments will come: upload what is left, then report
    /// [`UploadEvent::Finished`] once everything is persisted or at `deadline`.
    pub fn finish(&self, deadline: Instant) {
        *self
            .shared
            .finish_deadline
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(deadline);
        self.shared.data.notify_one();
    }

    /// Wakes a producer blocked in [`Uploader::put_blocking`] so it can see its cancellation.
    pub fn unblock(&self) {
        self.shared.freed();
    }

    /// Waits until the task has ended by itself (after [`UploadEvent::Finished`] or a fatal
    /// error), at most until `deadline`. Returns whether it ended. Must not be called from a
    /// runtime thread (it then returns false at once).
    pub fn join(&self, deadline: Instant) -> bool {
        let Some(task) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return true;
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            *self.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
            return false;
        }
        let mut task = task;
        let done = RUNTIME.block_on(async {
            tokio::time::timeout_at(deadline.into(), &mut task)
                .await
                .is_ok()
        });
        if !done {
            *self.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        }
        done
    }

    /// Stops the task at once: what is not persisted is given up.
    pub fn stop(&self) {
        self.shared.cancel.cancel();
        self.shared.freed();
        if let Some(task) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
    }

    /// Fragments not yet persisted.
    pub fn unconfirmed(&self) -> usize {
        self.shared
            .store()
            .fragments()
            .filter(|f| !f.is_done())
            .count()
    }
}

impl Drop for Uploader {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sleeps `delay`, ending early on cancel or when the finish deadline passes.
/// Returns false when the task must end.
/// Reports `error` as retried after the next backoff delay and waits that long; false when the
/// uploader must stop instead (cancelled, or the finish deadline passed). A `wait` (a new
/// stream becoming ACTIVE) is no error for the statistics.
async fn back_off(
    backoff: &mut Backoff,
    shared: &Shared,
    events: &EventSink,
    why: &str,
    error: String,
    wait: bool,
) -> bool {
    if !wait {
        shared.stats.retrying(&error);
    }
    let delay = backoff.next_delay();
    tracing::warn!(%error, ?delay, "{why}, retrying");
    events(UploadEvent::Retrying { error, delay });
    pause(shared, delay).await && !finish_if_due(shared, events)
}

async fn pause(shared: &Shared, delay: Duration) -> bool {
    let until = Instant::now() + delay;
    let until = match shared.finish_deadline() {
        Some(d) if d < until => d,
        _ => until,
    };
    tokio::select! {
        _ = shared.cancel.cancelled() => false,
        _ = tokio::time::sleep_until(until.into()) => true,
    }
}

fn finish_if_due(shared: &Shared, events: &EventSink) -> bool {
    let Some(deadline) = shared.finish_deadline() else {
        return false;
    };
    let store = shared.store();
    // Kept fragments are safe with the service, but their PERSISTED ACK is lost: as the
    // reference, EOS waits for confirmations and says how many did not come.
    let unconfirmed = store
        .fragments()
        .filter(|f| !f.is_done() || f.state == FragmentState::Kept)
        .count();
    if unconfirmed == 0 || Instant::now() >= deadline {
        drop(store);
        events(UploadEvent::Finished { unconfirmed });
        return true;
    }
    false
}

async fn setup(
    control: &ControlPlane,
    config: &UploadConfig,
    stream_ready: &mut bool,
) -> Result<String, ControlError> {
    if !*stream_ready {
        let arn = control.ensure_stream(&config.stream).await?;
        tracing::info!(stream = %config.stream.stream_name, %arn, "stream is ready");
        *stream_ready = true;
    }
    let endpoint = control.data_endpoint(&config.stream.stream_name).await?;
    tracing::debug!(%endpoint, "PutMedia endpoint");
    Ok(endpoint)
}

async fn run(shared: Arc<Shared>, config: UploadConfig, events: EventSink) {
    let fatal = |message: String| {
        events(UploadEvent::Fatal {
            status: control::status::PUT_STREAM_CALL_FAILED,
            message,
        })
    };
    let control = match ControlPlane::new(&config.control, config.credentials.clone()) {
        Ok(c) => c,
        Err(e) => return fatal(format!("cannot create the control-plane client: {e}")),
    };
    let client = match transport::putmedia_client(
        config.control.ca.as_ref(),
        config.control.connect_timeout,
    ) {
        Ok(c) => c,
        Err(e) => return fatal(format!("cannot create the HTTP client: {e}")),
    };
    let mut plain_http_warned = false;
    let mut credentials_failing_since: Option<Instant> = None;
    let mut backoff = Backoff::default();
    let mut stream_ready = false;
    let mut endpoint: Option<(String, Instant)> = None;

    loop {
        if shared.cancel.is_cancelled() {
            return;
        }
        // Nothing is connected until there is something to send.
        if !shared.store().has_pending() {
            if finish_if_due(&shared, &events) {
                return;
            }
            let notified = shared.data.notified();
            let deadline = shared.finish_deadline();
            tokio::select! {
                _ = shared.cancel.cancelled() => return,
                _ = notified => {}
                _ = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d.into()).await,
                        None => std::future::pending().await,
                    }
                } => {}
            }
            continue;
        }

        // Credentials first: a failure here is retried while fragments keep buffering.
        let got = tokio::select! {
            _ = shared.cancel.cancelled() => return,
            r = config.credentials.get() => r,
        };
        if let Err(e) = got {
            let since = *credentials_failing_since.get_or_insert_with(Instant::now);
            if !e.is_transient() || since.elapsed() >= CREDENTIAL_FAILURE_LIMIT {
                tracing::error!(error = %e, "no credentials");
                events(UploadEvent::Fatal {
                    status: control::status::NOT_AUTHORIZED,
                    message: e.to_string(),
                });
                return;
            }
            let why = "getting credentials failed";
            if !back_off(&mut backoff, &shared, &events, why, e.to_string(), false).await {
                return;
            }
            continue;
        }
        credentials_failing_since = None;

        let data_endpoint = match &endpoint {
            Some((url, at)) if at.elapsed() < ENDPOINT_CACHE_DURATION => url.clone(),
            _ => {
                let result = tokio::select! {
                    _ = shared.cancel.cancelled() => return,
                    r = setup(&control, &config, &mut stream_ready) => r,
                };
                match result {
                    Ok(url) => {
                        match transport::check_scheme(&url, config.explicit_endpoint) {
                            Ok(true) if !plain_http_warned => {
                                plain_http_warned = true;
                                tracing::warn!(endpoint = %url, "streaming over plain HTTP, as configured: use this only with a local endpoint");
                            }
                            Ok(_) => {}
                            Err(e) => return fatal(e),
                        }
                        endpoint = Some((url.clone(), Instant::now()));
                        url
                    }
                    Err(e)
                        if e.is_expired_credentials()
                            && config.credentials.source().refreshable() =>
                    {
                        config.credentials.invalidate();
                        let why = "the credentials expired, fetching new ones";
                        if !back_off(&mut backoff, &shared, &events, why, e.to_string(), false)
                            .await
                        {
                            return;
                        }
                        continue;
                    }
                    Err(e) if e.is_expired_credentials() => {
                        let message = format!(
                            "{e}: the credentials from {} have expired and cannot be refreshed; use credential-path, iot-certificate or the AWS default chain for credentials that are renewed",
                            config.credentials.source().describe()
                        );
                        tracing::error!(error = %message, "control plane failed");
                        events(UploadEvent::Fatal {
                            status: control::status::NOT_AUTHORIZED,
                            message,
                        });
                        return;
                    }
                    Err(e) if e.is_fatal() => {
                        tracing::error!(error = %e, "control plane failed");
                        events(UploadEvent::Fatal {
                            status: e.status(),
                            message: e.to_string(),
                        });
                        return;
                    }
                    Err(e) => {
                        let why = "control plane call failed";
                        let wait = matches!(e, ControlError::StreamNotActive(..));
                        if !back_off(&mut backoff, &shared, &events, why, e.to_string(), wait).await
                        {
                            return;
                        }
                        continue;
                    }
                }
            }
        };

        let outcome = session::run(&shared, &config, &client, &data_endpoint, &events).await;
        if outcome.persisted_any {
            backoff.reset();
        }
        match outcome.end {
            session::End::Cancelled => return,
            session::End::Finished => {
                if finish_if_due(&shared, &events) {
                    return;
                }
                // Not everything is confirmed and there is time left: resend what is not safe
                // with the service; if nothing is, only confirmations that can no longer come
                // are missing: wait for stop-stream-timeout.
                let dropped = shared.store().rewind(config.replay_window, true);
                report_drops(&events, dropped);
                if !shared.store().has_pending() {
                    if let Some(deadline) = shared.finish_deadline() {
                        tokio::select! {
                            _ = shared.cancel.cancelled() => return,
                            _ = tokio::time::sleep_until(deadline.into()) => {}
                        }
                    }
                    finish_if_due(&shared, &events);
                    return;
                }
            }
            session::End::Rotate => {
                let dropped = shared.store().rewind(config.replay_window, true);
                report_drops(&events, dropped);
            }
            session::End::Failed(failure) => {
                let dropped = shared.store().rewind(
                    config.replay_window,
                    failure.host_alive && config.fragment_acks,
                );
                report_drops(&events, dropped);
                shared.freed();
                if failure.fatal {
                    tracing::error!(error = %failure.message, "stream failed");
                    events(UploadEvent::Fatal {
                        status: failure.status,
                        message: failure.message,
                    });
                    return;
                }
                if failure.credentials_refused {
                    config.credentials.invalidate();
                }
                if failure.resetup {
                    endpoint = None;
                    stream_ready = false;
                } else if failure.invalidate_endpoint {
                    endpoint = None;
                }
                shared.stats.retrying(&failure.message);
                let delay = backoff.next_delay();
                tracing::warn!(error = %failure.message, ?delay, "PutMedia session ended, reconnecting");
                events(UploadEvent::Retrying {
                    error: failure.message,
                    delay,
                });
                if !config.restart_on_error {
                    events(UploadEvent::Fatal {
                        status: failure.status,
                        message: "the connection failed and restart-on-error is false".to_owned(),
                    });
                    return;
                }
                if !pause(&shared, delay).await || finish_if_due(&shared, &events) {
                    return;
                }
            }
        }
    }
}

fn report_drops(events: &EventSink, dropped: Vec<Dropped>) {
    for d in dropped {
        tracing::warn!(
            timecode = d.timecode,
            reason = d.reason.as_str(),
            "fragment dropped"
        );
        events(UploadEvent::Dropped(d));
    }
}
