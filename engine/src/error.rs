//! The engine's top-level error: a roll-up of each module's errors.

use std::path::PathBuf;

/// Anything that can go wrong opening or administering an engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The store (SQLite) failed or was refused.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The gallery failed or was refused.
    #[error(transparent)]
    Gallery(#[from] crate::gallery::GalleryError),
    /// The policy file is invalid.
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    /// The pipeline could not start.
    #[error(transparent)]
    Pipeline(#[from] crate::pipeline::PipelineError),
    /// A file or folder could not be used.
    #[error("{path}: {source}")]
    Io {
        /// Which.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A request was refused; the message says why.
    #[error("{0}")]
    Invalid(String),
}
