//! The seam between the writer and the disk: how a batch is made durable.

/// How the writer makes a batch durable. Production flushes sled; unit tests substitute a
/// flush that fails, to check what callers see then. A type parameter of the writer, so
/// the release path is a direct call.
pub(super) trait Flush: Send + 'static {
    fn flush(&mut self, db: &sled::Db) -> sled::Result<()>;
}

/// sled's own flush (fsync of everything written so far).
pub(super) struct SledFlush;

impl Flush for SledFlush {
    fn flush(&mut self, db: &sled::Db) -> sled::Result<()> {
        db.flush().map(drop)
    }
}

/// Fails the next `n` flushes, then flushes: a disk that fills up and is freed again.
/// For tests outside the store that need a failed write followed by working ones.
#[cfg(test)]
pub(crate) struct FailNext(pub std::sync::Arc<std::sync::atomic::AtomicU32>);

#[cfg(test)]
impl Flush for FailNext {
    fn flush(&mut self, db: &sled::Db) -> sled::Result<()> {
        use std::sync::atomic::Ordering;
        let failing = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            return Err(sled::Error::Io(std::io::Error::from_raw_os_error(28)));
        }
        db.flush().map(drop)
    }
}
