//! Partitions: an agent cut off from the control plane in the middle of a revocation, during a task, and for longer than `max_offline`, then healed.
