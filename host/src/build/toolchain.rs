//! Finding a toolchain that builds `wasm32-unknown-unknown`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Set to `rustup` or `debian` to force a toolchain.
pub const TOOLCHAIN_ENV: &str = "TESSERA_WASM_TOOLCHAIN";

const TARGET: &str = "wasm32-unknown-unknown";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
/// The `getrandom` 0.3 backend of every plugin build: the SDK's
/// `__getrandom_v03_custom`.
const GETRANDOM_BACKEND: &str = "getrandom_backend=\"custom\"";
const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const DEBIAN_STD_SRC: &str = "/usr/lib/rustlib/src/rust/library/Cargo.lock";

/// A way to build wasm32 plugins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Toolchain {
    /// rustup's toolchain with the `wasm32-unknown-unknown` target.
    Rustup,
    /// Debian's `rustc-web`, building std from `rust-web-src`.
    Debian {
        /// The wasm linker (`rust-lld` or `wasm-ld`).
        linker: PathBuf,
    },
}

/// No toolchain can build wasm32 here.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ToolchainError {
    /// Neither rustup's target nor Debian's packages are installed.
    #[error(
        "no toolchain here can build wasm32-unknown-unknown. Either run `rustup target add wasm32-unknown-unknown`, or install Debian's packages: `apt-get install rustc-web cargo-web rust-web-src lld`"
    )]
    NotFound,
    /// `TESSERA_WASM_TOOLCHAIN` names something unknown or missing.
    #[error("{TOOLCHAIN_ENV}={0}: {1}")]
    Forced(String, String),
}

impl std::fmt::Display for Toolchain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Toolchain::Rustup => write!(f, "rustup ({TARGET} target)"),
            Toolchain::Debian { linker } => {
                write!(
                    f,
                    "Debian rustc-web with -Zbuild-std (linker {})",
                    linker.display()
                )
            }
        }
    }
}

impl Toolchain {
    /// The toolchain to use: `TESSERA_WASM_TOOLCHAIN` if set, else rustup's
    /// target if installed, else Debian's packages.
    pub fn detect() -> Result<Toolchain, ToolchainError> {
        match std::env::var(TOOLCHAIN_ENV).ok().as_deref() {
            Some("rustup") => {
                return if rustup_has_target() {
                    Ok(Toolchain::Rustup)
                } else {
                    Err(ToolchainError::Forced(
                        "rustup".into(),
                        format!(
                            "the {TARGET} target is not installed: run `rustup target add {TARGET}`"
                        ),
                    ))
                };
            }
            Some("debian") => {
                return debian().ok_or_else(|| {
                    ToolchainError::Forced(
                        "debian".into(),
                        "install `rustc-web cargo-web rust-web-src lld` with apt-get".into(),
                    )
                });
            }
            Some(other) if !other.is_empty() => {
                return Err(ToolchainError::Forced(
                    other.into(),
                    "expected `rustup` or `debian`".into(),
                ));
            }
            _ => {}
        }
        if rustup_has_target() {
            return Ok(Toolchain::Rustup);
        }
        debian().ok_or(ToolchainError::NotFound)
    }

    /// A `cargo` command for this toolchain, with a clean environment for
    /// the wasm build (a parent cargo's flags must not leak into it).
    pub(crate) fn cargo_command(&self) -> Command {
        let mut cmd = match self {
            Toolchain::Rustup => Command::new(std::env::var_os("CARGO").unwrap_or("cargo".into())),
            Toolchain::Debian { .. } => Command::new(DEBIAN_CARGO),
        };
        for var in [
            "RUSTFLAGS",
            "CARGO_ENCODED_RUSTFLAGS",
            "CARGO_BUILD_RUSTFLAGS",
            "RUSTC_WRAPPER",
            "RUSTC_WORKSPACE_WRAPPER",
            "CARGO_BUILD_TARGET",
            "RUSTC",
            "RUSTDOC",
            "CARGO_MAKEFLAGS",
            "CARGO_PRIMARY_PACKAGE",
        ] {
            cmd.env_remove(var);
        }
        // wasm32-unknown-unknown has no source of randomness; crates that
        // need one (through `getrandom` 0.3: `rand`, hash maps' seeds, JS
        // engines' `Math.random`) get the SDK's deterministic stream, so
        // that an expert's run can be replayed.
        let mut flags = vec!["--cfg".to_string(), GETRANDOM_BACKEND.to_string()];
        if let Toolchain::Debian { linker } = self {
            flags.extend(["-C".to_string(), format!("linker={}", linker.display())]);
            cmd.env("RUSTC", DEBIAN_RUSTC)
                .env("RUSTC_BOOTSTRAP", "1")
                .args(["-Zbuild-std=std,panic_abort"]);
        }
        cmd.env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"));
        cmd
    }
}

fn rustup_has_target() -> bool {
    sysroot("rustc").is_some_and(|root| root.join("lib/rustlib").join(TARGET).join("lib").is_dir())
}

fn sysroot(rustc: &str) -> Option<PathBuf> {
    let out = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn debian() -> Option<Toolchain> {
    if !(Path::new(DEBIAN_RUSTC).is_file()
        && Path::new(DEBIAN_CARGO).is_file()
        && Path::new(DEBIAN_STD_SRC).is_file())
    {
        return None;
    }
    find_linker().map(|linker| Toolchain::Debian { linker })
}

/// A wasm-capable lld: rustup's `rust-lld` (same LLVM generation as recent
/// rustc), Debian's if its target exists, else `wasm-ld`.
fn find_linker() -> Option<PathBuf> {
    let host = "x86_64-unknown-linux-gnu";
    let mut candidates = Vec::new();
    for rustc in ["rustc", DEBIAN_RUSTC] {
        if let Some(root) = sysroot(rustc) {
            candidates.push(root.join("lib/rustlib").join(host).join("bin/rust-lld"));
        }
    }
    candidates.push(PathBuf::from("/usr/bin/rust-lld"));
    candidates.push(PathBuf::from("/usr/bin/wasm-ld"));
    // `is_file` follows symlinks, so a dangling one is skipped.
    candidates.into_iter().find(|p| p.is_file())
}
