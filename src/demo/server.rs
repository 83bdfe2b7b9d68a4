//! Demo model server: not written yet.
