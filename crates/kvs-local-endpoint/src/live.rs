//! The live tail: what PutMedia sessions receive, published frame by frame for GetMedia readers.
//!
//! Owns: one hub per stream with a broadcast channel of [`LiveEvent`]s (a fragment began, one of
//! its blocks arrived, it ended) and a copy of the fragment being received (its start and the
//! blocks so far), so a reader that subscribes in the middle of a fragment gets all of it: the
//! copy and the subscription are taken under the same lock the publisher holds, so no event falls
//! between them. Nothing stays behind a fragment: the copy goes when it ends, and the broadcast
//! drops an event once every reader has it.
//!
//! Publishing never waits for readers: a reader that falls more than [`CAPACITY`] events behind
//! loses its place (the broadcast reports the lag) and its response ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::broadcast;

use super::mkv::SessionHeader;

/// Events a reader may fall behind before it loses its place (at 30 fps video and 50 fps audio,
/// about 50 s).
pub(crate) const CAPACITY: usize = 4096;

/// A fragment began: what its chunk's header needs.
#[derive(Debug)]
pub(crate) struct FragmentStart {
    pub number: Arc<str>,
    /// The EBML header, Info and Tracks of the session that carries it.
    pub header: SessionElements,
    /// Cluster Timecode (TimecodeScale units).
    pub timecode: u64,
    pub server_timestamp: SystemTime,
    pub producer_timestamp_ms: u64,
}

/// The elements of a session's header a chunk repeats, as received.
#[derive(Debug, Clone)]
pub(crate) struct SessionElements {
    pub ebml: Bytes,
    pub info: Bytes,
    pub tracks: Bytes,
}

impl From<&SessionHeader> for SessionElements {
    fn from(h: &SessionHeader) -> Self {
        SessionElements {
            ebml: h.ebml.clone(),
            info: h.info.clone(),
            tracks: h.tracks.clone(),
        }
    }
}

/// What a PutMedia session publishes, in the order it reads the body.
#[derive(Debug, Clone)]
pub(crate) enum LiveEvent {
    Start(Arc<FragmentStart>),
    /// A whole SimpleBlock or BlockGroup element of the fragment `number`.
    Block {
        number: Arc<str>,
        element: Bytes,
    },
    /// The fragment is complete (`complete`) or was given up (ERROR ACK, connection lost).
    End {
        number: Arc<str>,
        complete: bool,
    },
}

/// The fragment being received, as a late reader needs it.
#[derive(Debug, Clone)]
pub(crate) struct OpenFragment {
    pub start: Arc<FragmentStart>,
    pub blocks: Vec<Bytes>,
}

#[derive(Debug, Default)]
struct Hub {
    tx: Option<broadcast::Sender<LiveEvent>>,
    open: Option<OpenFragment>,
    latest_server_timestamp: Option<SystemTime>,
}

/// All streams' hubs.
#[derive(Debug, Default)]
pub(crate) struct Live {
    hubs: Mutex<HashMap<String, Hub>>,
}

impl Live {
    fn hubs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Hub>> {
        self.hubs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes an event of `stream` to its readers (none: only the copy is updated).
    pub fn publish(&self, stream: &str, event: LiveEvent) {
        let mut hubs = self.hubs();
        let hub = match hubs.get_mut(stream) {
            Some(h) => h,
            None => hubs.entry(stream.to_owned()).or_default(),
        };
        match &event {
            LiveEvent::Start(s) => {
                hub.latest_server_timestamp = Some(s.server_timestamp);
                hub.open = Some(OpenFragment {
                    start: s.clone(),
                    blocks: Vec::new(),
                });
            }
            LiveEvent::Block { number, element } => {
                if let Some(open) = hub.open.as_mut().filter(|o| o.start.number == *number) {
                    open.blocks.push(element.clone());
                }
            }
            LiveEvent::End { number, .. } => {
                if hub.open.as_ref().is_some_and(|o| o.start.number == *number) {
                    hub.open = None;
                }
            }
        }
        if let Some(tx) = &hub.tx
            && tx.receiver_count() > 0
        {
            let _ = tx.send(event);
        }
    }

    /// The fragment of `stream` being received (if any) and every event after it.
    pub fn subscribe(
        &self,
        stream: &str,
    ) -> (Option<OpenFragment>, broadcast::Receiver<LiveEvent>) {
        let mut hubs = self.hubs();
        let hub = hubs.entry(stream.to_owned()).or_default();
        let rx = match &hub.tx {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = broadcast::channel(CAPACITY);
                hub.tx = Some(tx);
                rx
            }
        };
        (hub.open.clone(), rx)
    }

    /// Server timestamp of the newest fragment of `stream` that began.
    pub fn latest_server_timestamp(&self, stream: &str) -> Option<SystemTime> {
        self.hubs()
            .get(stream)
            .and_then(|h| h.latest_server_timestamp)
    }
}
