//! `tessera build`: a plugin's sources into a component and a bundle.
//!
//! A Python plugin (`app.py`) is compiled by componentize-py, with CPython
//! and the Python SDK, into one component (see `python.rs`). A Rust crate:
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

mod python;
mod toolchain;

use std::path::{Path, PathBuf};
use std::process::Stdio;

pub use python::{
    COMPONENTIZE_PY_ENV, COMPONENTIZE_PY_VERSION, PYTHON_SDK_DIR, PYTHON_SDK_FILES,
    write_python_sdk,
};
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
    /// What built it (the Rust toolchain, or componentize-py), for people.
    pub built_with: String,
    /// Host interfaces the component calls that its manifest does not
    /// grant, each with the line to add: every such call would fail at
    /// run time.
    pub missing_grants: Vec<String>,
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The directory holds no plugin sources.
    #[error(
        "{0}: not a plugin (no Cargo.toml for Rust, no app.py for Python); point `tessera build` at a plugin directory, or make one with `tessera new`"
    )]
    NotAPlugin(PathBuf),
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
    /// componentize-py is not installed where `tessera build` looks.
    #[error(
        "{dir}: a Python plugin is compiled by componentize-py {COMPONENTIZE_PY_VERSION}, which is not installed here (looked at ${COMPONENTIZE_PY_ENV}, {venv} and the PATH). Install it: `python3 -m pip install componentize-py=={COMPONENTIZE_PY_VERSION}` (or set {COMPONENTIZE_PY_ENV} to its path)"
    )]
    NoComponentizePy {
        /// The plugin.
        dir: PathBuf,
        /// The checkout's virtual environment that was looked at.
        venv: String,
    },
    /// componentize-py failed.
    #[error("componentize-py failed for {dir}{}", if output.is_empty() { String::new() } else { format!(":\n{output}") })]
    Componentize {
        /// The plugin.
        dir: PathBuf,
        /// The tail of its output, when captured.
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

/// Build the plugin in `dir` into a bundle: a Rust crate (`Cargo.toml`)
/// with cargo, or a Python plugin (`app.py`, no `Cargo.toml`) with
/// componentize-py.
pub fn build_plugin(dir: &Path, opts: &BuildOptions) -> Result<BuildOutput, BuildError> {
    let lang = PluginLang::of(dir).ok_or_else(|| BuildError::NotAPlugin(dir.to_path_buf()))?;
    let manifest_path = dir.join(MANIFEST_FILE);
    if !manifest_path.is_file() {
        return Err(BuildError::NoManifest(dir.to_path_buf()));
    }
    let manifest = Manifest::from_file(&manifest_path)?;
    let bundle_dir = opts
        .out_dir
        .clone()
        .unwrap_or_else(|| default_bundle_dir(dir));
    let component_path = bundle_dir.join(format!("{}.wasm", manifest.name));
    let stamp_path = bundle_dir.join(".source-sha256");
    let up_to_date = |stamp: &str| {
        component_path.is_file()
            && std::fs::read_to_string(&stamp_path).is_ok_and(|s| s.trim() == stamp)
    };

    let (component, stamp, up_to_date, built_with, calls) = match lang {
        PluginLang::Rust => {
            let toolchain = match &opts.toolchain {
                Some(t) => t.clone(),
                None => Toolchain::detect()?,
            };
            let core_path = cargo_build(dir, &toolchain, opts.quiet)?;
            let core = std::fs::read(&core_path).map_err(|reason| BuildError::Write {
                path: core_path.clone(),
                reason,
            })?;
            let stamp = sha256_hex(&core);
            let fresh = up_to_date(&stamp);
            let component = if fresh {
                read(&component_path)?
            } else {
                encode_component(&core, &core_path)?
            };
            (component, stamp, fresh, toolchain.to_string(), None)
        }
        PluginLang::Python => {
            let py = python::Build::prepare(dir, &manifest)?;
            let fresh = up_to_date(&py.stamp);
            let component = if fresh {
                read(&component_path)?
            } else {
                py.componentize(dir, &component_path, opts.quiet)?
            };
            let built_with = py.built_with();
            (component, py.stamp, fresh, built_with, Some(py.calls))
        }
    };
    finish(
        dir,
        manifest,
        &manifest_path,
        Finish {
            bundle_dir,
            component_path,
            stamp_path,
            component,
            stamp,
            up_to_date,
            built_with,
            calls,
        },
    )
}

/// What a language's build hands to [`finish`].
struct Finish {
    bundle_dir: PathBuf,
    component_path: PathBuf,
    stamp_path: PathBuf,
    component: Vec<u8>,
    /// Hash of what the component was built from; unchanged means the
    /// component in the bundle is current.
    stamp: String,
    up_to_date: bool,
    built_with: String,
    /// The host interfaces the sources call, where the component's imports
    /// cannot tell (Python); `None`: the imports tell.
    calls: Option<Vec<&'static str>>,
}

/// Check the component against the manifest and write the bundle.
fn finish(
    dir: &Path,
    mut manifest: Manifest,
    manifest_path: &Path,
    f: Finish,
) -> Result<BuildOutput, BuildError> {
    let info = ComponentInfo::parse(&f.component).map_err(|reason| BuildError::World {
        path: f.component_path.clone(),
        reason,
    })?;
    if info.world.kind() != manifest.kind {
        return Err(BuildError::KindMismatch {
            manifest: manifest_path.to_path_buf(),
            declared: manifest.kind.world_name(),
            actual: info.world,
        });
    }
    let mut uses = info.capability_uses(&manifest.capabilities);
    if let Some(calls) = &f.calls {
        for u in &mut uses {
            u.used &= calls.contains(&u.interface);
        }
    }
    let missing_grants = uses.iter().filter_map(|u| u.missing_grant()).collect();
    let sha256 = sha256_hex(&f.component);
    manifest.component = Some(PathBuf::from(format!("{}.wasm", manifest.name)));
    manifest.sha256 = Some(sha256.clone());

    let manifest_out = f.bundle_dir.join(MANIFEST_FILE);
    let manifest_text = manifest.to_toml();
    let manifest_changed =
        std::fs::read_to_string(&manifest_out).map_or(true, |old| old != manifest_text);
    if manifest.kind == crate::bundle::BundleKind::Adapter {
        copy_adapter_weights(dir, &f.bundle_dir, &manifest.adapter_weights_dir())?;
    }
    if !f.up_to_date || manifest_changed {
        // Each file is written whole and renamed into place, so a host
        // watching the directory, or a concurrent build, never reads half
        // of one.
        write(&f.component_path, &f.component)?;
        write(&manifest_out, manifest_text.as_bytes())?;
        write(&f.stamp_path, f.stamp.as_bytes())?;
    }
    Ok(BuildOutput {
        bundle_dir: f.bundle_dir,
        component: f.component_path,
        world: info.world,
        size: f.component.len(),
        sha256,
        manifest,
        rebuilt: !f.up_to_date,
        built_with: f.built_with,
        missing_grants,
    })
}

fn read(path: &Path) -> Result<Vec<u8>, BuildError> {
    std::fs::read(path).map_err(|reason| BuildError::Write {
        path: path.to_path_buf(),
        reason,
    })
}

/// The language a plugin directory is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginLang {
    /// A crate: `Cargo.toml`.
    Rust,
    /// `app.py` and no `Cargo.toml`.
    Python,
}

impl PluginLang {
    /// The language of the plugin in `dir`, or `None` when it is neither a
    /// crate nor a Python plugin.
    pub fn of(dir: &Path) -> Option<PluginLang> {
        if dir.join("Cargo.toml").is_file() {
            Some(PluginLang::Rust)
        } else if dir.join(python::APP_FILE).is_file() {
            Some(PluginLang::Python)
        } else {
            None
        }
    }
}

/// Whether `dir` holds plugin sources `tessera build` can build (a crate
/// or a Python plugin, with its `tessera.toml`), rather than a bundle.
pub fn is_plugin_source(dir: &Path) -> bool {
    PluginLang::of(dir).is_some() && dir.join(MANIFEST_FILE).is_file()
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
