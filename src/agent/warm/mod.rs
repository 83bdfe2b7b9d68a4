//! Page-cache warmer: keeps model weights resident so replicas start from RAM.

pub mod paths;
