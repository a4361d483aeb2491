//! One error type for the crate; every variant names the file or field a user can fix.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Corpus { path: PathBuf, message: String },
    #[error("{path}: not a usable ailla checkpoint: {message}")]
    Checkpoint { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("invalid setting `{field}`: {message}")]
    Invalid { field: String, message: String },
    #[error("{0}")]
    Numeric(String),
    #[error("interrupted; {0}")]
    Interrupted(String),
    /// The input was read but is wrong; the details were already printed.
    #[error("{0}")]
    Rejected(String),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Error::Invalid { field: field.to_string(), message: message.into() }
    }

    /// Exit code convention shared by every verb: 1 for a failure of the work, 2 for unusable input.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Numeric(_) | Error::Interrupted(_) | Error::Rejected(_) => 1,
            _ => 2,
        }
    }
}
