//! Bundles: a directory with a `tessera.toml` manifest and the component it
//! names. Loading checks the manifest, the component's digest and its world.

mod component;
mod manifest;

use std::path::{Path, PathBuf};

pub use component::{ComponentError, ComponentInfo, World};
pub use manifest::{
    BundleKind, Capabilities, LimitsSpec, MANIFEST_FILE, Manifest, ManifestError, RoutingSpec,
};

/// A bundle read from disk: its manifest and component bytes.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The directory it came from (or the `.wasm` file's directory).
    pub dir: PathBuf,
    /// The manifest; synthesised for a bare `.wasm`.
    pub manifest: Manifest,
    /// The component's bytes.
    pub wasm: Vec<u8>,
    /// sha256 of `wasm`, hex.
    pub sha256: String,
}

/// Why a bundle could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// The manifest is missing or wrong.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The component file could not be read.
    #[error("cannot read component {path}: {reason}")]
    ReadComponent {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        reason: std::io::Error,
    },
    /// The manifest names no component.
    #[error(
        "{manifest}: no `component` field, and no built component: build the plugin with `tessera build {dir}`"
    )]
    NoComponent {
        /// The manifest file.
        manifest: PathBuf,
        /// The bundle directory.
        dir: PathBuf,
    },
    /// The component's sha256 differs from the manifest's.
    #[error(
        "{path}: sha256 is {actual} but the manifest says {expected}; rebuild or repack the bundle"
    )]
    DigestMismatch {
        /// The component file.
        path: PathBuf,
        /// From the manifest.
        expected: String,
        /// Computed.
        actual: String,
    },
    /// The path is neither a bundle directory nor a `.wasm` file.
    #[error("{0}: not a bundle (a directory with {MANIFEST_FILE}) nor a .wasm component")]
    NotABundle(PathBuf),
}

impl Bundle {
    /// Read a bundle from `path`: a bundle directory, a plugin crate that
    /// `tessera build` has built, or a bare `.wasm` component (which gets a
    /// default manifest named after the file).
    pub fn open(path: &Path) -> Result<Bundle, BundleError> {
        if path.is_file() {
            return Self::open_wasm(path);
        }
        let manifest_path = path.join(MANIFEST_FILE);
        if !manifest_path.is_file() {
            return Err(BundleError::NotABundle(path.to_path_buf()));
        }
        let manifest = Manifest::from_file(&manifest_path)?;
        let component = match &manifest.component {
            Some(component) => path.join(component),
            None => {
                // A plugin crate: use what `tessera build` made, if anything.
                let built = crate::build::default_bundle_dir(path);
                if built.join(MANIFEST_FILE).is_file() {
                    return Self::open(&built);
                }
                return Err(BundleError::NoComponent {
                    manifest: manifest_path,
                    dir: path.to_path_buf(),
                });
            }
        };
        let wasm = std::fs::read(&component).map_err(|reason| BundleError::ReadComponent {
            path: component.clone(),
            reason,
        })?;
        let sha256 = sha256_hex(&wasm);
        if let Some(expected) = &manifest.sha256
            && !expected.eq_ignore_ascii_case(&sha256)
        {
            return Err(BundleError::DigestMismatch {
                path: component,
                expected: expected.clone(),
                actual: sha256,
            });
        }
        Ok(Bundle {
            dir: path.to_path_buf(),
            manifest,
            wasm,
            sha256,
        })
    }

    fn open_wasm(path: &Path) -> Result<Bundle, BundleError> {
        let wasm = std::fs::read(path).map_err(|reason| BundleError::ReadComponent {
            path: path.to_path_buf(),
            reason,
        })?;
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("expert")
            .to_string();
        let sha256 = sha256_hex(&wasm);
        Ok(Bundle {
            dir: path.parent().unwrap_or(Path::new(".")).to_path_buf(),
            manifest: Manifest::for_bare_component(&name),
            wasm,
            sha256,
        })
    }
}

/// sha256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
