//! The fuzzing harness shared by the `fuzz_*.rs` targets: stable Rust, no cargo-fuzz.
//!
//! A target is a [`Campaign`]: it first replays every file of its committed corpus
//! (`tests/corpus/<target>/`), then runs generated cases, each built from its own seeded
//! [`Rng`] (`seed`, target name and case index), so any case can be rebuilt alone. Every case runs
//! on a fresh named thread (`fuzz:<target>:case <index> ...`, so a panic or a stack overflow names
//! it) and must come back with `Ok` or a typed error within the time bound, allocating at most the
//! memory bound (a counting global allocator measures each case, one case at a time, and refuses
//! runaway allocations outright); a panic, a hang, an overrun or a broken contract (the check's
//! own `Err`) fails the test, and the input is saved under `target/tmp/fuzz-findings/<target>/`.
//! The one known limit left (minijinja has no bound on a string's size) keeps its reproducer in
//! `tests/corpus/template/known-failures/`, replayed only by an `#[ignore]`d test (see
//! `tests/corpus/README.md`).
//!
//! Environment:
//! - `PYFT_FUZZ_CASES`: generated cases per target (default: each target's CI budget; all targets
//!   together stay under a minute of `cargo test` on two cores).
//! - `PYFT_FUZZ_SECS`: instead, run each target's generated cases for this many seconds.
//! - `PYFT_FUZZ_ONLY`: run only this generated case (with the seed of the run that failed); its
//!   input is saved under `target/tmp/fuzz-findings/<target>/`.
//! - `PYFT_FUZZ_SEED`: base seed (default 0x5eed); `tools/fuzz` varies it.
//! - `PYFT_FUZZ_CASE_SECS`: time bound of one case in seconds (default 2).
//! - `PYFT_FUZZ_MEM_MB`: bound on the memory one case allocates, in MiB (default 256).
//! - `PYFT_FUZZ_SAVE`: a directory; the first input giving each distinct error (digits and
//!   quoted names blanked) is written to `<dir>/<target>/`, to grow the corpus.
#![allow(dead_code)] // each target binary uses part of the harness

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Memory accounting

/// The system allocator, counting live bytes and their peak, and refusing (after naming the
/// case) a single allocation or a live total above [`HARD_CAP`]: a runaway allocation fails the
/// run with the case's seed instead of taking the machine's memory.
pub struct Counting;

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Live bytes and their peak since the last [`reset_peak`].
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// The case now running (for the allocator's message), `u64::MAX` when none.
static CURRENT_CASE: AtomicU64 = AtomicU64::new(u64::MAX);
/// The running case's label, for the allocator's message (a fixed buffer: it cannot allocate).
static CURRENT_LABEL: Mutex<([u8; 200], usize)> = Mutex::new(([0; 200], 0));

fn set_label(label: &str) {
    let mut slot = CURRENT_LABEL.lock().unwrap_or_else(|e| e.into_inner());
    let n = label.len().min(200);
    let n = (0..=n).rev().find(|&i| label.is_char_boundary(i)).unwrap_or(0);
    slot.0[..n].copy_from_slice(&label.as_bytes()[..n]);
    slot.1 = n;
}

/// Hard cap on one allocation and on the live total: far above any case's bound, below the
/// memory of a CI runner.
const HARD_CAP: usize = 2 << 30;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !reserve(layout.size()) {
            return std::ptr::null_mut();
        }
        let p = System.alloc(layout);
        if p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !reserve(layout.size()) {
            return std::ptr::null_mut();
        }
        let p = System.alloc_zeroed(layout);
        if p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() && !reserve(new_size - layout.size()) {
            return std::ptr::null_mut();
        }
        let p = System.realloc(ptr, layout, new_size);
        match (p.is_null(), new_size > layout.size()) {
            (true, true) => {
                LIVE.fetch_sub(new_size - layout.size(), Ordering::Relaxed);
            }
            (false, false) => {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
            _ => {}
        }
        p
    }
}

/// Count `size` more live bytes, or refuse (printing the case, without allocating) above the cap.
fn reserve(size: usize) -> bool {
    let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
    if size > HARD_CAP || live > HARD_CAP {
        LIVE.fetch_sub(size, Ordering::Relaxed);
        // Formatting integers and a borrowed str into stderr does not allocate.
        match CURRENT_LABEL.try_lock() {
            Ok(slot) => eprintln!("fuzz: {} asked for {size} bytes with {live} live: refused",
                                  std::str::from_utf8(&slot.0[..slot.1]).unwrap_or("?")),
            Err(_) => eprintln!("fuzz: case {} asked for {size} bytes with {live} live: refused",
                                CURRENT_CASE.load(Ordering::Relaxed)),
        }
        return false;
    }
    PEAK.fetch_max(live, Ordering::Relaxed);
    true
}

/// The per-case memory bound in bytes (`PYFT_FUZZ_MEM_MB`, default 256 MiB).
pub fn mem_bound() -> usize {
    env_num("PYFT_FUZZ_MEM_MB").unwrap_or(256) as usize * (1 << 20)
}

fn reset_peak() -> usize {
    let live = LIVE.load(Ordering::Relaxed);
    PEAK.store(live, Ordering::Relaxed);
    live
}

// ---------------------------------------------------------------------------------------------
// Random numbers and mutation

/// splitmix64: tiny, fast, and every case's stream depends only on its seed.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.u64() % n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    /// One element of `items`.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.u64() as u8).collect()
    }

    /// A small size, usually tiny: `0..=max`, biased to the low end.
    pub fn small(&mut self, max: usize) -> usize {
        let cap = self.range(0, max);
        self.range(0, cap)
    }
}

/// 64-bit values that break length and offset arithmetic (`len` is the input's length).
pub fn interesting_u64(rng: &mut Rng, len: usize) -> u64 {
    let len = len as u64;
    *rng.pick(&[0, 1, 2, 7, 8, 0x7f, 0x80, 0xff, 0xffff, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff, 1 << 32,
                1 << 40, i64::MAX as u64, 1 << 63, u64::MAX, u64::MAX - 7, len, len.wrapping_sub(1), len + 1,
                len.wrapping_sub(8), len * 2])
}

/// Byte-level mutations: bit flips, interesting bytes and 16/32/64-bit words, truncation, chunk
/// insertion, deletion and duplication, invalid UTF-8 (`ops` of them).
pub fn mutate_bytes(rng: &mut Rng, buf: &mut Vec<u8>, ops: usize) {
    for _ in 0..ops {
        let len = buf.len();
        match rng.below(11) {
            0 if len > 0 => {
                let at = rng.below(len);
                buf[at] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let at = rng.below(len);
                buf[at] = *rng.pick(&[0, 1, 0x7f, 0x80, 0xff, b'"', b'\\', b'{', b'[', b'\n', b'%', b'}']);
            }
            2 if len >= 8 => {
                let at = rng.below(len - 7);
                let v = interesting_u64(rng, len);
                let width = *rng.pick(&[2usize, 4, 8]);
                buf[at..at + width].copy_from_slice(&v.to_le_bytes()[..width]);
            }
            3 => buf.truncate(rng.below(len + 1)),
            4 => {
                let at = rng.below(len + 1);
                let n = rng.small(32);
                let chunk = rng.bytes(n);
                buf.splice(at..at, chunk);
            }
            5 if len > 0 => {
                let a = rng.below(len);
                let b = (a + rng.small(64)).min(len);
                buf.drain(a..b);
            }
            6 if len > 0 => {
                let a = rng.below(len);
                let b = (a + rng.small(256)).min(len);
                let chunk = buf[a..b].to_vec();
                let at = rng.below(len + 1);
                buf.splice(at..at, chunk);
            }
            7 => {
                let at = rng.below(len + 1);
                const BAD: [&[u8]; 7] = [&[0xff], &[0xc0, 0x80], &[0x80], &[0xed, 0xa0, 0x80], &[0xf4, 0x90],
                                         &[0xef, 0xbb, 0xbf], &[0]];
                let bad = BAD[rng.below(BAD.len())];
                buf.splice(at..at, bad.iter().copied());
            }
            8 if len > 0 => {
                let at = rng.below(len);
                buf[at] = rng.u64() as u8;
            }
            9 if len > 1 => {
                let (a, b) = (rng.below(len), rng.below(len));
                buf.swap(a, b);
            }
            _ => {
                let at = rng.below(len + 1);
                let v = interesting_u64(rng, len);
                buf.splice(at..at, v.to_string().into_bytes());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Campaigns

/// What a case gave: accepted, or refused with a typed error (its message).
pub enum Outcome {
    /// The input was accepted.
    Accepted,
    /// The input was refused with this error message.
    Refused(String),
}

/// A case's check: the outcome, or `Err` when a contract is broken (an accepted file whose
/// tensors lie outside it, an error that does not name the file, ...).
pub type Check = dyn Fn(&Path, &[u8]) -> Result<Outcome, String> + Send + Sync;

/// Only one case runs at a time in a binary, so the allocator's peak belongs to it.
static CASE_LOCK: Mutex<()> = Mutex::new(());

/// The last panic of a case thread: `message (at file:line)`.
static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

/// Install (once) a panic hook that keeps quiet on case threads (their panics are reported with
/// the case) and records where they panicked; other threads keep the default hook.
fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !std::thread::current().name().is_some_and(|n| n.starts_with("fuzz:")) {
                return default(info);
            }
            let message = info.payload().downcast_ref::<String>().cloned()
                .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            let at = info.location().map(|l| format!(" (at {}:{})", l.file(), l.line())).unwrap_or_default();
            *LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("{message}{at}"));
        }));
    });
}

fn env_num(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

/// FNV-1a, to derive per-target seeds from names.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// The error's class: digits, quoted names and the case file's path blanked.
fn signature(message: &str, path: &Path) -> String {
    let message = message.replace(&path.display().to_string(), "<file>");
    let mut out = String::new();
    let mut quoted = false;
    for c in message.chars() {
        match c {
            '`' => {
                quoted = !quoted;
                if quoted {
                    out.push_str("`…`");
                }
            }
            _ if quoted => {}
            c if c.is_ascii_digit() => {
                if !out.ends_with('#') {
                    out.push('#');
                }
            }
            c => out.push(c),
        }
        if out.chars().count() >= 90 {
            break;
        }
    }
    out
}

/// One fuzz target's run: corpus replay, generated cases, statistics and failures.
pub struct Campaign {
    name: &'static str,
    ext: &'static str,
    base_seed: u64,
    seed: u64,
    cases: usize,
    case_bound: Duration,
    mem_bound: usize,
    stack: usize,
    work: PathBuf,
    save: Option<PathBuf>,
    started: Instant,
    corpus_files: usize,
    generated: usize,
    accepted: usize,
    refused: usize,
    signatures: BTreeMap<String, usize>,
    slowest: Duration,
    largest: usize,
    failures: Vec<String>,
    hung: bool,
    next_index: usize,
    generated_since: Option<Instant>,
}

/// Stack of a case thread: rayon's default for pyft's worker threads (where records are read,
/// rendered and tokenized), doubled because this is an unoptimised build.
pub const CASE_STACK: usize = 4 << 20;

impl Campaign {
    /// A campaign for target `name` whose case inputs are files ending in `.ext`, running
    /// `default_cases` generated cases unless `PYFT_FUZZ_CASES` says otherwise.
    pub fn new(name: &'static str, ext: &'static str, default_cases: usize) -> Campaign {
        let base = env_num("PYFT_FUZZ_SEED").unwrap_or(0x5eed);
        install_panic_hook();
        let work = std::env::temp_dir().join(format!("pyft-fuzz-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&work).expect("fuzz work directory");
        Campaign {
            name,
            ext,
            base_seed: base,
            seed: base ^ fnv(name),
            cases: env_num("PYFT_FUZZ_CASES").map_or(default_cases, |n| n as usize),
            case_bound: Duration::from_secs_f64(
                std::env::var("PYFT_FUZZ_CASE_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(2.0)),
            mem_bound: mem_bound(),
            stack: CASE_STACK,
            work,
            save: std::env::var_os("PYFT_FUZZ_SAVE").map(|d| PathBuf::from(d).join(name)),
            started: Instant::now(),
            corpus_files: 0,
            generated: 0,
            accepted: 0,
            refused: 0,
            signatures: BTreeMap::new(),
            slowest: Duration::ZERO,
            largest: 0,
            failures: Vec::new(),
            hung: false,
            next_index: 0,
            generated_since: None,
        }
    }

    /// A time bound of `secs` seconds per case for this target, unless `PYFT_FUZZ_CASE_SECS`
    /// sets one (for targets whose cases legitimately run into a work bound of their own).
    pub fn with_case_bound(mut self, secs: f64) -> Campaign {
        if std::env::var_os("PYFT_FUZZ_CASE_SECS").is_none() {
            self.case_bound = Duration::from_secs_f64(secs);
        }
        self
    }

    /// Number of generated cases to run.
    pub fn cases(&self) -> usize {
        self.cases
    }

    /// The generator of case `index`.
    pub fn rng(&self, index: usize) -> Rng {
        let mut r = Rng::new(self.seed ^ (index as u64).wrapping_mul(0xa076_1d64_78bd_642f));
        r.u64();
        r
    }

    /// The committed corpus directory of this target.
    pub fn corpus_dir(&self) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus").join(self.name)
    }

    /// Scratch directory for this campaign (removed by [`finish`](Self::finish)).
    pub fn work_dir(&self) -> &Path {
        &self.work
    }

    /// Whether to go on (no hang so far, not too many failures).
    pub fn running(&self) -> bool {
        !self.hung && self.failures.len() < 20
    }

    /// Replay every corpus file (sorted by name) through `check`; the case file keeps the corpus
    /// file's name so readers that look at the extension see it.
    pub fn replay_corpus(&mut self, check: Arc<Check>) {
        let dir = self.corpus_dir();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("corpus entry").path())
            .filter(|p| p.is_file() && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| !n.starts_with('.')))
            .filter(|p| p.extension().is_none_or(|e| e != "md"))
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{}: empty corpus", dir.display());
        for file in files {
            if !self.running() {
                break;
            }
            let bytes = std::fs::read(&file).expect("corpus file");
            let label = format!("corpus {}", file.file_name().unwrap().to_string_lossy());
            let case_name = file.file_name().unwrap().to_string_lossy().into_owned();
            CURRENT_CASE.store(u64::MAX - 1, Ordering::Relaxed);
            self.run_named(&label, &case_name, bytes, check.clone());
            self.corpus_files += 1;
        }
    }

    /// Replay `tests/corpus/<target>/known-failures/` through `check`, expecting each file to
    /// be handled now (accepted or refused). Run by the `#[ignore]`d `*_known_failures` tests:
    /// once the reported bug is fixed they pass, and the file moves up into the corpus. Files
    /// named `abort-*` end the process while the bug lasts (an allocation the allocator refuses),
    /// so they run last.
    pub fn replay_known_failures(&mut self, check: Arc<Check>) {
        let dir = self.corpus_dir().join("known-failures");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("corpus entry").path())
            .filter(|p| p.is_file() && p.extension().is_none_or(|e| e != "md"))
            .collect();
        files.sort_by_key(|p| (p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("abort-")), p.clone()));
        for file in files {
            let bytes = std::fs::read(&file).expect("known failure file");
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            let before = self.failures.len();
            self.run_named(&format!("known failure {name}"), &name, bytes, check.clone());
            self.corpus_files += 1;
            // Printed as they come: an `abort-*` file ends the process before `finish`.
            match self.failures.get(before) {
                Some(failure) => println!("{}", failure.lines().next().unwrap_or_default()),
                None => println!("{} known failure {name}: fixed (move it up into the corpus)", self.name),
            }
        }
    }

    /// The whole campaign: replay the corpus, then run `check` on the cases `generate` makes from
    /// each case's own random stream, then report.
    pub fn fuzz(mut self, check: impl Fn(&Path, &[u8]) -> Result<Outcome, String> + Send + Sync + 'static,
                mut generate: impl FnMut(&mut Rng) -> Vec<u8>) {
        let check: Arc<Check> = Arc::new(check);
        self.replay_corpus(check.clone());
        while let Some(i) = self.next_case() {
            let input = generate(&mut self.rng(i));
            self.run(i, input, check.clone());
        }
        self.finish();
    }

    /// Run generated case `index` on `input` through `check`.
    pub fn run(&mut self, index: usize, input: Vec<u8>, check: Arc<Check>) {
        CURRENT_CASE.store(index as u64, Ordering::Relaxed);
        let label = format!("case {index} (PYFT_FUZZ_SEED={:#x} PYFT_FUZZ_ONLY={index})", self.base_seed);
        let case_name = format!("case.{}", self.ext);
        if std::env::var_os("PYFT_FUZZ_ONLY").is_some() {
            println!("fuzz {} {label}: input saved to {}", self.name, self.save_finding(&case_name, &input).display());
        }
        self.run_named(&label, &case_name, input, check);
        self.generated += 1;
    }

    /// The next generated case to run, or `None` when done: cases `0..cases` in order, or for
    /// `PYFT_FUZZ_SECS` seconds (counted from the start of the generated cases) when that is set,
    /// or only case `PYFT_FUZZ_ONLY`; a hang or too many failures end the campaign early.
    pub fn next_case(&mut self) -> Option<usize> {
        if !self.running() {
            return None;
        }
        let next = self.next_index;
        self.next_index += 1;
        if let Some(only) = env_num("PYFT_FUZZ_ONLY") {
            return (next == 0).then_some(only as usize);
        }
        let started = *self.generated_since.get_or_insert_with(Instant::now);
        match env_num("PYFT_FUZZ_SECS") {
            Some(secs) => (started.elapsed().as_secs() < secs).then_some(next),
            None => (next < self.cases).then_some(next),
        }
    }

    fn run_named(&mut self, label: &str, case_name: &str, input: Vec<u8>, check: Arc<Check>) {
        let _serial = CASE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        set_label(&format!("{} {label}", self.name));
        let path = self.work.join(case_name);
        std::fs::write(&path, &input).expect("case file");
        let (tx, rx) = mpsc::channel();
        let base = reset_peak();
        let started = Instant::now();
        let thread_path = path.clone();
        let thread_input = input.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("fuzz:{}:{label}", self.name))
            .stack_size(self.stack)
            .spawn(move || {
                let case = std::panic::AssertUnwindSafe(|| check(&thread_path, &thread_input));
                let result = std::panic::catch_unwind(case);
                let _ = tx.send(result);
            })
            .expect("spawn case thread");
        // Well past the bound: a case this slow is reported as a hang and the campaign stops.
        let hang = self.case_bound * 5 + Duration::from_secs(5);
        let result = rx.recv_timeout(hang);
        let elapsed = started.elapsed();
        let used = PEAK.load(Ordering::Relaxed).saturating_sub(base);
        CURRENT_CASE.store(u64::MAX, Ordering::Relaxed);
        self.slowest = self.slowest.max(elapsed);
        self.largest = self.largest.max(used);
        let problem = match result {
            Err(_) => {
                self.hung = true;
                Some(format!("still running after {hang:?} (hang)"))
            }
            Ok(result) => {
                let _ = spawned.join();
                match result {
                    Err(_) => {
                        let msg = LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_default();
                        Some(format!("panicked: {msg}"))
                    }
                    Ok(Err(broken)) => Some(format!("contract broken: {broken}")),
                    Ok(Ok(outcome)) => {
                        match &outcome {
                            Outcome::Refused(message) => {
                                self.refused += 1;
                                let sig = signature(message, &path);
                                let seen = self.signatures.entry(sig).or_insert(0);
                                *seen += 1;
                                if *seen == 1 {
                                    self.save_new("", case_name, &input);
                                }
                            }
                            Outcome::Accepted => self.accepted += 1,
                        }
                        if elapsed > self.case_bound {
                            Some(format!("took {elapsed:?} (bound {:?})", self.case_bound))
                        } else if used > self.mem_bound {
                            Some(format!("allocated {} MiB (bound {} MiB)", used >> 20, self.mem_bound >> 20))
                        } else {
                            None
                        }
                    }
                }
            }
        };
        if let Some(problem) = problem {
            let saved = self.save_finding(case_name, &input);
            self.failures.push(format!("{} {label}: {problem}\n    input saved to {}", self.name, saved.display()));
        }
    }

    fn save_new(&self, prefix: &str, case_name: &str, input: &[u8]) {
        if let Some(dir) = &self.save {
            let _ = std::fs::create_dir_all(dir);
            let ext = Path::new(case_name).extension().and_then(|e| e.to_str()).unwrap_or(self.ext);
            let _ = std::fs::write(dir.join(format!("{prefix}{:016x}.{ext}", fnv_bytes(input))), input);
        }
    }

    fn save_finding(&self, case_name: &str, input: &[u8]) -> PathBuf {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-findings").join(self.name);
        let _ = std::fs::create_dir_all(&dir);
        let ext = Path::new(case_name).extension().and_then(|e| e.to_str()).unwrap_or(self.ext);
        let path = dir.join(format!("{:016x}.{ext}", fnv_bytes(input)));
        let _ = std::fs::write(&path, input);
        path
    }

    /// Print the statistics (executions per target) and fail with every problem found.
    pub fn finish(self) {
        let secs = self.started.elapsed().as_secs_f64();
        let runs = self.corpus_files + self.generated;
        println!("fuzz {:<18} {runs:>7} executions ({} corpus + {} generated) in {secs:.1} s = {:.0}/s; \
                  accepted {}, refused {} ({} distinct errors); slowest case {:.0} ms, most memory {:.1} MiB",
                 self.name, self.corpus_files, self.generated, runs as f64 / secs.max(1e-9), self.accepted,
                 self.refused, self.signatures.len(), self.slowest.as_secs_f64() * 1e3,
                 self.largest as f64 / f64::from(1 << 20));
        if std::env::var_os("PYFT_FUZZ_VERBOSE").is_some() {
            for (sig, n) in &self.signatures {
                println!("    {n:>6}  {sig}");
            }
        }
        if !self.hung {
            let _ = std::fs::remove_dir_all(&self.work);
        }
        assert!(self.failures.is_empty(), "{} fuzz failure(s):\n{}", self.failures.len(), self.failures.join("\n"));
    }
}

fn fnv_bytes(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// `Err` unless `message` names `path` (every file error must say which file).
pub fn names_file(message: &str, path: &Path) -> Result<(), String> {
    if message.contains(&path.display().to_string()) {
        Ok(())
    } else {
        Err(format!("error does not name the file {}: {message}", path.display()))
    }
}
