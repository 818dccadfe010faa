//! On-disk cache of compiled components, keyed by the component's sha256
//! and the engine's settings, so a restart with many bundles compiles
//! nothing.
//!
//! A cache entry is native code: deserialising a forged one would run the
//! forger's code in the host. So the directory is private (0700, this
//! user's), and every entry carries an HMAC-SHA256 tag made with a secret
//! key kept in the cache directory (`cache.key`, 0600, 32 random bytes):
//! an entry whose tag does not verify is deleted unread, and the component
//! is compiled again.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use wasmtime::Engine;
use wasmtime::component::Component;

/// The environment variable that moves the cache.
pub const CACHE_DIR_ENV: &str = "TESSERA_CACHE_DIR";
/// The key file inside the cache directory.
pub const CACHE_KEY_FILE: &str = "cache.key";
/// The largest cache entry read back (compiled components are a few times
/// their wasm size; the largest wasm a bundle may hold is 64 MiB).
pub const MAX_ENTRY_BYTES: u64 = 512 << 20;

/// An HMAC-SHA256 tag.
const TAG_BYTES: usize = 32;

/// A directory of `<sha256>-<engine>.cwasm` files.
#[derive(Clone)]
pub struct CompileCache {
    dir: PathBuf,
    engine_key: String,
    secret: [u8; 32],
}

impl std::fmt::Debug for CompileCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompileCache")
            .field("dir", &self.dir)
            .field("engine_key", &self.engine_key)
            .finish_non_exhaustive()
    }
}

impl CompileCache {
    /// A cache in `dir` (created private if missing) for components
    /// compiled by `engine`.
    pub fn new(dir: &Path, engine: &Engine) -> std::io::Result<Self> {
        crate::paths::private_dir(dir)?;
        // The compatibility hash covers the wasmtime version, target and
        // every setting that changes generated code; a cached artifact from
        // another configuration is never looked up.
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(CompileCache {
            dir: dir.to_path_buf(),
            engine_key: format!("{:016x}", hasher.finish()),
            secret: load_or_make_key(&dir.join(CACHE_KEY_FILE))?,
        })
    }

    /// The default location: `$TESSERA_CACHE_DIR`, else the user's cache
    /// directory; `None` when there is neither (no home directory).
    pub fn default_dir() -> Option<PathBuf> {
        crate::paths::user_dir(CACHE_DIR_ENV, dirs::cache_dir(), "components")
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}-{}.cwasm", self.engine_key))
    }

    /// The MAC of an entry: the name is authenticated too, so an entry
    /// cannot be moved to another component's name.
    fn mac(&self, sha256: &str, payload: &[u8]) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes keys of any size");
        mac.update(self.engine_key.as_bytes());
        mac.update(b"/");
        mac.update(sha256.as_bytes());
        mac.update(b"/");
        mac.update(payload);
        mac
    }

    /// The cached compilation of the component with digest `sha256`, if
    /// there is a usable one. An entry that is corrupt, stale or not made
    /// with this cache's key is removed.
    pub fn load(&self, engine: &Engine, sha256: &str) -> Option<Component> {
        let path = self.path(sha256);
        // Read into memory rather than mapping the file: a cache file
        // truncated under a running host must not fault its code pages.
        let bytes = crate::bundle::read_capped(&path, MAX_ENTRY_BYTES).ok()?;
        let drop_entry = |why: &str| {
            tracing::warn!(path = %path.display(), "dropping compile cache entry: {why}");
            let _ = std::fs::remove_file(&path);
            None
        };
        let Some((tag, payload)) = bytes.split_at_checked(TAG_BYTES) else {
            return drop_entry("too short");
        };
        if self.mac(sha256, payload).verify_slice(tag).is_err() {
            return drop_entry("its tag does not verify (not written by this host)");
        }
        // SAFETY: the bytes verified against an HMAC under this cache's
        // secret key, so they are what `store` below wrote: the output of
        // `Component::serialize` for this engine configuration (part of
        // the authenticated name). wasmtime checks the header and
        // compatibility again before using them.
        match unsafe { Component::deserialize(engine, payload) } {
            Ok(component) => Some(component),
            Err(e) => drop_entry(&e.to_string()),
        }
    }

    /// Save `component` under `sha256`, tagged. Written to a temporary
    /// file and renamed, so readers never see a partial artifact.
    pub fn store(&self, sha256: &str, component: &Component) -> std::io::Result<()> {
        let payload = component.serialize().map_err(std::io::Error::other)?;
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        tmp.write_all(&self.mac(sha256, &payload).finalize().into_bytes())?;
        tmp.write_all(&payload)?;
        tmp.persist(self.path(sha256)).map_err(|e| e.error)?;
        Ok(())
    }
}

/// The cache's secret key: read from `path` (which must be a 32-byte file
/// only this user can read), or made from the OS's random source.
fn load_or_make_key(path: &Path) -> std::io::Result<[u8; 32]> {
    match crate::bundle::read_capped(path, 32) {
        Ok(bytes) => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(path)?.permissions().mode();
                if mode & 0o077 != 0 {
                    return Err(std::io::Error::other(format!(
                        "{}: the compile cache's key is readable by others (mode {:o}); delete it and the cache, or `chmod 600` it",
                        path.display(),
                        mode & 0o777
                    )));
                }
            }
            bytes.try_into().map_err(|_| {
                std::io::Error::other(format!(
                    "{}: not a 32-byte key; delete it (and the cache entries) to start afresh",
                    path.display()
                ))
            })
        }
        Err(crate::bundle::BundleError::ReadComponent { reason, .. })
            if reason.kind() == std::io::ErrorKind::NotFound =>
        {
            let mut key = [0u8; 32];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut key))?;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            match options.open(path) {
                Ok(mut file) => {
                    file.write_all(&key)?;
                    Ok(key)
                }
                // Another host process made it first: use theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_or_make_key(path),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(std::io::Error::other(e.to_string())),
    }
}
