//! Where Tessera keeps files by default, and how its private directories
//! are made.

use std::path::{Path, PathBuf};

/// `$env_var` if set, else `<base>/tessera/<leaf>`, where `base` is a user
/// directory such as [`dirs::cache_dir`]. `None` when neither exists (no
/// home directory): never a shared temporary directory, where another user
/// could plant files first.
pub(crate) fn user_dir(env_var: &str, base: Option<PathBuf>, leaf: &str) -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os(env_var) {
        return Some(PathBuf::from(dir));
    }
    base.map(|b| b.join("tessera").join(leaf))
}

/// Create `dir` (and its parents) if missing, readable and writable by
/// this user only (0700), and check that it is this user's and that nobody
/// else may write to it. Caches are read back as trusted data: one that
/// another user can write is refused with the fix.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let meta = std::fs::metadata(dir)?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        if meta.uid() != me {
            return Err(std::io::Error::other(format!(
                "{} belongs to user {}, not to this user ({me}): a cache another user controls cannot be trusted; choose a directory of your own",
                dir.display(),
                meta.uid()
            )));
        }
        if meta.mode() & 0o022 != 0 {
            // Ours, but others may write to it: tighten it.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_dirs_are_0700_and_tightened() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        private_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        private_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn no_home_means_no_default_not_tmp() {
        assert_eq!(user_dir("TESSERA_TEST_UNSET_VARIABLE", None, "x"), None);
    }
}
