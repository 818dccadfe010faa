//! `tessera build`: a Rust plugin crate into a component and a bundle.
//!
//! 1. Pick a toolchain: rustup's `wasm32-unknown-unknown` target when it is
//!    installed, else Debian's `rustc-web` + `rust-web-src`, building std
//!    from reason (`-Zbuild-std`).
//! 2. `cargo build --release --target wasm32-unknown-unknown` (cargo itself
//!    skips unchanged crates).
//! 3. Encode the core module as a component with `wit-component`, unless
//!    the module is unchanged since the last build.
//! 4. Check the component targets one of our worlds, matching the
//!    manifest's `kind`.
//! 5. Write the bundle: `<name>.wasm` and a `tessera.toml` that names it
//!    with its sha256.

mod toolchain;

use std::path::{Path, PathBuf};
use std::process::Stdio;

pub use toolchain::{TOOLCHAIN_ENV, Toolchain, ToolchainError};

use crate::bundle::{ComponentInfo, MANIFEST_FILE, Manifest, ManifestError, World, sha256_hex};

/// Where `tessera build` puts a crate's bundle unless told otherwise.
pub fn default_bundle_dir(crate_dir: &Path) -> PathBuf {
    crate_dir.join("target").join("tessera").join("bundle")
}

/// How to build.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Bundle directory; default [`default_bundle_dir`].
    pub out_dir: Option<PathBuf>,
    /// Capture cargo's output instead of letting it reach the terminal
    /// (tests); it is included in the error if the build fails.
    pub quiet: bool,
    /// Use this toolchain instead of detecting one.
    pub toolchain: Option<Toolchain>,
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct BuildOutput {
    /// The bundle directory.
    pub bundle_dir: PathBuf,
    /// The component inside it.
    pub component: PathBuf,
    /// The manifest written beside it.
    pub manifest: Manifest,
    /// The world the component implements.
    pub world: World,
    /// sha256 of the component.
    pub sha256: String,
    /// Size of the component, bytes.
    pub size: usize,
    /// False when nothing changed since the last build.
    pub rebuilt: bool,
    /// The toolchain used.
    pub toolchain: Toolchain,
    /// Host interfaces the component calls that its manifest does not
    /// grant, each with the line to add: every such call would fail at
    /// run time.
    pub missing_grants: Vec<String>,
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The directory is not a plugin crate.
    #[error("{0}: not a Rust crate (no Cargo.toml); point `tessera build` at a plugin crate")]
    NotACrate(PathBuf),
    /// The crate has no manifest.
    #[error(
        "{0}: no {MANIFEST_FILE}; every plugin crate needs one (name, version, kind, capabilities, limits), see docs/plugin-guide.md"
    )]
    NoManifest(PathBuf),
    /// The manifest is invalid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// No toolchain can build wasm here.
    #[error(transparent)]
    Toolchain(#[from] ToolchainError),
    /// cargo could not be started.
    #[error("cannot run {program}: {reason}")]
    Spawn {
        /// The cargo binary.
        program: String,
        /// The I/O error.
        reason: std::io::Error,
    },
    /// cargo failed.
    #[error("cargo build failed for {crate_dir}{}", if output.is_empty() { String::new() } else { format!(":\n{output}") })]
    Cargo {
        /// The crate.
        crate_dir: PathBuf,
        /// The tail of cargo's output, when captured.
        output: String,
    },
    /// The crate builds no `cdylib`.
    #[error(
        "{0}: the crate builds no .wasm library; add `[lib] crate-type = [\"cdylib\"]` to its Cargo.toml"
    )]
    NoCdylib(PathBuf),
    /// wit-component could not make a component.
    #[error(
        "cannot make a component from {module}: {message}\nhint: does the crate export an expert with `tessera_sdk::export_expert!`?"
    )]
    Encode {
        /// The core module.
        module: PathBuf,
        /// wit-component's message.
        message: String,
    },
    /// The component is not of one of our worlds.
    #[error("{path}: {reason}")]
    World {
        /// The component.
        path: PathBuf,
        /// Why.
        reason: crate::bundle::ComponentError,
    },
    /// The manifest's kind and the component's world differ.
    #[error(
        "{manifest}: kind = \"{declared}\" but the crate exports the {actual} world; fix `kind` or the export macro"
    )]
    KindMismatch {
        /// The manifest file.
        manifest: PathBuf,
        /// From the manifest.
        declared: &'static str,
        /// From the component.
        actual: World,
    },
    /// Writing the bundle failed.
    #[error("cannot write {path}: {reason}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        reason: std::io::Error,
    },
}

/// Build the plugin crate in `crate_dir` into a bundle.
pub fn build_plugin(crate_dir: &Path, opts: &BuildOptions) -> Result<BuildOutput, BuildError> {
    if !crate_dir.join("Cargo.toml").is_file() {
        return Err(BuildError::NotACrate(crate_dir.to_path_buf()));
    }
    let manifest_path = crate_dir.join(MANIFEST_FILE);
    if !manifest_path.is_file() {
        return Err(BuildError::NoManifest(crate_dir.to_path_buf()));
    }
    let mut manifest = Manifest::from_file(&manifest_path)?;
    let toolchain = match &opts.toolchain {
        Some(t) => t.clone(),
        None => Toolchain::detect()?,
    };

    let core_path = cargo_build(crate_dir, &toolchain, opts.quiet)?;
    let core = std::fs::read(&core_path).map_err(|reason| BuildError::Write {
        path: core_path.clone(),
        reason,
    })?;

    let bundle_dir = opts
        .out_dir
        .clone()
        .unwrap_or_else(|| default_bundle_dir(crate_dir));
    let component_path = bundle_dir.join(format!("{}.wasm", manifest.name));
    let stamp_path = bundle_dir.join(".core-sha256");
    let core_sha = sha256_hex(&core);
    let up_to_date = component_path.is_file()
        && std::fs::read_to_string(&stamp_path).is_ok_and(|s| s.trim() == core_sha);

    let component = if up_to_date {
        std::fs::read(&component_path).map_err(|reason| BuildError::Write {
            path: component_path.clone(),
            reason,
        })?
    } else {
        encode_component(&core, &core_path)?
    };
    let info = ComponentInfo::parse(&component).map_err(|reason| BuildError::World {
        path: component_path.clone(),
        reason,
    })?;
    if info.world.kind() != manifest.kind {
        return Err(BuildError::KindMismatch {
            manifest: manifest_path,
            declared: manifest.kind.world_name(),
            actual: info.world,
        });
    }
    let missing_grants = info
        .capability_uses(&manifest.capabilities)
        .iter()
        .filter_map(|u| u.missing_grant())
        .collect();
    let sha256 = sha256_hex(&component);
    manifest.component = Some(PathBuf::from(format!("{}.wasm", manifest.name)));
    manifest.sha256 = Some(sha256.clone());

    let manifest_out = bundle_dir.join(MANIFEST_FILE);
    let manifest_text = manifest.to_toml();
    let manifest_changed =
        std::fs::read_to_string(&manifest_out).map_or(true, |old| old != manifest_text);
    if manifest.kind == crate::bundle::BundleKind::Adapter {
        copy_adapter_weights(crate_dir, &bundle_dir, &manifest.adapter_weights_dir())?;
    }
    if !up_to_date || manifest_changed {
        // Each file is written whole and renamed into place, so a host
        // watching the directory, or a concurrent build, never reads half
        // of one.
        write(&component_path, &component)?;
        write(&manifest_out, manifest_text.as_bytes())?;
        write(&stamp_path, core_sha.as_bytes())?;
    }
    Ok(BuildOutput {
        bundle_dir,
        component: component_path,
        world: info.world,
        size: component.len(),
        sha256,
        manifest,
        rebuilt: !up_to_date,
        toolchain,
        missing_grants,
    })
}

/// Copy an adapter crate's trained PEFT files (when there are any yet)
/// into its bundle, where the bundle's manifest says they are.
fn copy_adapter_weights(crate_dir: &Path, bundle_dir: &Path, rel: &Path) -> Result<(), BuildError> {
    use crate::inference::lora::{ADAPTER_CONFIG, ADAPTER_WEIGHTS};
    for name in [ADAPTER_WEIGHTS, ADAPTER_CONFIG] {
        let from = crate_dir.join(rel).join(name);
        let to = bundle_dir.join(rel).join(name);
        let Ok(bytes) = std::fs::read(&from) else {
            continue;
        };
        if std::fs::read(&to).is_ok_and(|old| old == bytes) {
            continue;
        }
        write(&to, &bytes)?;
    }
    Ok(())
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), BuildError> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let err = |reason| BuildError::Write {
        path: path.to_path_buf(),
        reason,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
    tmp.write_all(bytes).map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

/// Run cargo; return the path of the crate's `.wasm` core module.
fn cargo_build(
    crate_dir: &Path,
    toolchain: &Toolchain,
    quiet: bool,
) -> Result<PathBuf, BuildError> {
    let mut cmd = toolchain.cargo_command();
    cmd.current_dir(crate_dir)
        .args(["build", "--release", "--target", "wasm32-unknown-unknown"])
        .arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped())
        .stderr(if quiet {
            Stdio::piped()
        } else {
            Stdio::inherit()
        });
    let program = format!("{:?}", cmd.get_program());
    let output = cmd
        .output()
        .map_err(|reason| BuildError::Spawn { program, reason })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
        return Err(BuildError::Cargo {
            crate_dir: crate_dir.to_path_buf(),
            output: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        });
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let crate_manifest = std::fs::canonicalize(crate_dir.join("Cargo.toml"))
        .unwrap_or_else(|_| crate_dir.join("Cargo.toml"));
    let mut found = None;
    for line in stdout.lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let is_ours = msg["manifest_path"]
            .as_str()
            .is_some_and(|p| Path::new(p) == crate_manifest);
        let is_cdylib = msg["target"]["kind"]
            .as_array()
            .is_some_and(|kinds| kinds.iter().any(|k| k == "cdylib"));
        if !(is_ours && is_cdylib) {
            continue;
        }
        found = msg["filenames"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f.as_str())
            .find(|f| f.ends_with(".wasm"))
            .map(PathBuf::from);
    }
    found.ok_or_else(|| BuildError::NoCdylib(crate_dir.to_path_buf()))
}

fn encode_component(core: &[u8], core_path: &Path) -> Result<Vec<u8>, BuildError> {
    let encode_err = |e: anyhow::Error| BuildError::Encode {
        module: core_path.to_path_buf(),
        message: format!("{e:#}"),
    };
    wit_component::ComponentEncoder::default()
        .module(core)
        .map_err(encode_err)?
        .validate(true)
        .encode()
        .map_err(encode_err)
}
