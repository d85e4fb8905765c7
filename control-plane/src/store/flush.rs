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
