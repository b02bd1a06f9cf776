//! The one error type of pyft-core.

use std::path::PathBuf;

/// Where a record came from: the input file and its 1-based line (JSONL), element
/// (JSON array, counted from 1) or row (Parquet, counted from 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The input file as given by the user.
    pub file: PathBuf,
    /// 1-based line, array element or row number.
    pub line: usize,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// Every failure pyft-core reports. Messages are lowercase and name the culprit.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A record in an input file is malformed or fails validation.
    #[error("{location}: {}{message}", field.as_ref().map(|f| format!("field `{f}`: ")).unwrap_or_default())]
    Record {
        /// The file and line of the record.
        location: Location,
        /// The offending field (a JSON path such as `messages[2].role`), when one is to blame.
        field: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// A whole input file is unusable (unknown extension, not JSON, not Parquet, …).
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A chat template failed to compile or render.
    #[error("chat template: {0}")]
    Template(String),
    /// A tokenizer file could not be loaded or used.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// An option value the caller chose is invalid (an unknown method, a density out of range, an
    /// output path inside an input, …). Not for defects of input files ([`Error::File`]), shapes
    /// ([`Error::Shape`]) or pyft's own failures ([`Error::Internal`]).
    #[error("invalid option: {0}")]
    Option(String),
    /// Tensor shapes or buffer sizes do not fit together (a tensor that disagrees with
    /// `config.json`, a row length that is not a whole number of quantization blocks, a buffer of
    /// the wrong length); the message names the tensor and both sizes.
    #[error("{0}")]
    Shape(String),
    /// pyft broke one of its own invariants (a worker thread that stopped, a writer used out of
    /// order): a bug in pyft, never the user's input. The message asks for a report.
    #[error("internal error (a pyft bug; please report it with the command that failed): {0}")]
    Internal(String),
    /// A tensor's values cannot be processed (e.g. NaN or infinity where a quantizer needs
    /// finite numbers); the message names the element.
    #[error("{0}")]
    Value(String),
}

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
