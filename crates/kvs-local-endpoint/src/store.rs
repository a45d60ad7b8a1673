//! On-disk storage of persisted fragments.
//!
//! Owns: one playable `.mkv` per stream (`<stream>.mkv` under the storage directory): the EBML
//! header, an unknown-size Segment, the Info and Tracks of the first session, then every persisted
//! fragment's bytes exactly as received. When a later session brings different Tracks (a new
//! codec configuration) or the stream was deleted and created again, a new file
//! `<stream>.<n>.mkv` is started, so every file stays playable with `ffplay`/`gst-play-1.0`.
//! SeekHead, Void and Cues of the body are not stored: their offsets would be wrong here.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::mkv::SessionHeader;

/// Segment with an unknown size (8-byte size field, as the KVS producers write it).
const SEGMENT_UNKNOWN_SIZE: [u8; 12] = [
    0x18, 0x53, 0x80, 0x67, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
];

/// Where a fragment's bytes are in the stored file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StoredLocation {
    pub path: PathBuf,
    pub offset: u64,
    pub len: u64,
}

#[derive(Debug)]
struct StreamFile {
    path: PathBuf,
    tracks: Vec<u8>,
    incarnation: u64,
    len: u64,
}

#[derive(Debug, Default)]
struct Files {
    current: HashMap<String, StreamFile>,
    generations: HashMap<String, u32>,
}

#[derive(Debug)]
pub(crate) struct Store {
    dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    files: Mutex<Files>,
}

impl Store {
    /// Stores under `dir`, or under a temporary directory removed when the store is dropped.
    pub fn new(dir: Option<PathBuf>) -> io::Result<Self> {
        let (dir, temp) = match dir {
            Some(d) => {
                std::fs::create_dir_all(&d)?;
                (d, None)
            }
            None => {
                let t = tempfile::Builder::new().prefix("kvs-local-").tempdir()?;
                (t.path().to_owned(), Some(t))
            }
        };
        Ok(Store {
            dir,
            _temp: temp,
            files: Mutex::new(Files::default()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file that receives the stream's next fragments, if any was written.
    pub fn current_path(&self, stream: &str) -> Option<PathBuf> {
        let files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        files.current.get(stream).map(|f| f.path.clone())
    }

    /// Appends a fragment (blocking I/O: call from a blocking thread).
    pub fn append(
        &self,
        stream: &str,
        incarnation: u64,
        header: &SessionHeader,
        fragment: &[u8],
    ) -> io::Result<StoredLocation> {
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        let reusable = files
            .current
            .get(stream)
            .is_some_and(|f| f.incarnation == incarnation && f.tracks == header.tracks[..]);
        if !reusable {
            let generation = files.generations.entry(stream.to_owned()).or_insert(0);
            let name = if *generation == 0 {
                format!("{stream}.mkv")
            } else {
                format!("{stream}.{generation}.mkv")
            };
            *generation += 1;
            let path = self.dir.join(name);
            let mut f = File::create(&path)?;
            f.write_all(&header.ebml)?;
            f.write_all(&SEGMENT_UNKNOWN_SIZE)?;
            f.write_all(&header.info)?;
            f.write_all(&header.tracks)?;
            let len = (header.ebml.len()
                + SEGMENT_UNKNOWN_SIZE.len()
                + header.info.len()
                + header.tracks.len()) as u64;
            files.current.insert(
                stream.to_owned(),
                StreamFile {
                    path,
                    tracks: header.tracks.to_vec(),
                    incarnation,
                    len,
                },
            );
        }
        let file = files.current.get_mut(stream).expect("inserted above");
        let mut f = OpenOptions::new().append(true).open(&file.path)?;
        f.write_all(fragment)?;
        let loc = StoredLocation {
            path: file.path.clone(),
            offset: file.len,
            len: fragment.len() as u64,
        };
        file.len += fragment.len() as u64;
        Ok(loc)
    }

    /// Reads back a stored fragment.
    pub fn read(loc: &StoredLocation) -> io::Result<Vec<u8>> {
        let mut f = File::open(&loc.path)?;
        f.seek(SeekFrom::Start(loc.offset))?;
        let mut buf = vec![0; loc.len as usize];
        f.read_exact(&mut buf)?;
        Ok(buf)
    }
}
