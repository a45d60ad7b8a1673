//! Wakes the media core at a deadline when no buffer arrives to do it: a frame that waits for a
//! silent live track must leave when the wait's clock bound passes, even if every source went
//! quiet. One small task per running stream on the shared runtime; the work itself runs on a
//! blocking thread of the runtime (it takes the element's locks).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::media::timeline::{SystemClock, WallClock};
use crate::upload::RUNTIME;

/// The deadline of the stream's media core, kept up to date by the element; dropping it ends
/// the task.
#[derive(Debug)]
pub struct Ticker {
    deadline: watch::Sender<Option<u64>>,
}

impl Ticker {
    /// Starts the task; `on_tick` runs at each deadline (wall-clock ns since the epoch, the
    /// clock of the timeline) and is expected to [`Self::set`] the next one.
    pub fn start(on_tick: impl Fn() + Send + Sync + 'static) -> Self {
        let (tx, mut rx) = watch::channel(None::<u64>);
        let on_tick = Arc::new(on_tick);
        RUNTIME.spawn(async move {
            loop {
                let deadline = *rx.borrow_and_update();
                let Some(at) = deadline else {
                    if rx.changed().await.is_err() {
                        return;
                    }
                    continue;
                };
                let wait = Duration::from_nanos(at.saturating_sub(SystemClock.now_ns()));
                tokio::select! {
                    changed = rx.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                    () = tokio::time::sleep(wait) => {
                        let on_tick = on_tick.clone();
                        if tokio::task::spawn_blocking(move || on_tick()).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Self { deadline: tx }
    }

    /// The core's next deadline after a change (a buffer, an event, a tick).
    pub fn set(&self, deadline: Option<u64>) {
        self.deadline.send_if_modified(|d| {
            let changed = *d != deadline;
            *d = deadline;
            changed
        });
    }
}
