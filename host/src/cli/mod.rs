//! The `tessera` subcommands. Each returns an exit code; errors print once,
//! in `main`.

mod adapt;
mod audit;
mod build;
mod embed;
mod engine;
mod eval;
mod generate;
mod inspect;
mod keys;
mod models;
mod new;
mod pack;
mod records;
mod run;
mod serve;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Tessera: a host for a super-ensemble of sandboxed WebAssembly experts.
#[derive(Debug, Parser)]
#[command(name = "tessera", version, about, long_about = None)]
pub struct Args {
    #[command(subcommand)]
    command: Command,

    /// Where compiled components are cached [default: $TESSERA_CACHE_DIR or the user cache dir].
    #[arg(long, global = true, value_name = "DIR")]
    cache_dir: Option<PathBuf>,

    /// Do not read or write the compile cache.
    #[arg(long, global = true)]
    no_cache: bool,

    /// Log more (repeat for more); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    /// Write log lines as JSON objects (one per line), for log collectors.
    #[arg(long, global = true)]
    log_json: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train a LoRA adapter (a fine-tune) of the base model on a JSON-lines dataset.
    Adapt(adapt::AdaptArgs),
    /// Audit a bundle without running it, or read the audit store (list, show, export, check).
    Audit(audit::AuditArgs),
    /// Build a Rust plugin crate into a component and a bundle.
    Build(build::BuildArgs),
    /// Make a new plugin crate (an expert or a router) that builds, runs and passes its test.
    New(new::NewArgs),
    /// Run an expert on one prompt and print its answer.
    Run(run::RunArgs),
    /// Describe a bundle or component: world, imports, exports, manifest, sha256, signer.
    Inspect(inspect::InspectArgs),
    /// Score models on a labelled set: accuracy, errors, latency and tokens per model and category.
    Eval(eval::EvalArgs),
    /// Make Ed25519 key pairs for signing bundles.
    Keys(keys::KeysArgs),
    /// Pack a bundle into one .tessera file, optionally signed.
    Pack(pack::PackArgs),
    /// Fetch and list the model files.
    Models(models::ModelsArgs),
    /// Generate text with the model engine alone (no experts).
    Generate(generate::GenerateArgs),
    /// Embed texts with the embedding model and compare them.
    Embed(embed::EmbedArgs),
    /// Serve experts and models over an OpenAI-compatible HTTP API.
    Serve(Box<serve::ServeArgs>),
    /// Check a receipt's signature and say what it vouches for.
    Verify(verify::VerifyArgs),
}

/// Run the parsed command.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    // A server's request log is its main output; other commands stay quiet.
    let base = usize::from(matches!(args.command, Command::Serve(_)));
    init_logging(args.verbose as usize + base, args.log_json);
    let cache_dir = if args.no_cache {
        None
    } else {
        let dir = args
            .cache_dir
            .or_else(tessera_host::sandbox::CompileCache::default_dir);
        if dir.is_none() {
            eprintln!(
                "warning: no home directory, so compiled components are not cached; set $TESSERA_CACHE_DIR (or --cache-dir) to a directory of your own"
            );
        }
        dir
    };
    match args.command {
        Command::Adapt(a) => adapt::run(a),
        Command::Audit(a) => audit::run(a),
        Command::Build(a) => build::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Eval(a) => tokio::runtime::Runtime::new()?.block_on(eval::run(a)),
        Command::Keys(a) => keys::run(a),
        Command::New(a) => new::run(a),
        Command::Pack(a) => pack::run(a),
        Command::Models(a) => models::run(a),
        Command::Run(a) => {
            tokio::runtime::Runtime::new()?.block_on(run::run(a, cache_dir, args.verbose > 0))
        }
        Command::Generate(a) => tokio::runtime::Runtime::new()?.block_on(generate::run(a)),
        Command::Embed(a) => tokio::runtime::Runtime::new()?.block_on(embed::run(a)),
        Command::Serve(a) => tokio::runtime::Runtime::new()?.block_on(serve::run(*a, cache_dir)),
        Command::Verify(a) => tokio::runtime::Runtime::new()?.block_on(verify::run(a)),
    }
}

/// Write `text` to stdout. A closed pipe (`tessera inspect x | head`) is
/// not an error: the reader has what it wanted.
pub(crate) fn print(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

fn init_logging(verbose: usize, json: bool) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
