//! One error type for the whole library. Every variant says which file, field or value
//! was wrong and what was expected, so the CLI can print it as a one-line message.

use std::path::PathBuf;

/// The result type used throughout attn.
pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A text file was not valid in the expected encoding.
    #[error("{path}: not valid {encoding} at byte offset {offset} (use --encoding latin1 for Latin-1 text)")]
    Encoding {
        path: PathBuf,
        encoding: &'static str,
        offset: usize,
    },
    /// A file was readable but its content is not what was expected.
    #[error("{path}: {message}")]
    BadFile { path: PathBuf, message: String },
    /// A configuration value or argument is out of range or inconsistent.
    #[error("invalid {name}: {message}")]
    InvalidValue { name: String, message: String },
    /// A model folder does not match what the code expects.
    #[error("model: {0}")]
    Model(String),
    /// The tokenizer could not do what was asked.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A compute device (a GPU) is missing, or failed.
    #[error("{0}")]
    Device(String),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn bad_file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::BadFile {
            path: path.into(),
            message: message.into(),
        }
    }

    pub fn invalid(name: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidValue {
            name: name.into(),
            message: message.into(),
        }
    }
}
