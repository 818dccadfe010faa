//! `tessera verify`: check a receipt a host signed, and with its record,
//! replay the invocation, recompute it, or spot-check its logprobs.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use tessera_host::audit::replay::{Mode, RerunReport};
use tessera_host::audit::spotcheck::DEFAULT_LOGPROB_TOLERANCE;
use tessera_host::audit::verdict::{Checks, verify_record};
use tessera_host::audit::{Receipt, Record};
use tessera_host::bundle::Bundle;
use tessera_host::ensemble::Ensemble;
use tessera_host::inference::{ModelEngine, NoModel};
use tessera_host::sandbox::{HostPolicy, Sandbox};

/// The largest receipt or record file read.
pub const MAX_RECEIPT_BYTES: u64 = 64 << 20;

/// Arguments of `tessera verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// A receipt, or a record (the receipt with the request, answer and
    /// trace): `tessera run --receipt` / `--record`, `tessera audit show ID
    /// --json`, or an HTTP answer asked with `x-tessera-receipt` /
    /// `x-tessera-record` (the whole body, or its `tessera.receipt` or
    /// `tessera.record`).
    #[arg(value_name = "RECEIPT_OR_RECORD")]
    file: PathBuf,

    /// Also require this signer: the host's public key file (`.pub`) or
    /// its `SHA256:` fingerprint.
    #[arg(long, value_name = "KEY")]
    host: Option<String>,

    /// Re-run the recorded component with every host call answered from
    /// the record: same calls, arguments, fuel and answer, or the first
    /// difference. Needs a record and --bundle; no model.
    #[arg(long)]
    replay: bool,

    /// Re-run it with the real model and the recorded seeds: the same text
    /// on the same device and weights, or the first call that differs.
    #[arg(long)]
    recompute: bool,

    /// Recompute, with the model, the log-probability of every token the
    /// recorded model calls returned and compare them with the recorded
    /// ones (a swapped model or an edited text fails).
    #[arg(long)]
    logprobs: bool,

    /// Largest difference allowed per token by --logprobs, in nats.
    #[arg(long, value_name = "NATS", default_value_t = DEFAULT_LOGPROB_TOLERANCE)]
    tolerance: f32,

    /// Bundles (directories or .tessera packs) to find the recorded
    /// component in, and the experts it called.
    #[arg(long = "bundle", value_name = "BUNDLE")]
    bundles: Vec<PathBuf>,

    /// Print the verdicts as JSON.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    engine: super::engine::EngineArgs,
}

/// What the file held.
enum Input {
    Receipt(Box<Receipt>),
    Record(Box<Record>),
}

fn parse(text: &str) -> Result<Input, String> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    // An HTTP answer: its `tessera` field.
    let value = match value.pointer("/tessera") {
        Some(t) if t.get("record").is_some() => t["record"].clone(),
        Some(t) if t.get("receipt").is_some() => t["receipt"].clone(),
        Some(_) => {
            return Err(
                "an HTTP answer without `tessera.receipt` or `tessera.record`: ask with `x-tessera-receipt: true` or `x-tessera-record: true`".into(),
            );
        }
        None => value,
    };
    if value.get("trace").is_some() {
        let record: Record = serde_json::from_value(value).map_err(|e| format!("record: {e}"))?;
        Ok(Input::Record(Box::new(record)))
    } else {
        let receipt: Receipt =
            serde_json::from_value(value).map_err(|e| format!("receipt: {e}"))?;
        Ok(Input::Receipt(Box::new(receipt)))
    }
}

pub async fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let file = &args.file;
    let len = std::fs::metadata(file)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?
        .len();
    if len > MAX_RECEIPT_BYTES {
        anyhow::bail!(
            "{}: {len} bytes, more than the {MAX_RECEIPT_BYTES} bytes a receipt or record may have",
            file.display()
        );
    }
    let bytes =
        std::fs::read(file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("{}: not UTF-8 text", args.file.display()))?;
    let input = parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?;
    let mut out = String::new();
    let mut pass = true;
    let mut json = serde_json::Map::new();

    // The signature, and for a record that its parts are the receipt's.
    let (receipt, record) = match &input {
        Input::Receipt(r) => (&**r, None),
        Input::Record(rec) => match &rec.receipt {
            Some(r) => (r, Some(&**rec)),
            None => anyhow::bail!(
                "{}: the record has no receipt (its host had no key, or the expert failed); nothing vouches for it",
                args.file.display()
            ),
        },
    };
    let signed = match record {
        Some(rec) => rec.check().map_err(|e| e.to_string()),
        None => receipt.verify().map_err(|e| e.to_string()),
    };
    let signer = match signed {
        Ok(signer) => signer,
        Err(e) => {
            writeln!(out, "FAIL signature: {e}")?;
            return finish(&args, out, json, false);
        }
    };
    if let Some(host) = &args.host {
        let expected = expected_host(host)?;
        if expected != signer {
            writeln!(
                out,
                "FAIL signer: signed by {signer}, not by the expected host {expected}"
            )?;
            return finish(&args, out, json, false);
        }
    }
    let b = &receipt.body;
    writeln!(
        out,
        "OK signature: signed by host {signer}{}\n  expert {} {} (component sha256 {}{})\n  model {} (weights sha256 {})\n  {} generations, trace sha256 {}\n  request sha256 {}\n  response sha256 {}",
        if record.is_some() {
            "; the record's request, answer and trace are the ones it vouches for"
        } else {
            ""
        },
        b.expert.name,
        b.expert.version,
        b.expert.component_sha256,
        b.expert
            .signer
            .as_ref()
            .map(|s| format!(", bundle signed by {s}"))
            .unwrap_or_else(|| ", bundle unsigned".into()),
        b.model.name,
        b.model.weights_sha256.as_deref().unwrap_or("unknown"),
        b.sampling.len(),
        b.trace_sha256,
        b.request_sha256,
        b.response_sha256,
    )?;
    json.insert("signer".into(), signer.clone().into());

    if !(args.replay || args.recompute || args.logprobs) {
        return finish(&args, out, json, true);
    }
    let Some(record) = record else {
        anyhow::bail!(
            "{}: a receipt holds digests only; --replay, --recompute and --logprobs need the invocation's record: ask the host with `x-tessera-record: true`, run with `tessera run --record FILE`, or `tessera audit show ID --json` where it ran",
            args.file.display()
        );
    };
    if args.bundles.is_empty() {
        anyhow::bail!(
            "give the bundle the miner served with --bundle (a directory or .tessera pack) to find component sha256 {}",
            b.expert.component_sha256
        );
    }
    let model: Option<Arc<dyn ModelEngine>> = if args.recompute || args.logprobs {
        let engine = args.engine.load()?;
        if let (Some(want), Some(have)) = (&b.model.weights_sha256, engine.weights_sha256())
            && want != have
        {
            writeln!(
                out,
                "note: the model here (weights sha256 {have}) is not the one the receipt names ({want}): expect differences"
            )?;
        }
        Some(engine)
    } else {
        None
    };
    let engine: Arc<dyn ModelEngine> = match &model {
        Some(m) => m.clone(),
        None => Arc::new(NoModel),
    };
    let sandbox = Sandbox::new(HostPolicy::default(), None)?;
    let ensemble = Ensemble::new(sandbox, engine);
    for path in &args.bundles {
        let bundle = Bundle::open(path)?;
        ensemble
            .add(bundle)
            .await
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }

    let checks = Checks {
        replay: args.replay,
        recompute: args.recompute,
        logprobs: args.logprobs,
        tolerance: args.tolerance,
    };
    let verdict = verify_record(&ensemble, record, model, checks).await;
    pass &= verdict.pass;
    for e in &verdict.errors {
        writeln!(out, "FAIL {e}")?;
    }
    if let (true, Some(report)) = (args.replay, &verdict.replay) {
        describe(&mut out, report)?;
    }
    if let Some(report) = &verdict.recompute {
        describe(&mut out, report)?;
    }
    if let Some(check) = &verdict.logprobs {
        let tokens: usize = check.calls.iter().map(|c| c.tokens).sum();
        let worst = check
            .calls
            .iter()
            .map(|c| c.max_abs_diff)
            .fold(0.0f32, f32::max);
        writeln!(
            out,
            "{} logprobs: {} generations, {tokens} tokens, largest difference {worst:.5} nats (tolerance {})",
            if check.pass() { "OK" } else { "FAIL" },
            check.calls.len(),
            check.tolerance
        )?;
        for c in &check.calls {
            writeln!(
                out,
                "  call {:>3}: {} tokens, recorded {:.3}, recomputed {:.3}, max |Δ| {:.5}{}",
                c.call,
                c.tokens,
                c.recorded_logprob,
                c.recomputed_logprob,
                c.max_abs_diff,
                c.reason
                    .as_ref()
                    .map(|r| format!(" — FAIL: {r}"))
                    .unwrap_or_default()
            )?;
        }
        if let (false, Some(replayed)) = (args.replay, &verdict.replay)
            && !replayed.matches()
        {
            writeln!(
                out,
                "  (the replay that gave back the prompts diverged: {}; run --replay for details)",
                replayed.divergence.as_ref().map_or("", |d| d.what.as_str())
            )?;
        }
    }
    json.insert("verdict".into(), serde_json::to_value(&verdict)?);
    finish(&args, out, json, pass)
}

fn describe(out: &mut String, r: &RerunReport) -> std::fmt::Result {
    let mode = match r.mode {
        Mode::Replay => "replay",
        Mode::Recompute => "recompute",
    };
    match &r.divergence {
        None => writeln!(
            out,
            "OK {mode}: {} host calls with the same arguments and results, {} fuel, the same answer",
            r.rerun_calls, r.rerun_fuel
        ),
        Some(d) => writeln!(
            out,
            "FAIL {mode}: {}{}{}\n  ({} host calls and {} fuel in the record; {} and {} now)",
            if r.component_matches {
                ""
            } else {
                "(a component other than the recorded one, of the same expert) "
            },
            d.call
                .map(|c| format!("at host call {c}: "))
                .unwrap_or_default(),
            d.what,
            r.recorded_calls,
            r.recorded_fuel,
            r.rerun_calls,
            r.rerun_fuel
        ),
    }
}

fn expected_host(host: &str) -> anyhow::Result<String> {
    if host.starts_with("SHA256:") {
        return Ok(host.to_string());
    }
    let line = std::fs::read_to_string(host).map_err(|e| anyhow::anyhow!("--host {host}: {e}"))?;
    tessera_host::bundle::sign::fingerprint_of(&line)
        .map_err(|e| anyhow::anyhow!("--host {host}: not a public key: {e}"))
}

fn finish(
    args: &VerifyArgs,
    out: String,
    mut json: serde_json::Map<String, serde_json::Value>,
    pass: bool,
) -> anyhow::Result<ExitCode> {
    if args.json {
        json.insert("pass".into(), pass.into());
        if !pass {
            json.insert("report".into(), out.into());
        }
        super::print(&format!("{}\n", serde_json::Value::Object(json)))?;
    } else {
        super::print(&out)?;
    }
    Ok(if pass {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
