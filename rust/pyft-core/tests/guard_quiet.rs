//! `guard::catch` keeps a caught panic's message off stderr and leaves other panics to the hook
//! that was installed before it (its own process: panic hooks are process-wide).

use std::sync::atomic::{AtomicUsize, Ordering};

use pyft_core::error::Error;
use pyft_core::guard::catch;

static REPORTED: AtomicUsize = AtomicUsize::new(0);

#[test]
fn caught_panics_are_quiet_and_others_still_reported() {
    std::panic::set_hook(Box::new(|_| {
        REPORTED.fetch_add(1, Ordering::SeqCst);
    }));
    let err = catch(|m| Error::Template(m.to_owned()), || -> pyft_core::Result<()> { panic!("inside") });
    assert_eq!(err.unwrap_err().to_string(), "chat template: inside");
    assert_eq!(REPORTED.load(Ordering::SeqCst), 0, "a panic inside catch reached the previous hook");
    // Outside `catch` (on another thread, so the test survives), the previous hook runs.
    assert!(std::thread::spawn(|| panic!("outside")).join().is_err());
    assert_eq!(REPORTED.load(Ordering::SeqCst), 1, "a panic outside catch did not reach the previous hook");
}
