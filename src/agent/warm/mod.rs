//! Page-cache warmer: keeps model weights resident so replicas start from RAM.
//!
//! Building blocks, each usable alone (benches and tests call them directly):
//! [`files`] lists a model's files safely, [`residency`] measures what is in
//! the page cache, [`fill`] reads what is missing, [`budget`] decides and
//! performs eviction, [`lock`] pins a model with mlock. [`Warmer`] drives them
//! from the agent, off its control loop.

pub mod budget;
mod entry;
pub mod files;
pub mod fill;
pub mod lock;
pub mod paths;
pub mod residency;
mod warmer;

pub use files::{list_model_files, ModelFile, ModelFiles};
pub use fill::{fill_files, fill_path, FillOptions, FillProgress, FillReport};
pub use residency::{measure, resident_bytes, Residency};
pub use warmer::{Desired, Warmer, WarmerConfig};

use std::path::PathBuf;

/// Why a model path could not be listed, opened or read as a whole.
#[derive(Debug, thiserror::Error)]
pub enum WarmError {
    #[error(transparent)]
    Path(#[from] paths::PathError),
    #[error("{path} is a {kind}; only regular files and directories of them can be warmed")]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{path}: {op} failed: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl WarmError {
    fn io(path: &std::path::Path, op: &'static str, source: std::io::Error) -> WarmError {
        WarmError::Io {
            path: path.to_path_buf(),
            op,
            source,
        }
    }
}
