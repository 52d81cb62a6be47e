//! The engine's top-level error: a roll-up of each module's errors, and the one place that
//! says which of them are the request's fault ([`Error::wire_code`]).

use std::path::PathBuf;

use gatewarden_protocol::ErrorCode;

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
    /// The gallery folder cannot be used as it is: a segment or its manifest is missing,
    /// cut short, corrupt or of another version. It is derived data, rebuilt from the store.
    #[error(
        "{source}; the gallery is only a copy of the templates in the store: stop gatewarden, \
         delete {} and start again to rebuild it from the store",
        dir.display()
    )]
    GalleryRebuild {
        /// The gallery folder.
        dir: PathBuf,
        /// What is wrong with it.
        source: crate::gallery::GalleryError,
    },
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
    /// A face template comes from another model than the gallery's.
    #[error("template model {found:?} is not the gallery's model {expected:?}")]
    UnknownModel {
        /// The template's model.
        found: String,
        /// The gallery's model.
        expected: String,
    },
    /// A face template's length is not the gallery's dimension.
    #[error("template has {found} values; the gallery's dimension is {expected}")]
    DimensionMismatch {
        /// The template's length.
        found: usize,
        /// The gallery's dimension.
        expected: usize,
    },
}

impl Error {
    /// The wire code a QUIC client is answered with. A fault of the request itself (a value
    /// out of range, a credential held by another person, an unknown subject) is a 1xx code,
    /// which tells a client not to resend it unchanged; only a failure of the server is
    /// `internal` (3xx), which tells it to retry.
    pub fn wire_code(&self) -> ErrorCode {
        match self {
            Self::Invalid(_) => ErrorCode::InvalidValue,
            Self::UnknownModel { .. } => ErrorCode::UnknownModel,
            Self::DimensionMismatch { .. } => ErrorCode::DimensionMismatch,
            Self::Store(e) if e.is_request_fault() => ErrorCode::InvalidValue,
            Self::Config(_)
            | Self::Store(_)
            | Self::Gallery(_)
            | Self::GalleryRebuild { .. }
            | Self::Policy(_)
            | Self::Pipeline(_)
            | Self::Io { .. } => ErrorCode::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use gatewarden_protocol::SubjectId;

    use super::*;
    use crate::store::StoreError;

    #[test]
    fn request_faults_are_1xx_and_server_faults_3xx() {
        let taken = Error::Store(StoreError::CredentialTaken {
            kind: "ID card",
            subject: SubjectId(2),
            holder: SubjectId(1),
        });
        assert_eq!(taken.wire_code(), ErrorCode::InvalidValue);
        let unknown = Error::Store(StoreError::UnknownSubject(SubjectId(3)));
        assert_eq!(unknown.wire_code(), ErrorCode::InvalidValue);
        let model = Error::UnknownModel {
            found: "other".to_owned(),
            expected: "face".to_owned(),
        };
        assert_eq!(model.wire_code(), ErrorCode::UnknownModel);
        let dim = Error::DimensionMismatch {
            found: 3,
            expected: 128,
        };
        assert_eq!(dim.wire_code(), ErrorCode::DimensionMismatch);
        let disk = Error::Store(StoreError::Incompatible {
            found: 9,
            supported: 1,
        });
        assert_eq!(disk.wire_code(), ErrorCode::Internal);
        assert_eq!(
            Error::Invalid("all zeros".to_owned()).wire_code(),
            ErrorCode::InvalidValue
        );
    }
}
