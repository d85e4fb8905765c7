//! The fault campaign: kill -9 under load, a full disk, partitions.
