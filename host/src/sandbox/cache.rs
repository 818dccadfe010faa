//! On-disk cache of compiled components, keyed by the component's sha256
//! and the engine's settings, so a restart with many bundles compiles
//! nothing.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

/// The environment variable that moves the cache.
pub const CACHE_DIR_ENV: &str = "TESSERA_CACHE_DIR";

/// A directory of `<sha256>-<engine>.cwasm` files.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: PathBuf,
    engine_key: String,
}

impl CompileCache {
    /// A cache in `dir` (created if missing) for components compiled by
    /// `engine`.
    pub fn new(dir: &Path, engine: &Engine) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        // The compatibility hash covers the wasmtime version, target and
        // every setting that changes generated code; a cached artifact from
        // another configuration is never looked up.
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(CompileCache {
            dir: dir.to_path_buf(),
            engine_key: format!("{:016x}", hasher.finish()),
        })
    }

    /// The default location: `$TESSERA_CACHE_DIR`, else the user's cache
    /// directory.
    pub fn default_dir() -> PathBuf {
        crate::paths::user_dir(CACHE_DIR_ENV, dirs::cache_dir(), "components")
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}-{}.cwasm", self.engine_key))
    }

    /// The cached compilation of the component with digest `sha256`, if
    /// there is a usable one. A corrupt or stale entry is removed.
    pub fn load(&self, engine: &Engine, sha256: &str) -> Option<Component> {
        let path = self.path(sha256);
        // Read into memory rather than mapping the file: a cache file
        // truncated under a running host must not fault its code pages.
        let bytes = std::fs::read(&path).ok()?;
        // SAFETY: the bytes come from `store` below (`Component::serialize`
        // of an engine with the same compatibility hash, which is part of
        // the file name) in a directory owned by the user running the host;
        // wasmtime checks the header and compatibility before using them.
        match unsafe { Component::deserialize(engine, &bytes) } {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "dropping unusable compile cache entry");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Save `component` under `sha256`. Written to a temporary file and
    /// renamed, so readers never see a partial artifact.
    pub fn store(&self, sha256: &str, component: &Component) -> std::io::Result<()> {
        let bytes = component.serialize().map_err(std::io::Error::other)?;
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        tmp.write_all(&bytes)?;
        tmp.persist(self.path(sha256)).map_err(|e| e.error)?;
        Ok(())
    }
}
