//! Fragment metadata (`kvs-add-metadata` events): the reference's rules (PIC
//! `putFragmentMetadata`, docs/kvs-protocol.md §1.5 and §2.3) and which items go in front of which
//! fragment.
//!
//! - The name must not be empty and must not start with "AWS" (reserved for the service's own
//!   tags, such as `AWS_KINESISVIDEO_END_OF_FRAGMENT`).
//! - Name ≤ 128 bytes, value ≤ 256 bytes (UTF-8 bytes, as the C SDK counts them).
//! - At most 25 items queued (persistent items plus not yet emitted ones).
//! - Persistent: replaces an item of the same name; an empty value deletes it. Emitted in front of
//!   every fragment.
//! - Non-persistent: emitted once, in front of the next fragment that starts.
//!
//! A refused item is an error naming the rule; nothing else is affected.

use std::collections::VecDeque;

/// Logs go to the media debug category (`kvssink-media`), like the other fragment modules.
const LOG_TARGET: &str = "gstkvssink::media";

pub const MAX_NAME_LEN: usize = 128;
pub const MAX_VALUE_LEN: usize = 256;
/// `MAX_FRAGMENT_METADATA_COUNT`.
pub const MAX_ITEMS: usize = 25;
pub const RESERVED_PREFIX: &str = "AWS";

/// Why a metadata item was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    #[error("metadata name must not be empty")]
    EmptyName,
    #[error("metadata name '{0}' must not start with \"AWS\" (reserved for the service)")]
    ReservedName(String),
    #[error("metadata name is {len} bytes long; at most {MAX_NAME_LEN} are allowed")]
    NameTooLong { len: usize },
    #[error("value of metadata '{name}' is {len} bytes long; at most {MAX_VALUE_LEN} are allowed")]
    ValueTooLong { name: String, len: usize },
    #[error("{MAX_ITEMS} metadata items are already queued; '{name}' was not added")]
    QueueFull { name: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Item {
    name: String,
    value: String,
    persistent: bool,
}

/// Persistent and pending metadata of one stream, in the order they were added.
#[derive(Debug, Default, Clone)]
pub struct MetadataQueue {
    items: VecDeque<Item>,
}

impl MetadataQueue {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Adds an item under the reference's rules.
    pub fn add(&mut self, name: &str, value: &str, persistent: bool) -> Result<(), MetadataError> {
        if name.is_empty() {
            return Err(MetadataError::EmptyName);
        }
        if name.starts_with(RESERVED_PREFIX) {
            return Err(MetadataError::ReservedName(name.to_owned()));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(MetadataError::NameTooLong { len: name.len() });
        }
        if value.len() > MAX_VALUE_LEN {
            return Err(MetadataError::ValueTooLong {
                name: name.to_owned(),
                len: value.len(),
            });
        }
        if persistent {
            if let Some(at) = self
                .items
                .iter()
                .position(|i| i.persistent && i.name == name)
            {
                if value.is_empty() {
                    self.items.remove(at);
                    tracing::debug!(
                target: LOG_TARGET,
                "persistent metadata '{name}' removed");
                } else {
                    self.items[at].value = value.to_owned();
                    tracing::debug!(
                target: LOG_TARGET,
                "persistent metadata '{name}' replaced");
                }
                return Ok(());
            }
            if value.is_empty() {
                // Deleting something that is not there: nothing to do.
                return Ok(());
            }
        }
        if self.items.len() >= MAX_ITEMS {
            return Err(MetadataError::QueueFull {
                name: name.to_owned(),
            });
        }
        self.items.push_back(Item {
            name: name.to_owned(),
            value: value.to_owned(),
            persistent,
        });
        Ok(())
    }

    /// The items to put in front of the next fragment, in order; non-persistent ones are removed.
    pub fn take_for_fragment(&mut self, mut f: impl FnMut(&str, &str)) {
        for i in &self.items {
            f(&i.name, &i.value);
        }
        self.items.retain(|i| i.persistent);
    }

    /// Like [`Self::take_for_fragment`] but without emitting persistent items (end of stream:
    /// the not yet sent items are flushed before the end-of-fragment tag).
    pub fn take_unsent(&mut self, mut f: impl FnMut(&str, &str)) {
        for i in self.items.iter().filter(|i| !i.persistent) {
            f(&i.name, &i.value);
        }
        self.items.retain(|i| i.persistent);
    }

    /// Bytes of the Tags chains the next fragment would carry.
    pub fn encoded_len(&self) -> usize {
        self.items
            .iter()
            .map(|i| crate::media::mkv::cluster::tag_chain_len(&i.name, &i.value))
            .sum()
    }

    /// Like [`Self::encoded_len`] for [`Self::take_unsent`].
    pub fn unsent_encoded_len(&self) -> usize {
        self.items
            .iter()
            .filter(|i| !i.persistent)
            .map(|i| crate::media::mkv::cluster::tag_chain_len(&i.name, &i.value))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(q: &mut MetadataQueue) -> Vec<(String, String)> {
        let mut v = Vec::new();
        q.take_for_fragment(|n, val| v.push((n.to_owned(), val.to_owned())));
        v
    }

    fn pair(n: &str, v: &str) -> (String, String) {
        (n.to_owned(), v.to_owned())
    }

    #[test]
    fn rules_are_the_references() {
        let mut q = MetadataQueue::new();
        assert_eq!(q.add("", "v", false), Err(MetadataError::EmptyName));
        assert_eq!(
            q.add("AWS_THING", "v", false),
            Err(MetadataError::ReservedName("AWS_THING".into()))
        );
        assert!(q.add("aws_lower", "v", false).is_ok());
        assert_eq!(
            q.add(&"n".repeat(129), "v", false),
            Err(MetadataError::NameTooLong { len: 129 })
        );
        assert!(q.add(&"n".repeat(128), &"v".repeat(256), false).is_ok());
        assert_eq!(
            q.add("x", &"v".repeat(257), true),
            Err(MetadataError::ValueTooLong {
                name: "x".into(),
                len: 257
            })
        );
        let err = q.add("AWSx", "", false).unwrap_err().to_string();
        assert!(err.contains("must not start with \"AWS\""), "{err}");
    }

    #[test]
    fn at_most_25_items() {
        let mut q = MetadataQueue::new();
        for i in 0..25 {
            q.add(&format!("k{i}"), "v", i % 2 == 0).unwrap();
        }
        assert_eq!(
            q.add("k25", "v", false),
            Err(MetadataError::QueueFull { name: "k25".into() })
        );
        // Replacing a persistent item is not an addition.
        assert!(q.add("k0", "new", true).is_ok());
        // After a fragment took the non-persistent ones there is room again.
        assert_eq!(take(&mut q).len(), 25);
        assert_eq!(q.len(), 13);
        assert!(q.add("k25", "v", false).is_ok());
    }

    #[test]
    fn persistent_items_repeat_and_can_be_replaced_or_deleted() {
        let mut q = MetadataQueue::new();
        q.add("camera", "front", true).unwrap();
        q.add("event", "motion", false).unwrap();
        assert_eq!(
            take(&mut q),
            vec![pair("camera", "front"), pair("event", "motion")]
        );
        assert_eq!(take(&mut q), vec![pair("camera", "front")]);
        q.add("camera", "back", true).unwrap();
        assert_eq!(take(&mut q), vec![pair("camera", "back")]);
        q.add("camera", "", true).unwrap();
        assert!(take(&mut q).is_empty());
        // Deleting an unknown persistent item is a no-op.
        q.add("nothing", "", true).unwrap();
        assert!(q.is_empty());
        // A non-persistent item with the same name as a persistent one is separate.
        q.add("camera", "x", true).unwrap();
        q.add("camera", "y", false).unwrap();
        let mut unsent = Vec::new();
        q.take_unsent(|n, v| unsent.push(pair(n, v)));
        assert_eq!(unsent, vec![pair("camera", "y")]);
        assert_eq!(q.len(), 1);
    }
}
