//! Replica supervision: not written yet.
