//! A simulated disk that loses what was not synced, for power-cut tests.
//!
//! kill -9 cannot show a power cut: the page cache survives the process. With
//! the `failpoints` feature (the tests' build; never in release builds) and
//! `KVD_POWER_CUT_SIM=1` in its environment, kvd keeps every write to its WAL
//! segments and to its backend file in memory until the fdatasync that makes
//! it durable. A kill -9 then loses exactly the writes a power cut would
//! lose, in both files together (`server/tests/power_cut.rs` and the fault
//! harness use it). Without the variable, or without the feature, the real
//! files are used.
//!
//! The model is a disk that makes nothing durable before a sync and
//! everything written before a sync at the sync, which redb's and the WAL's
//! crash arguments must hold for. (Sectors persisted out of order by a real
//! disk are the WAL's unit tests' `lossy` layer.)

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

/// Whether this process simulates a disk that loses unsynced writes.
pub fn enabled() -> bool {
    cfg!(feature = "failpoints") && std::env::var_os("KVD_POWER_CUT_SIM").is_some_and(|v| v == "1")
}

/// The WAL's open hook: the simulated disk when [`enabled`].
pub fn wal_hook() -> crate::wal::segment::OpenHook {
    if enabled() { wal_segment } else { crate::wal::segment::real_file }
}

/// Creates or opens a redb database at `path`, on the simulated disk when
/// [`enabled`].
pub fn create_database(builder: &redb::Builder, path: &std::path::Path) -> Result<redb::Database, redb::DatabaseError> {
    if enabled() {
        let file = VolatileFile::open(path).map_err(|e| redb::DatabaseError::Storage(redb::StorageError::Io(e)))?;
        builder.create_with_backend(file)
    } else {
        builder.create(path)
    }
}

/// The WAL's segment files: written at the fdatasync that covers them.
pub struct VolatileSegment {
    file: File,
    pending: Mutex<Vec<(u64, Vec<u8>)>>,
}

/// Wraps a WAL segment (the WAL's open hook).
pub fn wal_segment(file: File) -> Box<dyn crate::wal::segment::SegmentFile> {
    Box::new(VolatileSegment { file, pending: Mutex::new(Vec::new()) })
}

impl crate::wal::segment::SegmentFile for VolatileSegment {
    fn pwrite(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.pending.lock().map_err(|_| io::Error::other("poisoned"))?.push((offset, buf.to_vec()));
        Ok(())
    }

    fn fdatasync(&self) -> io::Result<()> {
        let mut p = self.pending.lock().map_err(|_| io::Error::other("poisoned"))?;
        for (off, buf) in p.drain(..) {
            self.file.write_all_at(&buf, off)?;
        }
        self.file.sync_data()
    }
}

const BLOCK: u64 = 4096;

/// The backend's file for redb: reads see every write; the file gets them
/// at `sync_data`.
#[derive(Debug)]
pub struct VolatileFile {
    file: File,
    state: Mutex<Overlay>,
}

#[derive(Debug)]
struct Overlay {
    /// Blocks written since the last sync, by block number.
    dirty: BTreeMap<u64, Box<[u8]>>,
    len: u64,
}

impl VolatileFile {
    pub fn open(path: &std::path::Path) -> io::Result<VolatileFile> {
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        let len = file.metadata()?.len();
        Ok(VolatileFile { file, state: Mutex::new(Overlay { dirty: BTreeMap::new(), len }) })
    }

    /// Block `b` as the file holds it (zeros past its end).
    fn read_block(&self, b: u64) -> io::Result<Box<[u8]>> {
        let mut buf = vec![0u8; BLOCK as usize].into_boxed_slice();
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], b * BLOCK + done as u64)? {
                0 => break,
                n => done += n,
            }
        }
        Ok(buf)
    }

    fn lock(&self) -> io::Result<std::sync::MutexGuard<'_, Overlay>> {
        self.state.lock().map_err(|_| io::Error::other("poisoned"))
    }
}

impl redb::StorageBackend for VolatileFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.lock()?.len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let st = self.lock()?;
        if offset + out.len() as u64 > st.len {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"));
        }
        let mut pos = 0usize;
        while pos < out.len() {
            let at = offset + pos as u64;
            let (b, within) = (at / BLOCK, (at % BLOCK) as usize);
            let n = (BLOCK as usize - within).min(out.len() - pos);
            match st.dirty.get(&b) {
                Some(block) => out[pos..pos + n].copy_from_slice(&block[within..within + n]),
                None => out[pos..pos + n].copy_from_slice(&self.read_block(b)?[within..within + n]),
            }
            pos += n;
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut st = self.lock()?;
        // Growing: new bytes read as zeros. Shrinking: the file is cut at
        // once (redb shrinks only a file it has synced).
        if len < st.len {
            self.file.set_len(len)?;
            let first_gone = len.div_ceil(BLOCK);
            st.dirty.retain(|b, _| *b < first_gone);
            if !len.is_multiple_of(BLOCK)
                && let Some(block) = st.dirty.get_mut(&(len / BLOCK))
            {
                block[(len % BLOCK) as usize..].fill(0);
            }
        }
        st.len = len;
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut st = self.lock()?;
        if self.file.metadata()?.len() < st.len {
            self.file.set_len(st.len)?;
        }
        for (b, block) in std::mem::take(&mut st.dirty) {
            let end = ((b + 1) * BLOCK).min(st.len);
            if end > b * BLOCK {
                self.file.write_all_at(&block[..(end - b * BLOCK) as usize], b * BLOCK)?;
            }
        }
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut st = self.lock()?;
        let mut pos = 0usize;
        while pos < data.len() {
            let at = offset + pos as u64;
            let (b, within) = (at / BLOCK, (at % BLOCK) as usize);
            let n = (BLOCK as usize - within).min(data.len() - pos);
            let block = match st.dirty.entry(b) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => e.insert(self.read_block(b)?),
            };
            block[within..within + n].copy_from_slice(&data[pos..pos + n]);
            pos += n;
        }
        st.len = st.len.max(offset + data.len() as u64);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use redb::StorageBackend;

    use super::*;

    /// What was written reads back at once; only a sync reaches the file.
    #[test]
    fn writes_reach_the_file_at_sync_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let f = VolatileFile::open(&path).unwrap();
        f.set_len(3 * BLOCK).unwrap();
        f.write(BLOCK - 3, b"abcdef").unwrap();
        let mut out = [0u8; 6];
        f.read(BLOCK - 3, &mut out).unwrap();
        assert_eq!(&out, b"abcdef");
        assert_eq!(std::fs::read(&path).unwrap().len(), 0, "nothing written before the sync");
        f.sync_data().unwrap();
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(on_disk.len() as u64, 3 * BLOCK);
        assert_eq!(&on_disk[(BLOCK - 3) as usize..(BLOCK + 3) as usize], b"abcdef");
        // Unsynced writes after it are lost with the process, as by a power cut.
        f.write(0, b"lost").unwrap();
        drop(f);
        assert_eq!(&std::fs::read(&path).unwrap()[..4], &[0, 0, 0, 0]);
    }

    #[test]
    fn a_database_on_it_survives_what_it_synced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        const T: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("t");
        {
            let db = redb::Database::builder().create_with_backend(VolatileFile::open(&path).unwrap()).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(T).unwrap().insert(b"durable".as_slice(), b"1".as_slice()).unwrap();
            tx.commit().unwrap();
            let mut tx = db.begin_write().unwrap();
            tx.set_durability(redb::Durability::None).unwrap();
            tx.open_table(T).unwrap().insert(b"volatile".as_slice(), b"2".as_slice()).unwrap();
            tx.commit().unwrap();
            // The process dies here: nothing more reaches the file.
            std::mem::forget(db);
        }
        let db = redb::Database::builder().create(&path).unwrap();
        let tx = redb::ReadableDatabase::begin_read(&db).unwrap();
        let t = tx.open_table(T).unwrap();
        assert!(t.get(b"durable".as_slice()).unwrap().is_some());
        assert!(t.get(b"volatile".as_slice()).unwrap().is_none());
    }
}
