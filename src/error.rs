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
    /// The input was read but is wrong (a rules file with errors); the details were already printed.
    #[error("{0}")]
    Rejected(String),
    /// Work that was started failed (a sweep member diverged); the details were already printed.
    #[error("{0}")]
    Failed(String),
    /// A check held only within its stated tolerances, not bit for bit (`ailla verify` in another
    /// numerical environment); the details were already printed.
    #[error("{0}")]
    WithinTolerance(String),
    /// A result came out NaN or infinite: it is not printed as a result, nor used in a decision.
    #[error("{what} is {value}, not a number ailla reports: {hint}")]
    NotFinite { what: String, value: f64, hint: String },
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Error::Invalid { field: field.to_string(), message: message.into() }
    }

    /// The first of `fields` whose count is 0, as an error; settings that count things start at 1.
    pub fn require_counts<'a>(fields: impl IntoIterator<Item = (&'a str, usize)>) -> Result<(), Error> {
        match fields.into_iter().find(|&(_, value)| value == 0) {
            Some((field, _)) => Err(Error::invalid(field, "must be at least 1")),
            None => Ok(()),
        }
    }

    /// An error unless `bits` is finite and non-negative (positive when `zero_allowed` is false).
    pub fn require_bits(field: &str, bits: f64, zero_allowed: bool) -> Result<(), Error> {
        let (fine, kind) = if zero_allowed { (bits >= 0.0, "non-negative") } else { (bits > 0.0, "positive") };
        if fine && bits.is_finite() {
            Ok(())
        } else {
            Err(Error::invalid(field, format!("must be a {kind} number of bits")))
        }
    }

    /// Exit code convention shared by every verb: 1 for a failure of the work, 2 for unusable input
    /// (a rules file with errors included), 3 for a result that is not a finite number, 4 for a
    /// verification that held within tolerance but not bit for bit.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Numeric(_) | Error::Interrupted(_) | Error::Failed(_) => 1,
            Error::NotFinite { .. } => 3,
            Error::WithinTolerance(_) => 4,
            _ => 2,
        }
    }

    /// `value` itself, or [`Error::NotFinite`] naming `what` it is and `hint` what to do.
    pub fn require_finite(what: &str, value: f64, hint: &str) -> Result<f64, Error> {
        if value.is_finite() {
            Ok(value)
        } else {
            Err(Error::NotFinite { what: what.to_string(), value, hint: hint.to_string() })
        }
    }
}
