//! Opening the files users name: regular files only.
//!
//! A path from the command line or a model directory may lead anywhere: to a FIFO (opening it
//! blocks until some other process writes), to a character device (`/dev/zero` never ends, a
//! terminal waits for input), to a socket or a directory. Every pyft reader of user files opens
//! them through [`open_regular`], which follows symlinks and then refuses anything that is not a
//! regular file, before a read could block or run forever.

use std::fs::{File, Metadata};
use std::path::Path;

use crate::error::{Error, Result};

/// What a non-regular file is, for the error message.
fn kind(meta: &Metadata) -> &'static str {
    let ft = meta.file_type();
    if ft.is_dir() {
        return "a directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return "a FIFO";
        }
        if ft.is_char_device() {
            return "a character device";
        }
        if ft.is_block_device() {
            return "a block device";
        }
        if ft.is_socket() {
            return "a socket";
        }
    }
    "a special file"
}

fn not_regular(path: &Path, meta: &Metadata) -> Error {
    Error::File {
        path: path.to_path_buf(),
        // The same words as `pyft.io.files` (the Python readers), whichever side refuses first.
        message: format!(
            "is {}, not a regular file (pyft reads only regular files; symlinks are followed to what they point at)",
            kind(meta)
        ),
    }
}

/// Opens `path` for reading if it is a regular file (symlinks followed).
///
/// The type is checked before opening, and again on the opened file: the open itself uses
/// `O_NONBLOCK`, so a FIFO swapped in between the two cannot block it, and is then refused.
///
/// Errors: [`Error::Io`] when `path` cannot be inspected or opened (missing, no permission);
/// [`Error::File`] naming what it is when it is not a regular file.
pub fn open_regular(path: &Path) -> Result<File> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(not_regular(path, &meta));
    }
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(not_regular(path, &meta));
    }
    #[cfg(unix)]
    clear_nonblocking(&file).map_err(|e| Error::io(path, e))?;
    Ok(file)
}

/// Turns `O_NONBLOCK` off again, so reads of the (regular) file behave as usual.
#[cfg(unix)]
fn clear_nonblocking(file: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: `fd` is a descriptor `file` owns and keeps open for the duration of both calls;
    // F_GETFL and F_SETFL read and set its status flags and touch no memory.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The bytes of the regular file `path` (see [`open_regular`]).
pub fn read(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut file = open_regular(path)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
    Ok(bytes)
}

/// The text of the regular file `path` (see [`open_regular`]); not UTF-8 is an [`Error::Io`]
/// of kind `InvalidData`.
pub fn read_to_string(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut file = open_regular(path)?;
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(|e| Error::io(path, e))?;
    Ok(text)
}

/// Creates a FIFO at `path` (for the tests of readers that must refuse one).
#[cfg(all(test, unix))]
pub(crate) fn mkfifo(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("no NUL in test paths");
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo {}", path.display());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh empty directory under the system temp dir.
    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("pyft-file-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn regular_files_and_symlinks_to_them_are_read() {
        let dir = temp_dir("regular");
        let p = dir.join("a.txt");
        std::fs::write(&p, "hello").unwrap();
        assert_eq!(read(&p).unwrap(), b"hello");
        #[cfg(unix)]
        {
            let link = dir.join("link.txt");
            std::os::unix::fs::symlink(&p, &link).unwrap();
            assert_eq!(read_to_string(&link).unwrap(), "hello");
        }
        assert!(matches!(read(&dir.join("missing")), Err(Error::Io { .. })));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn directories_are_refused() {
        let dir = temp_dir("dir");
        let err = open_regular(&dir).unwrap_err().to_string();
        assert!(err.contains("is a directory, not a regular file"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn fifos_devices_and_links_to_them_are_refused_without_blocking() {
        let dir = temp_dir("special");
        let fifo = dir.join("data.jsonl");
        mkfifo(&fifo);
        let err = open_regular(&fifo).unwrap_err().to_string();
        assert!(err.contains("data.jsonl: is a FIFO, not a regular file"), "{err}");
        let zero = dir.join("zero.jsonl");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let err = read(&zero).unwrap_err().to_string();
        assert!(err.contains("zero.jsonl: is a character device, not a regular file"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Every reader of user files goes through [`open_regular`]: given a FIFO or a link to
    /// `/dev/zero`, each fails at once, naming the file, instead of blocking or reading forever.
    #[cfg(unix)]
    #[test]
    fn every_reader_refuses_fifos_and_devices() {
        use crate::data::template::ChatTemplate;
        use crate::data::tokenize::Tokenizer;
        use crate::gguf::reader::GgufFile;
        use crate::io::safetensors::SafetensorsFile;
        use crate::merge::lora::LoraAdapter;

        let dir = temp_dir("readers");
        let (fifo_dir, zero_dir) = (dir.join("fifo"), dir.join("zero"));
        let names = ["model.gguf", "model.safetensors", "tokenizer.json", "t.jinja", "d.jsonl", "adapter_config.json"];
        for (sub, make) in [(&fifo_dir, mkfifo as fn(&Path)), (&zero_dir, |p: &Path| {
            std::os::unix::fs::symlink("/dev/zero", p).unwrap()
        })] {
            std::fs::create_dir_all(sub).unwrap();
            for name in names {
                make(&sub.join(name));
            }
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let (f, z) = (fifo_dir.clone(), zero_dir.clone());
        std::thread::spawn(move || {
            let mut errors = Vec::new();
            for d in [&f, &z] {
                errors.push(GgufFile::open(d.join("model.gguf")).unwrap_err().to_string());
                errors.push(SafetensorsFile::open(&d.join("model.safetensors")).unwrap_err().to_string());
                errors.push(Tokenizer::from_file(&d.join("tokenizer.json")).unwrap_err().to_string());
                errors.push(ChatTemplate::from_file(&d.join("t.jinja")).unwrap_err().to_string());
                errors.push(crate::data::read::read_file(&d.join("d.jsonl")).unwrap_err().to_string());
                errors.push(LoraAdapter::open(d).unwrap_err().to_string());
            }
            let _ = tx.send(errors);
        });
        let errors = rx.recv_timeout(std::time::Duration::from_secs(20)).expect("a reader blocked");
        for (i, err) in errors.iter().enumerate() {
            let (kind, name) = if i < names.len() { ("a FIFO", names[i]) } else { ("a character device", names[i - names.len()]) };
            assert!(err.contains(&format!("{name}: is {kind}, not a regular file")), "{err}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_regular_file_opened_is_blocking_again() {
        let dir = temp_dir("flags");
        let p = dir.join("a.bin");
        std::fs::write(&p, [1u8; 4]).unwrap();
        let file = open_regular(&p).unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: reads the status flags of a descriptor `file` keeps open.
        let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
        assert_eq!(flags & libc::O_NONBLOCK, 0);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
