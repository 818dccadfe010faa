use std::path::PathBuf;
use std::process::ExitCode;

use tessera_host::bundle::{Bundle, ComponentInfo};

/// Arguments of `tessera inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// A bundle directory, a .tessera pack, a built plugin crate, or a
    /// .wasm component.
    #[arg(value_name = "BUNDLE_OR_WASM")]
    path: PathBuf,

    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let bundle = Bundle::open(&args.path)?;
    if let Some(files) = &bundle.adapter {
        return inspect_adapter(&bundle, files, args.json);
    }
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
            "capabilities": info.capability_uses(&bundle.manifest.capabilities),
            "signer": bundle.signer,
            "packed": bundle.packed,
            "manifest": bundle.manifest,
        });
        super::print(&format!("{}\n", serde_json::to_string_pretty(&value)?))?;
        return Ok(ExitCode::SUCCESS);
    }
    use std::fmt::Write;
    let mut out = String::new();
    writeln!(out, "name:     {}", bundle.manifest.name)?;
    writeln!(out, "version:  {}", bundle.manifest.version)?;
    writeln!(out, "world:    tessera:expert/{}@0.1.0", info.world)?;
    writeln!(out, "sha256:   {}", bundle.sha256)?;
    writeln!(out, "size:     {} bytes", info.size)?;
    writeln!(out, "signer:   {}", signer_line(&bundle))?;
    writeln!(out, "imports:")?;
    for import in &info.imports {
        writeln!(out, "  {import}")?;
    }
    writeln!(out, "exports:")?;
    for export in &info.exports {
        writeln!(out, "  {export}")?;
    }
    writeln!(
        out,
        "capabilities (used by the component / granted by the manifest):"
    )?;
    for u in info.capability_uses(&bundle.manifest.capabilities) {
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        let which = match bundle.manifest.capabilities.model.name() {
            Some(model) if u.interface == "model" => format!(" (model `{model}`)"),
            _ => String::new(),
        };
        writeln!(
            out,
            "  {:<8} used {:<3} granted {}{which}",
            u.interface,
            yes_no(u.used),
            yes_no(u.granted)
        )?;
        if let Some(gap) = u.missing_grant() {
            writeln!(out, "    warning: {gap}")?;
        }
    }
    writeln!(out, "manifest:")?;
    for line in bundle.manifest.to_toml().lines() {
        writeln!(out, "  {line}")?;
    }
    super::print(&out)?;
    Ok(ExitCode::SUCCESS)
}

/// An adapter bundle: its LoRA (from `adapter_config.json`), its weights,
/// its hooks component if any, and its manifest.
fn inspect_adapter(
    bundle: &Bundle,
    files: &tessera_host::bundle::AdapterFiles,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let config: serde_json::Value = serde_json::from_slice(&files.config).unwrap_or_default();
    let hooks = if bundle.wasm.is_empty() {
        None
    } else {
        Some(
            ComponentInfo::parse(&bundle.wasm)
                .map_err(|e| anyhow::anyhow!("{}: {e}", bundle.dir.display()))?,
        )
    };
    let lora = serde_json::json!({
        "r": config["r"],
        "lora_alpha": config["lora_alpha"],
        "target_modules": config["target_modules"],
        "base_model_name_or_path": config["base_model_name_or_path"],
        "weights_bytes": files.weights.len(),
        "weights_sha256": tessera_host::bundle::sha256_hex(&files.weights),
    });
    if json {
        let value = serde_json::json!({
            "name": bundle.manifest.name,
            "version": bundle.manifest.version,
            "world": "adapter",
            "sha256": bundle.sha256,
            "lora": lora,
            "hooks": hooks.as_ref().map(|i| serde_json::json!({
                "size": i.size, "exports": i.exports, "imports": i.imports,
            })),
            "signer": bundle.signer,
            "packed": bundle.packed,
            "manifest": bundle.manifest,
        });
        super::print(&format!("{}\n", serde_json::to_string_pretty(&value)?))?;
        return Ok(ExitCode::SUCCESS);
    }
    use std::fmt::Write;
    let mut out = String::new();
    writeln!(out, "name:     {}", bundle.manifest.name)?;
    writeln!(out, "version:  {}", bundle.manifest.version)?;
    writeln!(out, "world:    tessera:expert/adapter@0.1.0")?;
    writeln!(out, "sha256:   {} (hooks and weights)", bundle.sha256)?;
    writeln!(
        out,
        "lora:     rank {} alpha {} on {} of {}",
        config["r"],
        config["lora_alpha"],
        config["target_modules"],
        config["base_model_name_or_path"]
    )?;
    writeln!(
        out,
        "weights:  {} bytes, sha256 {}",
        files.weights.len(),
        lora["weights_sha256"].as_str().unwrap_or_default()
    )?;
    match &hooks {
        Some(info) => writeln!(
            out,
            "hooks:    {} ({} bytes)",
            info.exports.join(", "),
            info.size
        )?,
        None => writeln!(out, "hooks:    none (the adapter is served as is)")?,
    }
    writeln!(out, "signer:   {}", signer_line(bundle))?;
    writeln!(out, "manifest:")?;
    for line in bundle.manifest.to_toml().lines() {
        writeln!(out, "  {line}")?;
    }
    super::print(&out)?;
    Ok(ExitCode::SUCCESS)
}

/// Who signed `bundle`, in words.
fn signer_line(bundle: &Bundle) -> String {
    match (&bundle.signer, &bundle.packed) {
        (Some(signer), _) => format!("{signer} ({})", signer.public_key),
        (None, Some(_)) => "none (an unsigned pack)".into(),
        (None, None) => "none (a directory bundle; `tessera pack --sign` signs)".into(),
    }
}
