//! The socket paths both CLIs trust, and the directories the daemons create them in.
