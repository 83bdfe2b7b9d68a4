//! Load generator: not written yet.
