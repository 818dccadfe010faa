//! Python plugins: `app.py` (defining `WitWorld`, usually
//! `WitWorld = export_expert(MyExpert)`), compiled with CPython, the Python
//! SDK and the plugin's modules into one component by componentize-py.
//!
//! The SDK and the WIT travel inside the `tessera` binary and are written to
//! `target/tessera/python/` and `target/tessera/wit/` of the plugin before
//! each build, with `tessera_manifest.py`: the manifest's name, version,
//! description, tags and examples, which the SDK's `describe()` answers
//! with. A build is skipped when none of its inputs changed (componentize-py
//! takes ~10 s).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use super::BuildError;
use crate::bundle::{BundleKind, Manifest};

/// The module componentize-py wraps: `app.py` in the plugin directory.
pub(super) const APP_FILE: &str = "app.py";
const APP_MODULE: &str = "app";
/// Set to the path of a componentize-py to use.
pub const COMPONENTIZE_PY_ENV: &str = "TESSERA_COMPONENTIZE_PY";
/// The version the SDK and the host are tested with; setup installs it.
pub const COMPONENTIZE_PY_VERSION: &str = "0.25.1";
/// The virtual environment the repository's setup installs it into.
const CHECKOUT_VENV: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../target/componentize-venv/bin/componentize-py"
);
/// Largest Python source tree hashed for the up-to-date check.
const MAX_SOURCE_BYTES: u64 = 64 << 20;

macro_rules! embed {
    ($($dir:literal / $file:literal),* $(,)?) => {
        &[$((concat!($dir, "/", $file), include_str!(concat!("../../../sdk/python/", $dir, "/", $file)))),*]
    };
}

/// Where, inside a Python plugin, `tessera build` (and `tessera new`, for
/// the native tests) writes the Python SDK.
pub const PYTHON_SDK_DIR: &str = "target/tessera/python";

/// The Python SDK, as `(path, text)`: what `tessera build` puts on the
/// plugin's Python path.
pub const PYTHON_SDK_FILES: &[(&str, &str)] = embed!(
    "tessera_sdk" / "__init__.py",
    "tessera_sdk" / "_bindings.py",
    "tessera_sdk" / "_call.py",
    "tessera_sdk" / "_errors.py",
    "tessera_sdk" / "_export.py",
    "tessera_sdk" / "_types.py",
    "tessera_sdk" / "experts.py",
    "tessera_sdk" / "log.py",
    "tessera_sdk" / "model.py",
);

const WIT_FILES: &[(&str, &str)] = &[
    ("experts.wit", include_str!("../../../wit/experts.wit")),
    ("log.wit", include_str!("../../../wit/log.wit")),
    ("model.wit", include_str!("../../../wit/model.wit")),
    ("types.wit", include_str!("../../../wit/types.wit")),
    ("world.wit", include_str!("../../../wit/world.wit")),
];

/// A prepared Python build.
pub(super) struct Build {
    program: PathBuf,
    world: &'static str,
    support: PathBuf,
    wit: PathBuf,
    /// Hash of everything the component is made from.
    pub stamp: String,
    /// Host interfaces the sources call (`model`, `experts`). A Python
    /// component imports every interface of its world whether it calls it
    /// or not, so the build-time capability check reads the sources.
    pub calls: Vec<&'static str>,
}

impl Build {
    /// Find componentize-py, write the SDK, WIT and manifest module under
    /// `dir/target/tessera/`, and hash the inputs.
    pub fn prepare(dir: &Path, manifest: &Manifest) -> Result<Build, BuildError> {
        let program = find_componentize_py().ok_or_else(|| BuildError::NoComponentizePy {
            dir: dir.to_path_buf(),
            venv: CHECKOUT_VENV.to_string(),
        })?;
        let world = match manifest.kind {
            BundleKind::Agent => "agent",
            BundleKind::Router => "router",
            BundleKind::Adapter => "adapter",
        };
        // componentize-py runs in `dir`: give it absolute paths.
        let dir = &std::path::absolute(dir).map_err(|reason| BuildError::Write {
            path: dir.to_path_buf(),
            reason,
        })?;
        let support = dir.join(PYTHON_SDK_DIR);
        let wit = dir.join("target").join("tessera").join("wit");
        let manifest_module = manifest_module(manifest);
        let mut files: Vec<(PathBuf, &str)> = PYTHON_SDK_FILES
            .iter()
            .map(|(rel, text)| (support.join(rel), *text))
            .collect();
        files.push((support.join("tessera_manifest.py"), &manifest_module));
        files.extend(WIT_FILES.iter().map(|(rel, text)| (wit.join(rel), *text)));
        let mut hash = Sha256::new();
        hash.update(program.as_os_str().as_encoded_bytes());
        hash.update(world);
        for (path, text) in &files {
            write_if_changed(path, text)?;
            hash.update(path.as_os_str().as_encoded_bytes());
            hash.update(text);
        }
        let calls = hash_sources(dir, &mut hash)?;
        Ok(Build {
            program,
            world,
            support,
            wit,
            stamp: format!("{:x}", hash.finalize()),
            calls,
        })
    }

    /// What builds the component, for people.
    pub fn built_with(&self) -> String {
        format!("componentize-py ({})", self.program.display())
    }

    /// Run componentize-py; return the component's bytes.
    pub fn componentize(&self, dir: &Path, out: &Path, quiet: bool) -> Result<Vec<u8>, BuildError> {
        let tmp = std::path::absolute(out.with_extension("wasm.partial")).map_err(|reason| {
            BuildError::Write {
                path: out.to_path_buf(),
                reason,
            }
        })?;
        if let Some(parent) = tmp.parent() {
            std::fs::create_dir_all(parent).map_err(|reason| BuildError::Write {
                path: parent.to_path_buf(),
                reason,
            })?;
        }
        let mut cmd = Command::new(&self.program);
        cmd.current_dir(dir)
            .arg("--wit-path")
            .arg(&self.wit)
            .args(["--world", self.world, "componentize"])
            .arg("--python-path")
            .arg(".")
            .arg("--python-path")
            .arg(&self.support)
            .arg(APP_MODULE)
            .arg("--output")
            .arg(&tmp)
            // The plugin's own modules and the SDK only: not whatever the
            // virtual environment tessera runs in has installed.
            .env_remove("VIRTUAL_ENV")
            // Its errors, without a Rust backtrace of componentize-py itself.
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE")
            .stdout(Stdio::piped())
            .stderr(if quiet {
                Stdio::piped()
            } else {
                Stdio::inherit()
            });
        let program = self.program.display().to_string();
        let output = cmd
            .output()
            .map_err(|reason| BuildError::Spawn { program, reason })?;
        if !output.status.success() {
            let text = String::from_utf8_lossy(&output.stderr).into_owned()
                + &String::from_utf8_lossy(&output.stdout);
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            return Err(BuildError::Componentize {
                dir: dir.to_path_buf(),
                output: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            });
        }
        let bytes = super::read(&tmp)?;
        let _ = std::fs::remove_file(&tmp);
        Ok(bytes)
    }
}

/// Write the Python SDK into `plugin_dir` (under [`PYTHON_SDK_DIR`]), so
/// that `import tessera_sdk` works there in plain CPython.
pub fn write_python_sdk(plugin_dir: &Path) -> Result<(), BuildError> {
    let support = plugin_dir.join(PYTHON_SDK_DIR);
    for (rel, text) in PYTHON_SDK_FILES {
        write_if_changed(&support.join(rel), text)?;
    }
    Ok(())
}

fn write_if_changed(path: &Path, text: &str) -> Result<(), BuildError> {
    if std::fs::read_to_string(path).ok().as_deref() == Some(text) {
        return Ok(());
    }
    super::write(path, text.as_bytes())
}

fn find_componentize_py() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(COMPONENTIZE_PY_ENV).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let venv = Path::new(CHECKOUT_VENV);
    if venv.is_file() {
        return Some(venv.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("componentize-py"))
        .find(|p| p.is_file())
}

/// `tessera_manifest.py`: what `describe()` answers, as Python literals.
fn manifest_module(m: &Manifest) -> String {
    let s = |v: &str| serde_json::Value::String(v.to_string()).to_string();
    let list = |v: &[String]| {
        format!(
            "[{}]",
            v.iter().map(|x| s(x)).collect::<Vec<_>>().join(", ")
        )
    };
    format!(
        "# Written by `tessera build` from tessera.toml; do not edit.\nMANIFEST = {{\n    \"name\": {},\n    \"version\": {},\n    \"description\": {},\n    \"tags\": {},\n    \"examples\": {},\n}}\n",
        s(&m.name),
        s(&m.version),
        s(&m.description),
        list(&m.tags),
        list(&m.examples),
    )
}

/// Calls through the SDK (or the raw bindings) that reach each interface.
const CALLS: &[(&str, &[&str])] = &[
    (
        "model",
        &[
            "model.chat(",
            "model.ask(",
            "model.stream_answer(",
            "model.complete(",
            "model.tokenize(",
            "model.score(",
            "model.score_choices(",
            "model.embed(",
        ],
    ),
    ("experts", &["experts.call("]),
];

/// Hash every `.py` file of the plugin (not `target/`, hidden folders or
/// `__pycache__`), in path order; return the interfaces the non-test
/// modules call.
fn hash_sources(dir: &Path, hash: &mut Sha256) -> Result<Vec<&'static str>, BuildError> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        let entries = std::fs::read_dir(&at).map_err(|reason| BuildError::Write {
            path: at.clone(),
            reason,
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                if !(name.starts_with('.') || name == "target" || name == "__pycache__") {
                    stack.push(path);
                }
            } else if kind.is_file() && name.ends_with(".py") {
                files.push(path);
            }
        }
    }
    files.sort();
    let mut calls = Vec::new();
    let mut total = 0u64;
    for path in files {
        let bytes = super::read(&path)?;
        total += bytes.len() as u64;
        if total > MAX_SOURCE_BYTES {
            return Err(BuildError::Componentize {
                dir: dir.to_path_buf(),
                output: format!(
                    "its .py files hold more than {} MiB; a plugin's sources should be far smaller",
                    MAX_SOURCE_BYTES >> 20
                ),
            });
        }
        hash.update(path.as_os_str().as_encoded_bytes());
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(&bytes);
        let is_test = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("test_"));
        if !is_test {
            let text = String::from_utf8_lossy(&bytes);
            for (interface, patterns) in CALLS {
                if !calls.contains(interface) && patterns.iter().any(|p| text.contains(p)) {
                    calls.push(*interface);
                }
            }
        }
    }
    Ok(calls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_module_is_python_that_holds_the_manifest() {
        let mut m = Manifest::for_bare_component("shout");
        m.description = "Says \"hi\" — loudly.\nTwice.".into();
        m.tags = vec!["fun".into()];
        m.examples = vec!["say hello".into(), "it's \\ ok".into()];
        let text = manifest_module(&m);
        // Read back by Python itself, the independent parser.
        let out = Command::new("python3")
            .arg("-c")
            .arg(format!(
                "{text}\nimport json; print(json.dumps(MANIFEST, ensure_ascii=False))"
            ))
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let back: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(back["name"], "shout");
        assert_eq!(back["description"], m.description);
        assert_eq!(back["tags"], serde_json::json!(["fun"]));
        assert_eq!(back["examples"][1], "it's \\ ok");
    }

    #[test]
    fn the_embedded_sdk_is_the_checkout_s() {
        for (rel, text) in PYTHON_SDK_FILES {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../sdk/python")
                .join(rel);
            assert_eq!(std::fs::read_to_string(&path).unwrap(), *text, "{rel}");
        }
        let on_disk = std::fs::read_dir(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/python/tessera_sdk"),
        )
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "py")
        })
        .count();
        assert_eq!(
            on_disk,
            PYTHON_SDK_FILES.len(),
            "every SDK module is embedded"
        );
    }
}
