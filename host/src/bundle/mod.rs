//! Bundles: a directory with a `tessera.toml` manifest and the component it
//! names, or the same packed into one signed `.tessera` file. Loading
//! checks the manifest, the component's digest and its world, and a pack's
//! digests and signature.

mod component;
mod manifest;
pub mod pack;
pub mod remote;
pub mod sign;

use std::io::Read;
use std::path::{Component, Path, PathBuf};

pub use component::{CapabilityUse, ComponentError, ComponentInfo, World};
pub use manifest::{
    AdapterSpec, BundleKind, Capabilities, DEFAULT_ADAPTER_WEIGHTS_DIR, LimitsSpec, MANIFEST_FILE,
    MAX_DESCRIPTION_BYTES, MAX_EXAMPLE_BYTES, MAX_EXAMPLES, MAX_TAG_BYTES, MAX_TAGS, Manifest,
    ManifestError, ModelGrant, RoutingSpec, check_description, is_valid_model_name, is_valid_name,
    is_valid_version,
};

/// The largest component file a bundle may hold. Python experts built
/// with componentize-py are ~18 MB; Rust ones well under 1 MB.
pub const MAX_COMPONENT_BYTES: u64 = 64 << 20;
/// The largest manifest file.
pub const MAX_MANIFEST_BYTES: u64 = 256 << 10;

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
    /// A bare `.wasm` given on the command line: its manifest was made up
    /// here, so the component's `describe()` names it.
    pub bare: bool,
    /// Who signed it: set only for a `.tessera` pack whose signature
    /// verified.
    pub signer: Option<sign::Signer>,
    /// For a `.tessera` pack, the sha256 of its digest list, which names
    /// everything in it.
    pub packed: Option<String>,
    /// For an adapter bundle: its PEFT files. Its `wasm` is then empty
    /// when it ships no component, and its `sha256` names the component
    /// and the weights together ([`adapter_digest`]).
    pub adapter: Option<AdapterFiles>,
}

/// The PEFT files of an adapter bundle.
#[derive(Clone)]
pub struct AdapterFiles {
    /// `adapter_config.json`.
    pub config: Vec<u8>,
    /// `adapter_model.safetensors`.
    pub weights: Vec<u8>,
}

impl std::fmt::Debug for AdapterFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdapterFiles")
            .field("config_bytes", &self.config.len())
            .field("weights_bytes", &self.weights.len())
            .finish()
    }
}

impl AdapterFiles {
    /// Write both files into `dir`.
    pub fn write_to(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::write(dir.join(ADAPTER_CONFIG), &self.config)?;
        std::fs::write(dir.join(ADAPTER_WEIGHTS), &self.weights)
    }
}

/// What an adapter bundle's receipts and traces name it by: the sha256 of
/// a `sha256sum`-style listing of its component (when it has one) and its
/// two PEFT files, so a changed weight changes the digest as a changed
/// component would.
pub fn adapter_digest(wasm: &[u8], files: &AdapterFiles) -> String {
    let mut listing = String::new();
    if !wasm.is_empty() {
        listing.push_str(&format!("{}  component.wasm\n", sha256_hex(wasm)));
    }
    listing.push_str(&format!(
        "{}  {ADAPTER_CONFIG}\n",
        sha256_hex(&files.config)
    ));
    listing.push_str(&format!(
        "{}  {ADAPTER_WEIGHTS}\n",
        sha256_hex(&files.weights)
    ));
    sha256_hex(listing.as_bytes())
}

use crate::inference::lora::{
    ADAPTER_CONFIG, ADAPTER_WEIGHTS, MAX_ADAPTER_CONFIG_BYTES, MAX_ADAPTER_WEIGHTS_BYTES,
};

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
        "{manifest}: no `component` field, and no built component: build the plugin with `tessera build {dir}` (or start `tessera serve --build` for your own plugin crates)"
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
    /// A file the manifest names lies outside the bundle directory.
    #[error(
        "{path}: resolves outside the bundle directory {dir} (through a symlink?); a bundle may only use its own files"
    )]
    OutsideBundle {
        /// The file as named.
        path: PathBuf,
        /// The bundle directory.
        dir: PathBuf,
    },
    /// Not a regular file (a FIFO, a device, a directory).
    #[error("{path}: is {kind}, not a regular file")]
    NotAFile {
        /// The file.
        path: PathBuf,
        /// What it is instead.
        kind: &'static str,
    },
    /// A `.tessera` pack that is damaged, changed or badly signed.
    #[error("{path}: {reason}")]
    Pack {
        /// The pack.
        path: PathBuf,
        /// What is wrong.
        reason: pack::PackReadError,
    },
    /// An adapter bundle without its PEFT files.
    #[error(
        "{dir}: no trained adapter ({ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}) in `{weights}`; train one with `tessera adapt --data DATA.jsonl --out {}` (or set `adapter.weights` in {MANIFEST_FILE})",
        dir.join(weights).display()
    )]
    NoAdapterWeights {
        /// The bundle.
        dir: PathBuf,
        /// `adapter.weights`.
        weights: String,
    },
    /// Over the size cap.
    #[error("{path}: is {size} bytes, over the limit of {max} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The cap.
        max: u64,
    },
}

impl Bundle {
    /// Read a bundle from `path`: a bundle directory, a plugin crate that
    /// `tessera build` has built, or a bare `.wasm` component (which gets a
    /// default manifest named after the file).
    pub fn open(path: &Path) -> Result<Bundle, BundleError> {
        if path.is_file() {
            if path.extension().is_some_and(|e| e == pack::PACK_EXTENSION) {
                return Self::open_packed(path);
            }
            return Self::open_wasm(path);
        }
        let manifest_path = path.join(MANIFEST_FILE);
        if !manifest_path.is_file() {
            return Err(BundleError::NotABundle(path.to_path_buf()));
        }
        let text = read_inside(path, Path::new(MANIFEST_FILE), MAX_MANIFEST_BYTES)?;
        let text = String::from_utf8(text).map_err(|_| {
            BundleError::Manifest(ManifestError::Parse {
                path: manifest_path.clone(),
                message: "the file is not UTF-8 text".into(),
            })
        })?;
        let manifest = Manifest::from_toml(&text, &manifest_path)?;
        if manifest.kind == BundleKind::Adapter {
            return Self::open_adapter_dir(path, manifest);
        }
        let component = match &manifest.component {
            Some(component) => component.clone(),
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
        let wasm = read_inside(path, &component, MAX_COMPONENT_BYTES)?;
        Self::checked(path, manifest, &component, wasm)
    }

    /// An adapter bundle directory: its PEFT files and, when the manifest
    /// names one, its component. A plugin crate that `tessera build` has
    /// built opens as its built bundle.
    fn open_adapter_dir(path: &Path, manifest: Manifest) -> Result<Bundle, BundleError> {
        if manifest.component.is_none() && crate::build::PluginLang::of(path).is_some() {
            let built = crate::build::default_bundle_dir(path);
            if built.join(MANIFEST_FILE).is_file() {
                return Self::open(&built);
            }
        }
        let weights_dir = manifest.adapter_weights_dir();
        let read = |name: &str, max| match read_inside(path, &weights_dir.join(name), max) {
            Err(BundleError::ReadComponent { reason, .. })
                if reason.kind() == std::io::ErrorKind::NotFound =>
            {
                Err(BundleError::NoAdapterWeights {
                    dir: path.to_path_buf(),
                    weights: weights_dir.display().to_string(),
                })
            }
            other => other,
        };
        let files = AdapterFiles {
            config: read(ADAPTER_CONFIG, MAX_ADAPTER_CONFIG_BYTES)?,
            weights: read(ADAPTER_WEIGHTS, MAX_ADAPTER_WEIGHTS_BYTES)?,
        };
        let (wasm, component) = match &manifest.component {
            Some(c) => (read_inside(path, c, MAX_COMPONENT_BYTES)?, c.clone()),
            None => (Vec::new(), PathBuf::new()),
        };
        Self::checked_adapter(path, manifest, &component, wasm, files)
    }

    /// An adapter bundle once its component's sha256, if any, is checked.
    fn checked_adapter(
        dir: &Path,
        manifest: Manifest,
        component: &Path,
        wasm: Vec<u8>,
        files: AdapterFiles,
    ) -> Result<Bundle, BundleError> {
        let mut bundle = if wasm.is_empty() {
            Bundle {
                dir: dir.to_path_buf(),
                manifest,
                wasm,
                sha256: String::new(),
                bare: false,
                signer: None,
                packed: None,
                adapter: None,
            }
        } else {
            Self::checked(dir, manifest, component, wasm)?
        };
        bundle.sha256 = adapter_digest(&bundle.wasm, &files);
        bundle.adapter = Some(files);
        Ok(bundle)
    }

    /// A bundle of `manifest` and its component `wasm` (at `component`
    /// in `dir`), once the manifest's sha256, if any, is checked.
    fn checked(
        dir: &Path,
        manifest: Manifest,
        component: &Path,
        wasm: Vec<u8>,
    ) -> Result<Bundle, BundleError> {
        let sha256 = sha256_hex(&wasm);
        if let Some(expected) = &manifest.sha256
            && !expected.eq_ignore_ascii_case(&sha256)
        {
            return Err(BundleError::DigestMismatch {
                path: dir.join(component),
                expected: expected.clone(),
                actual: sha256,
            });
        }
        Ok(Bundle {
            dir: dir.to_path_buf(),
            manifest,
            wasm,
            sha256,
            bare: false,
            signer: None,
            packed: None,
            adapter: None,
        })
    }

    /// Read a `.tessera` pack: every file checked against its digest, the
    /// signature (if any) against the digests.
    fn open_packed(path: &Path) -> Result<Bundle, BundleError> {
        let mut unpacked = pack::unpack(path)?;
        let member = |name: &str, reason: &str| BundleError::Pack {
            path: path.to_path_buf(),
            reason: pack::PackReadError::Member {
                name: name.to_string(),
                reason: reason.to_string(),
            },
        };
        let manifest_path = path.join(MANIFEST_FILE);
        let text = unpacked
            .files
            .get(MANIFEST_FILE)
            .ok_or_else(|| member(MANIFEST_FILE, "is missing"))?;
        let text = std::str::from_utf8(text).map_err(|_| member(MANIFEST_FILE, "is not UTF-8"))?;
        let manifest = Manifest::from_toml(text, &manifest_path)?;
        if manifest.kind == BundleKind::Adapter {
            let weights_dir = manifest.adapter_weights_dir();
            let mut take = |name: &str| {
                let key = weights_dir.join(name).to_string_lossy().replace('\\', "/");
                let key = key.strip_prefix("./").unwrap_or(&key).to_string();
                unpacked
                    .files
                    .remove(&key)
                    .ok_or(BundleError::NoAdapterWeights {
                        dir: path.to_path_buf(),
                        weights: weights_dir.display().to_string(),
                    })
            };
            let files = AdapterFiles {
                config: take(ADAPTER_CONFIG)?,
                weights: take(ADAPTER_WEIGHTS)?,
            };
            let (wasm, component) = match manifest.component.as_ref().and_then(|c| c.to_str()) {
                Some(c) => {
                    let c = c.replace('\\', "/");
                    let wasm = unpacked.files.remove(&c).ok_or_else(|| {
                        member(&c, "is named by the manifest but not in the pack")
                    })?;
                    (wasm, PathBuf::from(c))
                }
                None => (Vec::new(), PathBuf::new()),
            };
            return Ok(Bundle {
                signer: unpacked.signer,
                packed: Some(unpacked.digest),
                ..Self::checked_adapter(path, manifest, &component, wasm, files)?
            });
        }
        let component = manifest
            .component
            .as_ref()
            .and_then(|c| c.to_str())
            .map(|c| c.replace('\\', "/"))
            .ok_or_else(|| member(MANIFEST_FILE, "names no `component`"))?;
        let wasm = unpacked
            .files
            .remove(&component)
            .ok_or_else(|| member(&component, "is named by the manifest but not in the pack"))?;
        Ok(Bundle {
            signer: unpacked.signer,
            packed: Some(unpacked.digest),
            ..Self::checked(path, manifest, Path::new(&component), wasm)?
        })
    }

    fn open_wasm(path: &Path) -> Result<Bundle, BundleError> {
        let wasm = read_capped(path, MAX_COMPONENT_BYTES)?;
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
            bare: true,
            signer: None,
            packed: None,
            adapter: None,
        })
    }
}

/// Read `rel` inside the bundle directory `dir`: a relative path of plain
/// names that resolves, symlinks followed, to a regular file inside `dir`
/// of at most `max` bytes.
pub fn read_inside(dir: &Path, rel: &Path, max: u64) -> Result<Vec<u8>, BundleError> {
    let named = dir.join(rel);
    if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(BundleError::OutsideBundle {
            path: named,
            dir: dir.to_path_buf(),
        });
    }
    let io = |reason| BundleError::ReadComponent {
        path: named.clone(),
        reason,
    };
    let root = dir.canonicalize().map_err(io)?;
    let resolved = named.canonicalize().map_err(io)?;
    if !resolved.starts_with(&root) {
        return Err(BundleError::OutsideBundle {
            path: named,
            dir: dir.to_path_buf(),
        });
    }
    read_capped(&resolved, max).map_err(|e| match e {
        // Name the file as the manifest does, not its resolved path.
        BundleError::NotAFile { kind, .. } => BundleError::NotAFile { path: named, kind },
        BundleError::TooLarge { size, max, .. } => BundleError::TooLarge {
            path: named,
            size,
            max,
        },
        other => other,
    })
}

/// Read the regular file `path`, of at most `max` bytes. A FIFO or device
/// is refused without blocking on it (it is opened non-blocking and
/// checked before any read), and the read stops at the cap even if the
/// file grows meanwhile.
pub fn read_capped(path: &Path, max: u64) -> Result<Vec<u8>, BundleError> {
    let io = |reason| BundleError::ReadComponent {
        path: path.to_path_buf(),
        reason,
    };
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(BundleError::NotAFile {
            path: path.to_path_buf(),
            kind: file_kind(&meta),
        });
    }
    if meta.len() > max {
        return Err(BundleError::TooLarge {
            path: path.to_path_buf(),
            size: meta.len(),
            max,
        });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > max {
        return Err(BundleError::TooLarge {
            path: path.to_path_buf(),
            size: bytes.len() as u64,
            max,
        });
    }
    Ok(bytes)
}

fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_char_device() || t.is_block_device() {
            return "a device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if meta.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

/// sha256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle_dir(component: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(MANIFEST_FILE),
            format!("name = \"x\"\nversion = \"0.1.0\"\ncomponent = {component:?}\n"),
        )
        .unwrap();
        dir
    }

    /// Regression: `component = "../../../../etc/passwd"` was read.
    #[test]
    fn component_paths_stay_inside_the_bundle() {
        let dir = bundle_dir("../../../../etc/passwd");
        let err = Bundle::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("field `component`"), "{err}");
        let dir = bundle_dir("/etc/passwd");
        let err = Bundle::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("field `component`"), "{err}");
    }

    #[test]
    fn a_symlink_out_of_the_bundle_is_refused() {
        let dir = bundle_dir("expert.wasm");
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("expert.wasm")).unwrap();
        let err = Bundle::open(dir.path()).unwrap_err();
        assert!(matches!(err, BundleError::OutsideBundle { .. }), "{err}");
        assert!(err.to_string().contains("outside the bundle directory"));
        // A symlink within the bundle is fine.
        let dir = bundle_dir("expert.wasm");
        std::fs::write(dir.path().join("real.wasm"), b"bytes").unwrap();
        std::os::unix::fs::symlink("real.wasm", dir.path().join("expert.wasm")).unwrap();
        assert_eq!(Bundle::open(dir.path()).unwrap().wasm, b"bytes");
    }

    /// Regression: a FIFO as the component hung start-up.
    #[test]
    fn fifos_and_devices_are_refused_without_blocking() {
        let dir = bundle_dir("expert.wasm");
        let fifo = dir.path().join("expert.wasm");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = Bundle::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("is a FIFO"), "{err}");
        let err = read_capped(Path::new("/dev/zero"), 10).unwrap_err();
        assert!(err.to_string().contains("is a device"), "{err}");
    }

    #[test]
    fn oversized_files_are_refused() {
        let dir = bundle_dir("expert.wasm");
        std::fs::write(dir.path().join("expert.wasm"), vec![0u8; 100]).unwrap();
        let err = read_inside(dir.path(), Path::new("expert.wasm"), 99).unwrap_err();
        assert!(
            err.to_string().contains("100 bytes, over the limit of 99"),
            "{err}"
        );
        assert_eq!(
            read_inside(dir.path(), Path::new("expert.wasm"), 100)
                .unwrap()
                .len(),
            100
        );
    }

    /// An adapter bundle of weights alone: opened from its directory and
    /// from a signed pack with the same digest (which changes with any
    /// weight), and without weights the error says how to train them.
    #[test]
    fn adapter_bundles_open_from_directories_and_signed_packs() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = "name = \"tuned\"\nversion = \"0.1.0\"\nkind = \"adapter\"\ndescription = \"A fine-tune.\"\n";
        std::fs::write(dir.path().join(MANIFEST_FILE), manifest).unwrap();
        let err = Bundle::open(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("no trained adapter") && err.contains("tessera adapt --data"),
            "{err}"
        );
        let weights = dir.path().join(DEFAULT_ADAPTER_WEIGHTS_DIR);
        std::fs::create_dir_all(&weights).unwrap();
        std::fs::write(weights.join(ADAPTER_CONFIG), br#"{"r": 2}"#).unwrap();
        std::fs::write(weights.join(ADAPTER_WEIGHTS), b"weights").unwrap();
        let opened = Bundle::open(dir.path()).unwrap();
        assert!(opened.wasm.is_empty());
        let files = opened.adapter.as_ref().unwrap();
        assert_eq!(files.weights, b"weights");
        assert_eq!(opened.sha256, adapter_digest(&[], files));

        let key = sign::SigningKey::generate("test");
        let out = dir.path().join("tuned.tessera");
        pack::pack(dir.path(), Some(&key), &out).unwrap();
        let packed = Bundle::open(&out).unwrap();
        assert_eq!(packed.sha256, opened.sha256);
        assert_eq!(packed.adapter.unwrap().config, br#"{"r": 2}"#);
        assert!(packed.signer.is_some());

        // Another weight, another digest.
        std::fs::write(weights.join(ADAPTER_WEIGHTS), b"weightz").unwrap();
        assert_ne!(Bundle::open(dir.path()).unwrap().sha256, opened.sha256);
        // `adapter.weights` stays inside the bundle, and only adapters
        // have it.
        let escape = format!("{manifest}[adapter]\nweights = \"../x\"\n");
        std::fs::write(dir.path().join(MANIFEST_FILE), escape).unwrap();
        let err = Bundle::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("`adapter.weights`"), "{err}");
        let agent = "name = \"x\"\nversion = \"0.1.0\"\n[adapter]\nweights = \"w\"\n";
        std::fs::write(dir.path().join(MANIFEST_FILE), agent).unwrap();
        let err = Bundle::open(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("field `adapter`: expected only in a bundle of kind = \"adapter\""),
            "{err}"
        );
    }
}
