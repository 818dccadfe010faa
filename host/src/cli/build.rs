use std::path::PathBuf;
use std::process::ExitCode;

use tessera_host::build::{BuildOptions, build_plugin};

/// Arguments of `tessera build`.
#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// The plugin: a Rust crate (Cargo.toml) or a Python plugin (app.py),
    /// with its tessera.toml.
    #[arg(value_name = "CRATE_DIR")]
    crate_dir: PathBuf,

    /// Where to write the bundle [default: CRATE_DIR/target/tessera/bundle].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

pub fn run(args: BuildArgs) -> anyhow::Result<ExitCode> {
    let opts = BuildOptions {
        out_dir: args.out,
        quiet: false,
        toolchain: None,
    };
    eprintln!("building {} ...", args.crate_dir.display());
    let out = build_plugin(&args.crate_dir, &opts)?;
    let state = if out.rebuilt { "built" } else { "up to date" };
    eprintln!(
        "{state}: {} {} ({} world, {} bytes, sha256 {}) with {}",
        out.manifest.name,
        out.manifest.version,
        out.world,
        out.size,
        &out.sha256[..16],
        out.built_with
    );
    for gap in &out.missing_grants {
        eprintln!(
            "warning: {}: {gap}",
            args.crate_dir
                .join(tessera_host::bundle::MANIFEST_FILE)
                .display()
        );
    }
    super::print(&format!("{}\n", out.bundle_dir.display()))?;
    Ok(ExitCode::SUCCESS)
}
