//! `tessera verify`: check a receipt a host signed.

use std::path::PathBuf;
use std::process::ExitCode;

use tessera_host::audit::Receipt;
use tessera_host::bundle::read_capped;

/// The largest receipt file read.
pub const MAX_RECEIPT_BYTES: u64 = 1 << 20;

/// Arguments of `tessera verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// A receipt (JSON, as `tessera run --receipt` writes it or as
    /// `tessera.receipt` of an HTTP answer).
    #[arg(value_name = "RECEIPT")]
    receipt: PathBuf,

    /// Also require this signer: the host's public key file (`.pub`) or
    /// its `SHA256:` fingerprint.
    #[arg(long, value_name = "KEY")]
    host: Option<String>,
}

pub fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let bytes = read_capped(&args.receipt, MAX_RECEIPT_BYTES)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("{}: not UTF-8 text", args.receipt.display()))?;
    let receipt = Receipt::from_json(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.receipt.display()))?;
    let signer = match receipt.verify() {
        Ok(signer) => signer,
        Err(e) => {
            super::print(&format!("FAIL signature: {e}\n"))?;
            return Ok(ExitCode::FAILURE);
        }
    };
    if let Some(host) = &args.host {
        let expected = if host.starts_with("SHA256:") {
            host.clone()
        } else {
            let line =
                std::fs::read_to_string(host).map_err(|e| anyhow::anyhow!("--host {host}: {e}"))?;
            tessera_host::bundle::sign::fingerprint_of(&line)
                .map_err(|e| anyhow::anyhow!("--host {host}: not a public key: {e}"))?
        };
        if expected != signer {
            super::print(&format!(
                "FAIL signer: signed by {signer}, not by the expected host {expected}\n"
            ))?;
            return Ok(ExitCode::FAILURE);
        }
    }
    let b = &receipt.body;
    super::print(&format!(
        "OK signature: signed by host {signer}\n  expert {} {} (component sha256 {}{})\n  model {} (weights sha256 {})\n  {} generations, trace sha256 {}\n  request sha256 {}\n  response sha256 {}\n",
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
    ))?;
    Ok(ExitCode::SUCCESS)
}
