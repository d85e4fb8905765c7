//! What the control plane believes a host about: usage reports, acknowledgments, what Sync tells each host; unauthenticated Enroll.
