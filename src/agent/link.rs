//! Coordinator session: not written yet.
