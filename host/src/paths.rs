//! Where Tessera keeps files by default.

use std::path::PathBuf;

/// `$env_var` if set, else `<base>/tessera/<leaf>`, where `base` is a user
/// directory such as [`dirs::cache_dir`] (the temp dir if there is none).
pub(crate) fn user_dir(env_var: &str, base: Option<PathBuf>, leaf: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os(env_var) {
        return PathBuf::from(dir);
    }
    base.unwrap_or_else(std::env::temp_dir)
        .join("tessera")
        .join(leaf)
}
