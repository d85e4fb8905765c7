//! Configuration and key-file bounds: every value checked at `--check-config`, no panic reachable from config.
