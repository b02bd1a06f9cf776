//! Outputs are built under a unique staging name beside their final place and renamed in at the end.
//!
//! The rules every pyft writer follows:
//! - a staging entry is created new and exclusive (`O_CREAT|O_EXCL|O_NOFOLLOW`, `mkdir`): a planted file or
//!   symlink under any name is never opened, truncated or followed;
//! - its name is unique and says who made it: `.{NAME}.pyft-stage-{PID}-{NONCE}` beside `NAME`;
//! - the final name always holds either the old complete output or the new complete one: a new file
//!   replaces the old by `rename`, a new directory by an atomic exchange (`renameat2(RENAME_EXCHANGE)`,
//!   with a two-rename fallback on file systems without it), after which the old one is deleted;
//! - staging left behind by a process that no longer runs (`kill -9`, power loss) is removed the next
//!   time anything stages the same `NAME`; staging of a live process is never touched.
//!
//! Renames are atomic against process crashes; no `fsync` is issued, so durability across a power loss
//! is the file system's.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// The marker between the output's name and the staging owner's PID.
const MARKER: &str = ".pyft-stage-";

/// The parent directory and file name of `target` (the parent is `.` for a bare name).
fn split_target(target: &Path) -> Result<(PathBuf, OsString)> {
    let name = target
        .file_name()
        .ok_or_else(|| Error::File { path: target.to_path_buf(), message: "not a valid output path".into() })?;
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((parent, name.to_owned()))
}

/// The prefix all staging entries of `name` share: `.{name}.pyft-stage-`.
fn staging_prefix(name: &OsString) -> String {
    format!(".{}{MARKER}", name.to_string_lossy())
}

/// A staging name not used before by this process: `.{name}.pyft-stage-{pid}-{nonce}`.
fn staging_name(name: &OsString) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    // A mix of clock and counter; uniqueness is enforced by exclusive creation, this only avoids retries.
    let nonce = (nanos as u64) ^ count.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    format!("{}{}-{nonce:016x}", staging_prefix(name), std::process::id())
}

/// Whether process `pid` is alive (or exists under another user: then it is treated as alive).
fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    // SAFETY: kill with signal 0 only checks for existence and permission; it sends nothing.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Remove staging entries of `name` in `parent` whose owner process has exited. Returns how many.
///
/// Entries are matched by name only (`.{name}.pyft-stage-{pid}-…`), removed without following links,
/// and failures to remove are ignored (the entry simply stays).
pub fn remove_stale_staging(parent: &Path, name: &OsString) -> usize {
    let prefix = staging_prefix(name);
    let Ok(entries) = std::fs::read_dir(parent) else { return 0 };
    let mut removed = 0;
    for entry in entries.flatten() {
        let entry_name = entry.file_name();
        let Some(rest) = entry_name.to_str().and_then(|n| n.strip_prefix(&prefix)) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid == std::process::id() || process_alive(pid) {
            continue;
        }
        let path = entry.path();
        let is_dir = std::fs::symlink_metadata(&path).map(|m| m.is_dir()).unwrap_or(false);
        let ok = if is_dir { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        removed += usize::from(ok.is_ok());
    }
    removed
}

/// Delete directory `path` so that it is never seen half-deleted under its own name: it is first
/// renamed to a staging name (removed by [`remove_stale_staging`] should this process die while
/// deleting it), then removed.
pub fn discard_dir(path: &Path) -> Result<()> {
    let (parent, name) = split_target(path)?;
    let aside = parent.join(staging_name(&name));
    std::fs::rename(path, &aside).map_err(|e| Error::io(path, e))?;
    std::fs::remove_dir_all(&aside).map_err(|e| Error::io(&aside, e))
}

/// Check `target` may be written (as a directory if `want_dir`, else a file): refuse an existing one
/// unless `overwrite`, and refuse replacing a directory by a file or a file by a directory. Writers
/// check again at commit; commands call this first to fail before any long work.
pub fn check_target(target: &Path, overwrite: bool, want_dir: bool) -> Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(target) else { return Ok(()) };
    let is_dir = std::fs::metadata(target).map(|m| m.is_dir()).unwrap_or(meta.is_dir());
    if is_dir != want_dir {
        let what = if is_dir { "is a directory" } else { "exists and is not a directory" };
        return Err(Error::File { path: target.to_path_buf(), message: format!("{what}; choose another output") });
    }
    if !overwrite {
        let why = std::io::Error::new(std::io::ErrorKind::AlreadyExists,
                                      "output already exists (pass --overwrite to replace it)");
        return Err(Error::io(target, why));
    }
    Ok(())
}

/// Rename `from` to `to` atomically, failing if `to` exists (`renameat2(RENAME_NOREPLACE)`; a plain
/// `rename` after a check where the file system lacks it).
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    match renameat2(from, to, libc::RENAME_NOREPLACE) {
        Err(e) if unsupported(&e) => {
            if std::fs::symlink_metadata(to).is_ok() {
                return Err(std::io::Error::from_raw_os_error(libc::EEXIST));
            }
            std::fs::rename(from, to)
        }
        other => other,
    }
}

/// Whether an error from `renameat2` means the flag is not supported here.
fn unsupported(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::ENOTSUP))
}

/// `renameat2(AT_FDCWD, from, AT_FDCWD, to, flags)`.
fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
    };
    let (from, to) = (c(from)?, c(to)?);
    // SAFETY: both paths are NUL-terminated C strings that outlive the call.
    let rc = unsafe { libc::renameat2(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), flags) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// A directory being built next to its final location and moved into place by
/// [`StagingDir::commit`]. Dropped without commit, it is deleted: a failed run leaves nothing.
#[derive(Debug)]
pub struct StagingDir {
    tmp: PathBuf,
    target: PathBuf,
    overwrite: bool,
    done: bool,
}

impl StagingDir {
    /// Create a fresh staging directory beside `target` (and the parent directories), after removing
    /// stale staging of `target` left by dead processes. Fails if `target` exists and is not a
    /// directory, or exists and `overwrite` is false.
    pub fn new(target: &Path, overwrite: bool) -> Result<StagingDir> {
        check_target(target, overwrite, true)?;
        let (parent, name) = split_target(target)?;
        std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
        remove_stale_staging(&parent, &name);
        loop {
            let tmp = parent.join(staging_name(&name));
            match std::fs::create_dir(&tmp) {
                Ok(()) => return Ok(StagingDir { tmp, target: target.to_path_buf(), overwrite, done: false }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io(&tmp, e)),
            }
        }
    }

    /// The directory to write into.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Move the staged directory to its target. An existing target (allowed only with `overwrite`) is
    /// exchanged atomically with the staged one, then deleted.
    pub fn commit(mut self) -> Result<()> {
        check_target(&self.target, self.overwrite, true)?;
        let existed = std::fs::symlink_metadata(&self.target).is_ok();
        if !existed {
            rename_noreplace(&self.tmp, &self.target).map_err(|e| Error::io(&self.target, e))?;
            self.done = true;
            return Ok(());
        }
        match renameat2(&self.tmp, &self.target, libc::RENAME_EXCHANGE) {
            Ok(()) => {}
            Err(e) if unsupported(&e) => self.replace_in_two_steps()?,
            Err(e) => return Err(Error::io(&self.target, e)),
        }
        // `tmp` now holds the previous output; if this process dies here, the next run removes it.
        self.done = true;
        std::fs::remove_dir_all(&self.tmp).map_err(|e| Error::io(&self.tmp, e))
    }

    /// Replace the target where `RENAME_EXCHANGE` is unsupported: the old directory goes to a fresh
    /// staging name, the new one takes its place, and the old one ends up at `self.tmp` for deletion.
    /// Between the two renames the final name is briefly absent.
    fn replace_in_two_steps(&mut self) -> Result<()> {
        let (parent, name) = split_target(&self.target)?;
        let old = parent.join(staging_name(&name));
        std::fs::rename(&self.target, &old).map_err(|e| Error::io(&self.target, e))?;
        if let Err(e) = std::fs::rename(&self.tmp, &self.target) {
            let _ = std::fs::rename(&old, &self.target);
            return Err(Error::io(&self.target, e));
        }
        self.tmp = old;
        Ok(())
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

/// A file being written under a staging name and renamed onto its target by
/// [`StagingFile::commit`]. Dropped without commit, it is deleted.
#[derive(Debug)]
pub struct StagingFile {
    tmp: PathBuf,
    target: PathBuf,
    overwrite: bool,
    done: bool,
}

impl StagingFile {
    /// Create a new, empty staging file beside `target` (exclusively, never following a link) and
    /// return it with its open handle. Fails if `target` is a directory, or exists and `overwrite` is
    /// false.
    pub fn create(target: &Path, overwrite: bool) -> Result<(StagingFile, File)> {
        check_target(target, overwrite, false)?;
        let (parent, name) = split_target(target)?;
        if !parent.is_dir() {
            return Err(Error::File { path: parent, message: "output directory does not exist".into() });
        }
        remove_stale_staging(&parent, &name);
        loop {
            let tmp = parent.join(staging_name(&name));
            let opened = OpenOptions::new().write(true).read(true).create_new(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC).mode(0o644).open(&tmp);
            match opened {
                Ok(file) => {
                    let staging = StagingFile { tmp, target: target.to_path_buf(), overwrite, done: false };
                    return Ok((staging, file));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io(&tmp, e)),
            }
        }
    }

    /// The staging file's path (for error messages).
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Rename the staged file onto its target (replacing an existing file only with `overwrite`).
    pub fn commit(mut self) -> Result<PathBuf> {
        check_target(&self.target, self.overwrite, false)?;
        let renamed = if self.overwrite {
            std::fs::rename(&self.tmp, &self.target)
        } else {
            rename_noreplace(&self.tmp, &self.target)
        };
        renamed.map_err(|e| Error::io(&self.target, e))?;
        self.done = true;
        Ok(self.target.clone())
    }
}

impl Drop for StagingFile {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pyft-staging-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    /// A PID that no process has: beyond the kernel's maximum.
    const DEAD_PID: u32 = 4_194_304 + 17;

    #[test]
    fn directory_commit_abort_and_replace() {
        let base = scratch("dir");
        let target = base.join("out");
        {
            let st = StagingDir::new(&target, false).unwrap();
            std::fs::write(st.path().join("a"), b"1").unwrap();
        }
        assert_eq!(names(&base), Vec::<String>::new(), "dropped staging must vanish");
        let st = StagingDir::new(&target, false).unwrap();
        std::fs::write(st.path().join("a"), b"1").unwrap();
        st.commit().unwrap();
        let err = StagingDir::new(&target, false).unwrap_err().to_string();
        assert!(err.contains("--overwrite"), "{err}");
        let st = StagingDir::new(&target, true).unwrap();
        std::fs::write(st.path().join("b"), b"2").unwrap();
        st.commit().unwrap();
        assert_eq!(names(&target), ["b"]);
        assert_eq!(names(&base), ["out"], "no staging or old copy left");
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn two_step_replace_leaves_only_the_new_directory() {
        let base = scratch("twostep");
        let target = base.join("out");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("old"), b"0").unwrap();
        let mut st = StagingDir::new(&target, true).unwrap();
        std::fs::write(st.path().join("new"), b"1").unwrap();
        st.replace_in_two_steps().unwrap();
        st.done = true;
        std::fs::remove_dir_all(&st.tmp).unwrap();
        assert_eq!(names(&target), ["new"]);
        assert_eq!(names(&base), ["out"]);
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn stale_staging_of_dead_processes_is_removed_live_ones_kept() {
        let base = scratch("stale");
        let target = base.join("out");
        let dead_dir = base.join(format!(".out{MARKER}{DEAD_PID}-00"));
        let dead_file = base.join(format!(".out{MARKER}{DEAD_PID}-01"));
        let live = base.join(format!(".out{MARKER}1-02")); // PID 1 always runs
        let other = base.join(format!(".other{MARKER}{DEAD_PID}-03"));
        for d in [&dead_dir, &live, &other] {
            std::fs::create_dir(d).unwrap();
            std::fs::write(d.join("x"), b"x").unwrap();
        }
        std::fs::write(&dead_file, b"x").unwrap();
        let st = StagingDir::new(&target, false).unwrap();
        assert!(!dead_dir.exists() && !dead_file.exists(), "dead owners' staging must be removed");
        assert!(live.exists() && other.exists(), "live owners' and other outputs' staging must stay");
        drop(st);
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn discarded_directories_vanish_under_a_staging_name() {
        let base = scratch("discard");
        std::fs::create_dir_all(base.join("step-1/sub")).unwrap();
        discard_dir(&base.join("step-1")).unwrap();
        assert_eq!(names(&base), Vec::<String>::new());
        assert!(discard_dir(&base.join("missing")).is_err());
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn stale_cleanup_does_not_follow_symlinks() {
        let base = scratch("stalelink");
        let victim = base.join("victim");
        std::fs::create_dir(&victim).unwrap();
        std::fs::write(victim.join("keep"), b"k").unwrap();
        std::os::unix::fs::symlink(&victim, base.join(format!(".out{MARKER}{DEAD_PID}-00"))).unwrap();
        remove_stale_staging(&base, &OsString::from("out"));
        assert_eq!(names(&victim), ["keep"], "a link's target must never be emptied");
        assert_eq!(names(&base), ["victim"], "the link itself is removed");
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn staging_file_is_exclusive_and_renamed_into_place() {
        let base = scratch("file");
        let target = base.join("z.gguf");
        let victim = base.join("victim.txt");
        std::fs::write(&victim, b"precious").unwrap();
        // Links planted under the names older versions used must not be followed.
        std::os::unix::fs::symlink(&victim, base.join("z.gguf.partial")).unwrap();
        let (st, mut f) = StagingFile::create(&target, false).unwrap();
        f.write_all(b"GGUF").unwrap();
        drop(f);
        st.commit().unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(std::fs::read(&target).unwrap(), b"GGUF");
        let err = StagingFile::create(&target, false).unwrap_err().to_string();
        assert!(err.contains("--overwrite"), "{err}");
        let (st, mut f) = StagingFile::create(&target, true).unwrap();
        f.write_all(b"GGUF2").unwrap();
        drop((st, f));
        assert_eq!(std::fs::read(&target).unwrap(), b"GGUF", "an uncommitted file never replaces the old one");
        assert_eq!(names(&base), ["victim.txt", "z.gguf", "z.gguf.partial"]);
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn file_and_directory_targets_do_not_replace_each_other() {
        let base = scratch("kinds");
        std::fs::create_dir(base.join("d")).unwrap();
        std::fs::write(base.join("f"), b"f").unwrap();
        assert!(StagingFile::create(&base.join("d"), true).unwrap_err().to_string().contains("is a directory"));
        assert!(StagingDir::new(&base.join("f"), true).unwrap_err().to_string().contains("not a directory"));
        std::fs::remove_dir_all(&base).unwrap();
    }
}
