use std::path::PathBuf;
use std::process::ExitCode;

use tessera_host::bundle::{Bundle, ComponentInfo};

/// Arguments of `tessera inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// A bundle directory, a built plugin crate, or a .wasm component.
    #[arg(value_name = "BUNDLE_OR_WASM")]
    path: PathBuf,

    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let bundle = Bundle::open(&args.path)?;
    let info = ComponentInfo::parse(&bundle.wasm)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.path.display()))?;
    if args.json {
        let value = serde_json::json!({
            "name": bundle.manifest.name,
            "version": bundle.manifest.version,
            "world": info.world,
            "sha256": bundle.sha256,
            "size": info.size,
            "imports": info.imports,
            "exports": info.exports,
            "uses_wasi": info.uses_wasi,
            "manifest": bundle.manifest,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("name:     {}", bundle.manifest.name);
    println!("version:  {}", bundle.manifest.version);
    println!("world:    tessera:expert/{}@0.1.0", info.world);
    println!("sha256:   {}", bundle.sha256);
    println!("size:     {} bytes", info.size);
    println!("imports:");
    for import in &info.imports {
        println!("  {import}");
    }
    println!("exports:");
    for export in &info.exports {
        println!("  {export}");
    }
    println!("manifest:");
    for line in bundle.manifest.to_toml().lines() {
        println!("  {line}");
    }
    Ok(ExitCode::SUCCESS)
}
