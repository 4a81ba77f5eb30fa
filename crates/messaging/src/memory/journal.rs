//! Append-only journal of the in-process broker: one JSON object per line. Replayed at open,
//! then rewritten as a compact snapshot (atomic rename), so it only holds live state.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use crate::broker::{BindingSpec, ExchangeKind, QueueSpec};
use crate::message::Headers;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(super) enum Entry {
    Exchange {
        name: String,
        kind: ExchangeKind,
    },
    Queue {
        spec: QueueSpec,
    },
    Bind {
        binding: BindingSpec,
    },
    DeleteQueue {
        name: String,
    },
    Topic {
        name: String,
        partitions: i32,
    },
    Append {
        topic: String,
        partition: i32,
        offset: i64,
        key: Option<String>,
        headers: Headers,
        payload: Payload,
        at_ms: i64,
    },
    Commit {
        group: String,
        topic: String,
        partition: i32,
        offset: i64,
    },
    Enqueue {
        queue: String,
        id: u64,
        exchange: String,
        routing_key: String,
        headers: Headers,
        payload: Payload,
    },
    Remove {
        queue: String,
        id: u64,
    },
}

/// Bytes as base64 in the JSON journal.
#[derive(Debug, Clone)]
pub(super) struct Payload(pub bytes::Bytes);

impl Serialize for Payload {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD
            .decode(text.as_bytes())
            .map(|v| Payload(v.into()))
            .map_err(serde::de::Error::custom)
    }
}

pub(super) struct Journal {
    path: PathBuf,
    writer: BufWriter<File>,
    fsync: bool,
    /// Bytes written since the last compaction.
    pub(super) written: u64,
}

impl Journal {
    pub(super) fn path_in(dir: &Path) -> PathBuf {
        dir.join("broker.journal")
    }

    /// Read every complete entry. A torn last line (crash mid-write) is ignored.
    pub(super) fn read(dir: &Path) -> std::io::Result<Vec<Entry>> {
        let path = Self::path_in(dir);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut entries = Vec::new();
        let mut lines = BufReader::new(file).lines().peekable();
        while let Some(line) = lines.next() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Entry>(&line) {
                Ok(entry) => entries.push(entry),
                Err(e) if lines.peek().is_none() => {
                    tracing::warn!(error = %e, path = %path.display(), "ignoring torn last journal entry");
                }
                Err(e) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{}: corrupt entry: {e}", path.display()),
                    ));
                }
            }
        }
        Ok(entries)
    }

    /// Replace the journal with `snapshot` (write to a temp file, fsync, rename).
    pub(super) fn rewrite(dir: &Path, snapshot: &[Entry], fsync: bool) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = Self::path_in(dir);
        let tmp = dir.join("broker.journal.tmp");
        {
            let mut w = BufWriter::new(File::create(&tmp)?);
            for entry in snapshot {
                serde_json::to_writer(&mut w, entry)?;
                w.write_all(b"\n")?;
            }
            w.flush()?;
            w.get_ref().sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        let file = OpenOptions::new().append(true).open(&path)?;
        Ok(Self {
            path,
            writer: BufWriter::new(file),
            fsync,
            written: 0,
        })
    }

    /// Append entries and push them to the OS (and to disk when `fsync`), so a killed process
    /// loses nothing it acknowledged.
    pub(super) fn append(&mut self, entries: &[Entry]) -> std::io::Result<()> {
        for entry in entries {
            let line = serde_json::to_vec(entry)?;
            self.written += line.len() as u64 + 1;
            self.writer.write_all(&line)?;
            self.writer.write_all(b"\n")?;
        }
        self.writer.flush()?;
        if self.fsync {
            self.writer.get_ref().sync_data()?;
        }
        Ok(())
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }
}
