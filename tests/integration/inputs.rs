//! Names and sizes taken from callers: on-behalf-of, task names, audiences; what reaches tables, logs and status messages.
