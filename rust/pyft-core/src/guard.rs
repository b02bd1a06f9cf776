//! Panics in third-party parsers turned into typed errors.
//!
//! The crates pyft hands untrusted files to (`parquet`, `tokenizers` and its Oniguruma regexes,
//! `minijinja`) panic on some malformed inputs instead of returning an error: an out-of-bounds
//! index in a corrupt Parquet page, a regex that backtracks past Oniguruma's retry limit, a
//! template slicing an empty list backwards. Let out, such a panic reaches Python as a
//! `PanicException` traceback and stops a whole `data prepare` run. [`catch`] runs the call,
//! turns a panic into the error the caller would have returned for a malformed input (naming the
//! file or template), and keeps Rust's default "thread panicked at" message off stderr while it
//! does (a panic hook, installed once, stays quiet on threads inside [`catch`] and otherwise
//! hands over to the hook that was there before).
//!
//! This relies on `panic = "unwind"` (Cargo's default, kept in the workspace profiles): with
//! `panic = "abort"` the process would end instead.
//!
//! Cost: `catch_unwind` is free when nothing panics; entering [`catch`] reads and writes one
//! thread-local counter twice, so wrap whole calls (one file, one text, one render), not the
//! steps of an inner loop.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

use crate::error::{Error, Result};

thread_local! {
    /// How many [`catch`] calls this thread is inside (they may nest).
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Runs `f`; if it panics, returns `on_panic(message)` instead, where `message` is the panic's
/// text (e.g. `index out of bounds: the len is 3 but the index is 7`).
///
/// `on_panic` builds the error for a malformed input in the caller's terms: an
/// [`Error::File`] naming a data or tokenizer file, [`Error::Template`] naming the template,
/// [`Error::Tokenizer`] naming the tokenizer. State that `f` was changing when it panicked may
/// be left half-updated (caches, a lock poisoned): callers only use this around calls whose
/// failure they report, not to carry on with the same object as if nothing happened, unless
/// that object's later calls are guarded too.
pub fn catch<T>(on_panic: impl FnOnce(&str) -> Error, f: impl FnOnce() -> Result<T>) -> Result<T> {
    install_quiet_hook();
    DEPTH.with(|d| d.set(d.get() + 1));
    // Restores the depth however `catch_unwind` returns.
    struct Leave;
    impl Drop for Leave {
        fn drop(&mut self) {
            DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
        }
    }
    let _leave = Leave;
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic with a non-text payload".to_owned());
            Err(on_panic(&message))
        }
    }
}

/// Installs (once per process) the panic hook that stays quiet inside [`catch`] and delegates to
/// the previous hook everywhere else.
fn install_quiet_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // `try_with`: a panic while the thread's locals are being destroyed still reports.
            if DEPTH.try_with(Cell::get).unwrap_or(0) == 0 {
                previous(info);
            }
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_error(message: &str) -> Error {
        Error::File { path: "x.parquet".into(), message: format!("malformed: {message}") }
    }

    #[test]
    fn a_panic_becomes_the_callers_error() {
        let v: Vec<u8> = Vec::new();
        let i = v.len() + 3;
        let err = catch(file_error, || Ok(v[i])).unwrap_err().to_string();
        assert_eq!(err, "x.parquet: malformed: index out of bounds: the len is 0 but the index is 3");
        let err = catch(file_error, || -> Result<()> { panic!("formatted {}", 7) }).unwrap_err().to_string();
        assert_eq!(err, "x.parquet: malformed: formatted 7");
    }

    #[test]
    fn results_pass_through_and_depth_is_restored() {
        assert_eq!(catch(file_error, || Ok(5)).unwrap(), 5);
        let err = catch(file_error, || -> Result<()> { Err(Error::Template("t".into())) }).unwrap_err();
        assert!(matches!(err, Error::Template(m) if m == "t"));
        // Nested, with the inner one panicking: both levels are left.
        let outer = catch(file_error, || {
            let inner = catch(file_error, || -> Result<()> { panic!("inner") });
            assert!(inner.is_err());
            assert_eq!(DEPTH.with(Cell::get), 1);
            Ok(1)
        });
        assert_eq!(outer.unwrap(), 1);
        assert_eq!(DEPTH.with(Cell::get), 0);
    }
}
