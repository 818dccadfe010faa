//! `tessera audit`: what a validator can learn about a bundle without
//! running it (`audit bundle`), and the audit store's records (in
//! `records.rs`).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use serde::Serialize;
use tessera_host::bundle::{Bundle, Capabilities, ComponentInfo};
use tessera_host::sandbox::{HostPolicy, Limits};

/// Arguments of `tessera audit`.
#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(Debug, clap::Subcommand)]
enum AuditCommand {
    /// A bundle's static audit: world, imports and what this host would
    /// grant them, requested and granted limits, WASI use, size, producers
    /// and signature.
    Bundle {
        /// A bundle directory, a .tessera pack, a built plugin crate, or a
        /// .wasm component.
        #[arg(value_name = "BUNDLE")]
        path: PathBuf,

        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    #[command(flatten)]
    Records(super::records::RecordsCommand),
}

/// One import and what the host does with it.
#[derive(Debug, Serialize)]
struct Import {
    name: String,
    /// What an invocation gets when it calls it.
    grant: String,
}

#[derive(Debug, Serialize)]
struct Report<'a> {
    name: &'a str,
    version: &'a str,
    kind: &'static str,
    world: String,
    component_sha256: &'a str,
    size: usize,
    imports: Vec<Import>,
    exports: &'a [String],
    capabilities: &'a Capabilities,
    limits_requested: &'a tessera_host::bundle::LimitsSpec,
    limits_granted: Limits,
    uses_wasi: bool,
    producers: &'a [String],
    signature: String,
    warnings: Vec<String>,
}

pub fn run(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let (path, json) = match args.command {
        AuditCommand::Bundle { path, json } => (path, json),
        AuditCommand::Records(command) => return super::records::run(command),
    };
    let bundle = Bundle::open(&path)?;
    if bundle.adapter.is_some() && bundle.wasm.is_empty() {
        super::print(&format!(
            "{}: an adapter bundle of LoRA weights alone: no component, so nothing of it runs in the sandbox\n",
            bundle.manifest.name
        ))?;
        return Ok(ExitCode::SUCCESS);
    }
    let info = ComponentInfo::parse(&bundle.wasm)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let caps = &bundle.manifest.capabilities;
    let mut warnings = Vec::new();
    let imports = info
        .imports
        .iter()
        .map(|name| {
            let interface = name
                .strip_prefix("tessera:expert/")
                .map(|i| i.split('@').next().unwrap_or(i));
            let grant = match interface {
                Some("types") => "types only".to_string(),
                Some("log") => "always: lines go to the trace, capped".to_string(),
                Some("model") if caps.model.is_granted() => {
                    "granted (`model = true`), within limits.model-calls and generated-tokens"
                        .to_string()
                }
                Some("model") => {
                    warnings.push(
                        "imports the model but does not ask for it: every model call will be denied (add `model = true` under [capabilities])".to_string(),
                    );
                    "denied: the manifest does not ask for `model`".to_string()
                }
                Some("experts") if caps.experts.is_empty() => {
                    warnings.push(
                        "imports experts.call but may call no expert (list them under [capabilities] experts)".to_string(),
                    );
                    "denied: the manifest names no experts".to_string()
                }
                Some("experts") => format!("only {}", caps.experts.join(", ")),
                _ if name.starts_with("wasi:") => {
                    "linked with nothing granted: no files, env, args or network; clocks and random from the trace".to_string()
                }
                _ => "not provided".to_string(),
            };
            Import {
                name: name.clone(),
                grant,
            }
        })
        .collect();
    if caps.model.is_granted() && !info.imports.iter().any(|i| i.contains("/model")) {
        warnings.push("asks for the model but never imports it".into());
    }
    let signature = match (&bundle.signer, &bundle.packed) {
        (Some(signer), _) => format!("signed by {signer} ({})", signer.public_key),
        (None, Some(_)) => "an unsigned pack".into(),
        (None, None) => "unsigned: a directory bundle (`tessera pack --sign` signs)".into(),
    };
    let report = Report {
        name: &bundle.manifest.name,
        version: &bundle.manifest.version,
        kind: bundle.manifest.kind.world_name(),
        world: format!("tessera:expert/{}@0.1.0", info.world),
        component_sha256: &bundle.sha256,
        size: info.size,
        imports,
        exports: &info.exports,
        capabilities: caps,
        limits_requested: &bundle.manifest.limits,
        limits_granted: HostPolicy::default().limits_for(&bundle.manifest.limits),
        uses_wasi: info.uses_wasi,
        producers: &info.producers,
        signature,
        warnings,
    };
    if json {
        super::print(&format!("{}\n", serde_json::to_string_pretty(&report)?))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = String::new();
    let r = &report;
    writeln!(out, "bundle:     {} {} ({})", r.name, r.version, r.kind)?;
    writeln!(out, "world:      {}", r.world)?;
    writeln!(
        out,
        "component:  sha256 {}, {} bytes",
        r.component_sha256, r.size
    )?;
    writeln!(out, "signature:  {}", r.signature)?;
    writeln!(out, "imports:")?;
    for import in &r.imports {
        writeln!(out, "  {} — {}", import.name, import.grant)?;
    }
    writeln!(out, "exports:    {}", r.exports.join(", "))?;
    let g = &r.limits_granted;
    writeln!(
        out,
        "limits granted by this host's default policy (the manifest asks {}):",
        serde_json::to_string(r.limits_requested)?
    )?;
    writeln!(
        out,
        "  memory {} MiB, deadline {} ms, fuel {}, model calls {}, generated tokens {}",
        g.memory_bytes >> 20,
        g.deadline_ms,
        g.fuel,
        g.model_calls,
        g.generated_tokens
    )?;
    writeln!(
        out,
        "WASI:       {}",
        if r.uses_wasi {
            "imported (nothing granted)"
        } else {
            "not imported"
        }
    )?;
    writeln!(out, "producers:")?;
    if r.producers.is_empty() {
        writeln!(out, "  (none recorded)")?;
    }
    for p in r.producers {
        writeln!(out, "  {p}")?;
    }
    for w in &r.warnings {
        writeln!(out, "warning: {w}")?;
    }
    super::print(&out)?;
    Ok(ExitCode::SUCCESS)
}
