//! The local spool: when Kafka stops confirming, ingest appends ticks to a file (fsync'd per
//! batch) instead of holding them in memory, and drains the file in order once Kafka answers
//! again. (A publication librdkafka already held and that fails only after its message
//! timeout, 5 minutes into an outage, is spooled behind newer ticks: order within a symbol can
//! then differ, never the set of ticks.) Records are `[len u32 LE][crc32 u32 LE][protobuf tick]`; a torn last record (a crash
//! mid-write) is detected by its length or checksum and dropped with a warning, never decoded.
//! Dead letters produced while ingest spools go to a second spool of the same format
//! (`ingest-dlq.spool`, records the encoded `DeadLetter`), drained the same way.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use tick_core::Tick;

/// What a spool holds: a record that encodes to bytes and back.
pub trait SpoolRecord: Sized {
    /// The spool's file name in the spool directory.
    const FILE: &'static str;
    /// Returns the record's bytes.
    fn to_bytes(&self) -> Vec<u8>;
    /// Returns the record of `bytes`, or `None` if they are not one.
    fn from_bytes(bytes: &[u8]) -> Option<Self>;
}

impl SpoolRecord for Tick {
    const FILE: &'static str = "ingest.spool";
    fn to_bytes(&self) -> Vec<u8> {
        self.encode()
    }
    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        Tick::decode(bytes).ok()
    }
}

/// An encoded dead letter (the protobuf `DeadLetter` published on `ticks.dlq`).
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedDeadLetter(pub Vec<u8>);

impl SpoolRecord for EncodedDeadLetter {
    const FILE: &'static str = "ingest-dlq.spool";
    fn to_bytes(&self) -> Vec<u8> {
        self.0.clone()
    }
    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        Some(Self(bytes.to_vec()))
    }
}

/// An append-only spool file.
pub struct Spool<T = Tick> {
    path: PathBuf,
    file: File,
    depth: u64,
    _records: std::marker::PhantomData<T>,
}

/// CRC-32 (IEEE) of a spooled record, as `crc32fast` computes it.
fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

impl<T: SpoolRecord> Spool<T> {
    /// Opens (or creates) the spool in `dir`; records left by a previous run are kept, to be
    /// drained first.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(T::FILE);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)?;
        let mut s = Self {
            path,
            file,
            depth: 0,
            _records: std::marker::PhantomData,
        };
        let (ticks, good) = s.read_valid()?;
        // Cut a torn tail off, so later appends are not hidden behind it.
        if good < s.file.metadata()?.len() {
            s.file.set_len(good)?;
            s.file.sync_all()?;
        }
        s.depth = ticks.len() as u64;
        Ok(s)
    }

    /// Returns how many ticks wait in the spool.
    pub fn depth(&self) -> u64 {
        self.depth
    }

    /// Appends `ticks` and makes them durable (fsync) before returning.
    pub fn append(&mut self, ticks: &[T]) -> std::io::Result<()> {
        if ticks.is_empty() {
            return Ok(());
        }
        let mut w = BufWriter::new(&self.file);
        for t in ticks {
            let bytes = t.to_bytes();
            w.write_all(&(bytes.len() as u32).to_le_bytes())?;
            w.write_all(&crc32(&bytes).to_le_bytes())?;
            w.write_all(&bytes)?;
        }
        w.flush()?;
        drop(w);
        self.file.sync_data()?;
        self.depth += ticks.len() as u64;
        Ok(())
    }

    /// Returns every spooled tick in append order.
    pub fn read_all(&self) -> std::io::Result<Vec<T>> {
        Ok(self.read_valid()?.0)
    }

    /// Returns the valid records and the length of the valid prefix of the file.
    fn read_valid(&self) -> std::io::Result<(Vec<T>, u64)> {
        let mut bytes = Vec::new();
        File::open(&self.path)?.read_to_end(&mut bytes)?;
        let mut out = Vec::new();
        let mut at = 0;
        while at + 8 <= bytes.len() {
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
            let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
            let Some(body) = bytes.get(at + 8..at + 8 + len) else {
                break;
            };
            if crc32(body) != crc {
                break;
            }
            match T::from_bytes(body) {
                Some(t) => out.push(t),
                None => break,
            }
            at += 8 + len;
        }
        if at != bytes.len() {
            tracing::warn!(path = %self.path.display(), bytes = bytes.len() - at, "spool ends in a torn record (crash mid-write); cutting it off");
        }
        Ok((out, at as u64))
    }

    /// Empties the spool once its ticks are confirmed by the bus.
    pub fn clear(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.file.sync_all()?;
        self.depth = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick(i: i64) -> Tick {
        let mut sim = crate::sim::Simulator::new(&crate::sim::SimConfig::default());
        sim.next_tick(1_000 + i, 1_000 + i)
    }

    #[test]
    fn appends_survive_reopen_in_order_and_clear_empties() {
        let dir = tempfile::tempdir().unwrap();
        let mut s: Spool = Spool::open(dir.path()).unwrap();
        s.append(&[tick(1), tick(2)]).unwrap();
        s.append(&[tick(3)]).unwrap();
        drop(s);
        let mut s: Spool = Spool::open(dir.path()).unwrap();
        assert_eq!(s.depth(), 3);
        let back: Vec<i64> = s
            .read_all()
            .unwrap()
            .iter()
            .map(|t| t.ts_event_ns)
            .collect();
        assert_eq!(back, vec![1001, 1002, 1003]);
        s.clear().unwrap();
        assert_eq!(Spool::<Tick>::open(dir.path()).unwrap().depth(), 0);
    }

    #[test]
    fn a_torn_tail_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let mut s: Spool = Spool::open(dir.path()).unwrap();
        s.append(&[tick(1), tick(2)]).unwrap();
        let path = dir.path().join("ingest.spool");
        let len = std::fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let mut s: Spool = Spool::open(dir.path()).unwrap();
        assert_eq!(s.depth(), 1);
        // Appends after the cut are readable: the torn bytes are gone.
        s.append(&[tick(3)]).unwrap();
        let back: Vec<i64> = Spool::<Tick>::open(dir.path())
            .unwrap()
            .read_all()
            .unwrap()
            .iter()
            .map(|t| t.ts_event_ns)
            .collect();
        assert_eq!(back, vec![1001, 1003]);
        assert_eq!(
            crc32(b"123456789"),
            0xcbf4_3926,
            "the standard CRC-32 check value"
        );
    }
}
