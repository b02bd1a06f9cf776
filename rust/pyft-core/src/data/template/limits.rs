//! Bounds on one render: how many steps it may run and how much text it may write.
//!
//! A chat template is code from a model repository. Without bounds a loop such as two nested
//! `range(99999)` runs for hours and a loop printing `'x' * 10**8` fills memory. Each render
//! (one conversation) therefore gets:
//! - [`FUEL`] steps: minijinja's fuel, one unit per VM instruction;
//! - [`MAX_TEXT`] bytes of printed text: counted where `{{ ... }}` values are formatted (also
//!   text captured by macros and `{% set %}` blocks, which is how a template can double a
//!   string without printing it) and again in the final output (which also holds the
//!   template's literal text).
//!
//! Not bounded: strings grown by `~` or `+` without ever being printed, which minijinja builds
//! without a hook to count them (a template that doubles a string forty times with `~` still
//! needs 2^40 bytes). Fuel bounds how often it can try.

use std::cell::Cell;
use std::io;

use minijinja::{Error, ErrorKind};

/// Steps (minijinja VM instructions) one render may run.
///
/// Measured on the real-template tests (`tests/test_data_template_real.py` and
/// `tests/test_data_template.py`: llama.cpp's 71 published chat templates over plain and tool
/// chats, 1231 renders), the most any render used was 2,233 steps; the `data prepare` tests
/// (built-in and real tokenizers' templates) used at most 305. 10 million leaves a margin of
/// over 4000× for long conversations (steps grow with the number of messages and tools) and
/// stops a runaway loop in about 0.4 s in a release build.
pub(crate) const FUEL: u64 = 10_000_000;

/// Bytes of text one render may write: far more than any training sequence (a 128k-token
/// context is well under 1 MiB of text).
pub(crate) const MAX_TEXT: usize = 16 << 20;

/// [`MAX_TEXT`] as people read it.
pub(crate) const MAX_TEXT_NAME: &str = "16 MiB";

/// The limit a render ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    /// [`FUEL`].
    Steps,
    /// [`MAX_TEXT`].
    Text,
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Limit::Steps => {
                write!(f, "ran past the limit of {FUEL} steps for one conversation (a loop that does not end?)")
            }
            Limit::Text => {
                write!(f, "wrote more than {MAX_TEXT_NAME} of text for one conversation, the limit")
            }
        }
    }
}

impl std::error::Error for Limit {}

thread_local! {
    /// Bytes formatted so far by the render running on this thread (a render never leaves its
    /// thread; [`start`] resets it).
    static FORMATTED: Cell<usize> = const { Cell::new(0) };
}

/// Resets the formatted-text count for a render about to start on this thread.
pub(crate) fn start() {
    FORMATTED.with(|n| n.set(0));
}

/// Counts `len` more formatted bytes; an error once the render's total passes [`MAX_TEXT`].
pub(crate) fn count_formatted(len: usize) -> Result<(), Error> {
    let total = FORMATTED.with(|n| {
        let total = n.get().saturating_add(len);
        n.set(total);
        total
    });
    if total > MAX_TEXT {
        return Err(Error::new(ErrorKind::InvalidOperation, Limit::Text.to_string()).with_source(Limit::Text));
    }
    Ok(())
}

/// The limit behind a minijinja error, if one is.
pub(crate) fn hit(err: &Error) -> Option<Limit> {
    if err.kind() == ErrorKind::OutOfFuel {
        return Some(Limit::Steps);
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(limit) = e.downcast_ref::<Limit>() {
            return Some(*limit);
        }
        cur = e.source();
    }
    None
}

/// The render's output, refusing to grow past [`MAX_TEXT`].
#[derive(Debug, Default)]
pub(crate) struct Output {
    /// The text written so far (UTF-8: minijinja writes `str`s).
    pub(crate) bytes: Vec<u8>,
    /// Whether a write was refused.
    pub(crate) full: bool,
}

impl io::Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.bytes.len() + buf.len() > MAX_TEXT {
            self.full = true;
            return Err(io::Error::other(Limit::Text));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
