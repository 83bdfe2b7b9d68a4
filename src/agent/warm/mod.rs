//! Page-cache warmer: not written yet.
