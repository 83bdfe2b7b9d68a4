//! Per-GPU aggregation windows: not written yet.
