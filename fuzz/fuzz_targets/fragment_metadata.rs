//! Fragment metadata (`gstkvssink::media::fragment_metadata`, the `kvs-add-metadata` event) and its
//! Matroska encoding (`mkv::cluster::put_tag_chain`).
//! Input: a sequence of operations `[op][name bytes] 0x00 [value bytes] 0x00`; op % 4: add
//! (bit 0: persistent) / take for the next fragment / take unsent (end of stream).
//! Checks: no panic; the queue behaves like a plain model of the documented rules; every chain
//! is as long as announced and reads back as the name and value.
#![no_main]

use gstkvssink::media::fragment_metadata::{MAX_ITEMS, MAX_NAME_LEN, MAX_VALUE_LEN, MetadataQueue};
use gstkvssink::media::mkv::cluster::{put_tag_chain, tag_chain_len};
use libfuzzer_sys::fuzz_target;

#[derive(Clone)]
struct Item {
    name: String,
    value: String,
    persistent: bool,
}

/// The rules of the module docs, written the simplest way.
#[derive(Default)]
struct Model(Vec<Item>);

impl Model {
    fn add(&mut self, name: &str, value: &str, persistent: bool) -> bool {
        if name.is_empty()
            || name.starts_with("AWS")
            || name.len() > MAX_NAME_LEN
            || value.len() > MAX_VALUE_LEN
        {
            return false;
        }
        if persistent {
            if let Some(at) = self.0.iter().position(|i| i.persistent && i.name == name) {
                if value.is_empty() {
                    self.0.remove(at);
                } else {
                    self.0[at].value = value.to_owned();
                }
                return true;
            }
            if value.is_empty() {
                return true;
            }
        }
        if self.0.len() >= MAX_ITEMS {
            return false;
        }
        self.0.push(Item {
            name: name.into(),
            value: value.into(),
            persistent,
        });
        true
    }
}

/// Reads one EBML element with the 8-byte sizes the writer uses: (id, body, rest).
fn element(b: &[u8], id_len: usize) -> (u32, &[u8], &[u8]) {
    let id = b[..id_len].iter().fold(0u32, |a, &x| a << 8 | u32::from(x));
    assert_eq!(b[id_len], 0x01, "size is not 8 bytes wide");
    let mut size = [0u8; 8];
    size[1..].copy_from_slice(&b[id_len + 1..id_len + 8]);
    let size = u64::from_be_bytes(size) as usize;
    let body = &b[id_len + 8..id_len + 8 + size];
    (id, body, &b[id_len + 8 + size..])
}

fn check_chain(name: &str, value: &str) {
    let mut buf = Vec::new();
    put_tag_chain(&mut buf, name, value);
    assert_eq!(buf.len(), tag_chain_len(name, value));
    let (id, tags, rest) = element(&buf, 4);
    assert_eq!((id, rest.len()), (0x1254_C367, 0));
    let (id, tag, rest) = element(tags, 2);
    assert_eq!((id, rest.len()), (0x7373, 0));
    let (id, simple, rest) = element(tag, 2);
    assert_eq!((id, rest.len()), (0x67C8, 0));
    let (id, n, rest) = element(simple, 2);
    assert_eq!((id, n), (0x45A3, name.as_bytes()));
    let (id, v, rest) = element(rest, 2);
    assert_eq!((id, v, rest.len()), (0x4487, value.as_bytes(), 0));
}

fn field(data: &mut &[u8]) -> String {
    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let s = String::from_utf8_lossy(&data[..end]).into_owned();
    *data = data.get(end + 1..).unwrap_or_default();
    s
}

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let mut queue = MetadataQueue::new();
    let mut model = Model::default();
    while let Some((&op, rest)) = data.split_first() {
        data = rest;
        match op % 4 {
            0 | 1 => {
                let name = field(&mut data);
                let value = field(&mut data);
                let persistent = op % 4 == 1;
                let ok = queue.add(&name, &value, persistent).is_ok();
                assert_eq!(ok, model.add(&name, &value, persistent));
            }
            2 => {
                let expected: Vec<(String, String)> = model
                    .0
                    .iter()
                    .map(|i| (i.name.clone(), i.value.clone()))
                    .collect();
                let encoded = queue.encoded_len();
                let mut got = Vec::new();
                queue.take_for_fragment(|n, v| got.push((n.to_owned(), v.to_owned())));
                assert_eq!(got, expected);
                let sum: usize = got.iter().map(|(n, v)| tag_chain_len(n, v)).sum();
                assert_eq!(encoded, sum);
                for (n, v) in &got {
                    check_chain(n, v);
                }
                model.0.retain(|i| i.persistent);
            }
            _ => {
                let expected: Vec<(String, String)> = model
                    .0
                    .iter()
                    .filter(|i| !i.persistent)
                    .map(|i| (i.name.clone(), i.value.clone()))
                    .collect();
                let encoded = queue.unsent_encoded_len();
                let mut got = Vec::new();
                queue.take_unsent(|n, v| got.push((n.to_owned(), v.to_owned())));
                assert_eq!(got, expected);
                let sum: usize = got.iter().map(|(n, v)| tag_chain_len(n, v)).sum();
                assert_eq!(encoded, sum);
                model.0.retain(|i| i.persistent);
            }
        }
        assert_eq!(queue.len(), model.0.len());
        assert!(queue.len() <= MAX_ITEMS);
    }
});
