use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use tessera_host::build::{BuildOptions, build_plugin, is_plugin_source};
use tessera_host::bundle::{Bundle, ComponentInfo, MANIFEST_FILE};
use tessera_host::ensemble::Ensemble;
use tessera_host::sandbox::{HostPolicy, Sandbox};
use tessera_host::types::{Message, Request, Role};

/// Arguments of `tessera run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The expert: a bundle directory, a plugin crate (built first if
    /// needed), or a .wasm component.
    #[arg(value_name = "BUNDLE_OR_WASM")]
    path: PathBuf,

    /// The user message.
    #[arg(short, long)]
    prompt: String,

    /// A system message to put first.
    #[arg(long)]
    system: Option<String>,

    /// Other experts to load, so that this one can call them.
    #[arg(long = "with", value_name = "BUNDLE")]
    with: Vec<PathBuf>,

    /// Print {"answer", "response", "error", "trace"} as JSON instead of
    /// the answer: the whole response (usage, confidence, metadata) and
    /// every host call the expert made.
    #[arg(long)]
    trace: bool,

    /// Load no model: experts that call it get a clear error. Without
    /// this flag the model is loaded only when an expert given here has
    /// `model = true` (or is an adapter).
    #[arg(long)]
    no_model: bool,

    /// Write the host's signed receipt for the answer to FILE (JSON).
    #[arg(long, value_name = "FILE")]
    receipt: Option<PathBuf>,

    /// Write the invocation's whole record to FILE (JSON: request, answer,
    /// trace with what each host call returned, receipt), as `tessera
    /// verify --replay` reads it.
    #[arg(long, value_name = "FILE")]
    record: Option<PathBuf>,

    #[command(flatten)]
    audit: super::records::StoreArgs,

    /// The key receipts are signed with [default: the user data dir's
    /// tessera/keys/host_ed25519, made on first use].
    #[arg(long, value_name = "FILE")]
    host_key: Option<PathBuf>,

    #[command(flatten)]
    engine: super::engine::EngineArgs,
}

pub async fn run(
    args: RunArgs,
    cache_dir: Option<PathBuf>,
    verbose: bool,
) -> anyhow::Result<ExitCode> {
    let sandbox = Sandbox::new(HostPolicy::default(), cache_dir.as_deref())?;
    // Bundles first: a bad path or component is reported before the model
    // loads.
    let callees = args
        .with
        .iter()
        .map(|p| open(p, verbose))
        .collect::<Result<Vec<_>, _>>()?;
    let main = open(&args.path, verbose)?;
    for (bundle, path) in callees.iter().zip(&args.with).chain([(&main, &args.path)]) {
        if bundle.adapter.is_some() && bundle.wasm.is_empty() {
            // An adapter bundle of weights alone: nothing to parse.
            continue;
        }
        ComponentInfo::parse(&bundle.wasm)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    let host_key = (args.receipt.is_some() || args.record.is_some())
        .then(|| super::keys::host_key(args.host_key.as_deref()))
        .transpose()?;
    let audit_store = args.audit.open()?;
    // Only load the model (seconds, hundreds of MiB) when someone can call it.
    let needs_model = callees
        .iter()
        .chain([&main])
        .any(|b| b.manifest.capabilities.model.is_granted() || b.adapter.is_some());
    let engine = args.engine.engine(args.no_model || !needs_model)?;
    let ensemble = Ensemble::new(sandbox, engine);
    if let Some(key) = host_key {
        ensemble.set_host_key(key);
    }
    if let Some(store) = audit_store {
        ensemble.set_audit_store(store);
    }
    for bundle in callees {
        ensemble.add(bundle).await?;
    }
    let expert = ensemble.add(main).await?;

    let mut messages = Vec::new();
    if let Some(system) = args.system {
        messages.push(Message {
            role: Role::System,
            content: system,
        });
    }
    messages.push(Message {
        role: Role::User,
        content: args.prompt,
    });
    let invocation = ensemble
        .invoke(expert.name(), Request::from_messages(messages))
        .await;

    if args.trace {
        let (answer, error) = match &invocation.result {
            Ok(r) => (Some(&r.content), None),
            Err(e) => (
                None,
                Some(serde_json::json!({"kind": e.kind.as_str(), "message": e.message})),
            ),
        };
        let response = invocation.result.as_ref().ok().map(|r| {
            serde_json::json!({
                "content": r.content,
                "usage": {
                    "prompt-tokens": r.usage.prompt_tokens,
                    "completion-tokens": r.usage.completion_tokens,
                },
                "confidence": r.confidence,
                "metadata": r.metadata,
            })
        });
        let doc = serde_json::json!({
            "answer": answer,
            "response": response,
            "error": error,
            "trace": invocation.trace,
        });
        super::print(&format!("{}\n", serde_json::to_string_pretty(&doc)?))?;
    }
    if let (Some(path), Some(receipt)) = (&args.receipt, &invocation.receipt) {
        std::fs::write(path, serde_json::to_string_pretty(receipt)? + "\n")
            .with_context(|| format!("cannot write the receipt to {}", path.display()))?;
    }
    if let Some(path) = &args.record {
        let Some(request) = invocation.request.clone() else {
            anyhow::bail!("the invocation has no record");
        };
        let record = tessera_host::audit::Record {
            request,
            response: invocation.result.as_ref().ok().map(Into::into),
            trace: invocation.trace.clone(),
            receipt: invocation.receipt.clone(),
        };
        std::fs::write(path, serde_json::to_string_pretty(&record)? + "\n")
            .with_context(|| format!("cannot write the record to {}", path.display()))?;
    }
    if let Some(id) = invocation.audit_id {
        eprintln!("recorded as audit record {id} (`tessera audit show {id}`)");
    }
    match invocation.result {
        Ok(response) => {
            if !args.trace {
                super::print(&format!("{}\n", response.content))?;
                if let Some(summary) = summary(&response) {
                    eprintln!("[{summary}]");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!(
                "error: expert `{}` failed ({}): {}",
                expert.name(),
                e.kind.as_str(),
                e.message
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

/// What the answer carries besides its text, for stderr: confidence,
/// metadata and tokens; `None` when it carries nothing.
fn summary(response: &tessera_host::types::Response) -> Option<String> {
    let mut parts = Vec::new();
    if let Some(c) = response.confidence {
        parts.push(format!("confidence {c:.2}"));
    }
    if !response.metadata.is_empty() {
        let pairs: Vec<String> = response
            .metadata
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        parts.push(format!("metadata {}", pairs.join(", ")));
    }
    let usage = &response.usage;
    if usage.prompt_tokens + usage.completion_tokens > 0 {
        parts.push(format!(
            "{} prompt + {} generated tokens",
            usage.prompt_tokens, usage.completion_tokens
        ));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// Open a bundle; plugin sources are built first (unchanged sources are not
/// rebuilt, so this is quick when nothing changed). The compiler's output shows
/// with `-v`; otherwise a build that takes more than three seconds says so
/// once.
fn open(path: &Path, verbose: bool) -> anyhow::Result<Bundle> {
    if is_plugin_source(path) {
        let options = BuildOptions {
            quiet: !verbose,
            ..BuildOptions::default()
        };
        let built = std::thread::scope(|scope| {
            let (done, finished) = std::sync::mpsc::channel::<()>();
            if !verbose {
                scope.spawn(move || {
                    if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                        finished.recv_timeout(std::time::Duration::from_secs(3))
                    {
                        eprintln!(
                            "building {} (-v shows the compiler's output; a first Rust build compiles the standard library, a few minutes; a Python build takes ~10 s)",
                            path.display()
                        );
                    }
                });
            }
            let built = build_plugin(path, &options);
            drop(done);
            built
        });
        let out = built.with_context(|| format!("building {}", path.display()))?;
        for gap in &out.missing_grants {
            eprintln!("warning: {}: {gap}", path.join(MANIFEST_FILE).display());
        }
        return Ok(Bundle::open(&out.bundle_dir)?);
    }
    Ok(Bundle::open(path)?)
}
