//! The one rule for where a command may write: never onto, into or around one of its inputs.

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// `path` made absolute with symlinks resolved as far as it exists; the components below the
/// deepest existing ancestor are appended lexically (`.` dropped, `..` pops), which is exact because a
/// directory that does not exist cannot be a link.
pub fn resolve(path: &Path) -> Result<PathBuf> {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().map_err(|e| Error::io(".", e))?.join(path)
    };
    let (mut resolved, tail) = absolute
        .ancestors()
        .find_map(|a| std::fs::canonicalize(a).ok().map(|real| (real, absolute.strip_prefix(a).unwrap_or(Path::new("")))))
        .unwrap_or_else(|| (PathBuf::from("/"), absolute.as_path()));
    for c in tail.components() {
        match c {
            Component::ParentDir => {
                resolved.pop();
            }
            Component::Normal(n) => resolved.push(n),
            _ => {}
        }
    }
    Ok(resolved)
}

/// Refuse an output path that is, contains, or lies inside any of `inputs` (real paths, symlinks
/// resolved), whatever `--overwrite` says: replacing it would destroy an input. Inputs that do not
/// exist are skipped (their readers report them).
pub fn check_output_disjoint(out: &Path, inputs: &[&Path]) -> Result<()> {
    let real_out = resolve(out)?;
    for input in inputs {
        let Ok(real_in) = std::fs::canonicalize(input) else { continue };
        let relation = if real_out == real_in {
            "is"
        } else if real_out.starts_with(&real_in) {
            "lies inside"
        } else if real_in.starts_with(&real_out) {
            "contains"
        } else {
            continue;
        };
        return Err(Error::Option(format!(
            "output {} {relation} the input {}; choose an output outside every input \
             (--overwrite never replaces an input)",
            out.display(),
            input.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pyft-paths-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("proj/base")).unwrap();
        std::fs::create_dir_all(dir.join("proj/adapter")).unwrap();
        std::fs::write(dir.join("proj/base/model.safetensors"), b"x").unwrap();
        dir
    }

    #[test]
    fn refuses_same_inside_and_containing_outputs() {
        let d = scratch();
        let (base, adapter) = (d.join("proj/base"), d.join("proj/adapter"));
        let inputs = [base.as_path(), adapter.as_path()];
        for (out, relation) in [
            (d.join("proj/base"), "is the input"),
            (d.join("proj/adapter/"), "is the input"),
            (d.join("proj"), "contains the input"),
            (d.join("proj/base/model.safetensors"), "lies inside the input"),
            (d.join("proj/base/new/deeper"), "lies inside the input"),
            (d.join("proj/x/../base"), "is the input"),
        ] {
            let err = check_output_disjoint(&out, &inputs).unwrap_err().to_string();
            assert!(err.contains(relation), "{}: {err}", out.display());
        }
        check_output_disjoint(&d.join("proj/merged"), &inputs).unwrap();
        check_output_disjoint(&d.join("proj/basement"), &inputs).unwrap();
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn symlinks_are_resolved_on_both_sides() {
        let d = scratch();
        std::os::unix::fs::symlink(d.join("proj"), d.join("alias")).unwrap();
        let base = d.join("alias/base");
        let err = check_output_disjoint(&d.join("proj/base/out.gguf"), &[base.as_path()]).unwrap_err();
        assert!(err.to_string().contains("lies inside"), "{err}");
        let real = d.join("proj/base");
        let err = check_output_disjoint(&d.join("alias"), &[real.as_path()]).unwrap_err();
        assert!(err.to_string().contains("contains"), "{err}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn relative_paths_resolve_against_the_working_directory() {
        let here = std::env::current_dir().unwrap();
        assert_eq!(resolve(Path::new("a/../b")).unwrap(), std::fs::canonicalize(&here).unwrap().join("b"));
    }
}
