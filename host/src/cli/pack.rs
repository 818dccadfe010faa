//! `tessera pack`: a bundle into one `.tessera` file, optionally signed.

use std::path::PathBuf;
use std::process::ExitCode;

use tessera_host::bundle::Bundle;
use tessera_host::bundle::pack::{pack, pack_file_name};
use tessera_host::bundle::sign::SigningKey;

/// Arguments of `tessera pack`.
#[derive(Debug, clap::Args)]
pub struct PackArgs {
    /// A bundle directory or a built plugin crate.
    #[arg(value_name = "BUNDLE")]
    path: PathBuf,

    /// Sign it with this private key (made by `tessera keys new`).
    #[arg(long, value_name = "KEY")]
    sign: Option<PathBuf>,

    /// The file to write [default: ./NAME-VERSION.tessera].
    #[arg(long, short, value_name = "FILE")]
    out: Option<PathBuf>,
}

pub fn run(args: PackArgs) -> anyhow::Result<ExitCode> {
    let key = args.sign.as_deref().map(SigningKey::read).transpose()?;
    let out = match args.out {
        Some(out) => out,
        None => PathBuf::from(pack_file_name(&Bundle::open(&args.path)?.manifest)),
    };
    let packed = pack(&args.path, key.as_ref(), &out)?;
    let bytes = std::fs::metadata(&packed.path).map_or(0, |m| m.len());
    let mut text = format!("wrote {} ({bytes} bytes):\n", packed.path.display());
    for (name, size) in &packed.files {
        text.push_str(&format!("  {name} ({size} bytes)\n"));
    }
    match &packed.signer {
        Some(signer) => text.push_str(&format!("signed by {signer}\n")),
        None => text.push_str("unsigned (sign with --sign KEY; hosts started with --trusted-keys refuse unsigned packs)\n"),
    }
    super::print(&text)?;
    Ok(ExitCode::SUCCESS)
}
