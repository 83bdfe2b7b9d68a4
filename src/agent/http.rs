//! Agent HTTP endpoints: not written yet.
