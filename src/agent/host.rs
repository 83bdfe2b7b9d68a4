//! Host probe: not written yet.
