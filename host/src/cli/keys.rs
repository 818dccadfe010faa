//! `tessera keys`: Ed25519 key pairs for signing bundles (and receipts).

use std::path::PathBuf;
use std::process::ExitCode;

use tessera_host::bundle::sign::{SigningKey, public_path};

/// Arguments of `tessera keys`.
#[derive(Debug, clap::Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Debug, clap::Subcommand)]
enum KeysCommand {
    /// Make a new Ed25519 key pair: FILE (private, OpenSSH format, readable
    /// by you only) and FILE.pub (the line to give to hosts that trust you).
    New {
        /// Where the private key goes [default: the user data dir's
        /// tessera/keys/tessera_ed25519].
        #[arg(long, short, value_name = "FILE")]
        out: Option<PathBuf>,

        /// A comment stored with the key, such as your name or e-mail.
        #[arg(long, default_value = "tessera signing key")]
        comment: String,
    },
}

/// Where a host keeps the key it signs receipts with, unless told.
pub fn default_host_key_path() -> Option<PathBuf> {
    dirs::data_dir().map(|d| d.join("tessera").join("keys").join("host_ed25519"))
}

/// The host's receipt-signing key: `path` when given (it must exist),
/// else the default one, made on first use.
pub fn host_key(path: Option<&std::path::Path>) -> anyhow::Result<SigningKey> {
    if let Some(path) = path {
        return Ok(SigningKey::read(path)?);
    }
    let Some(path) = default_host_key_path() else {
        anyhow::bail!(
            "no home directory to keep the host key in; give one with --host-key FILE (make it with `tessera keys new --out FILE`)"
        );
    };
    if path.exists() {
        return Ok(SigningKey::read(&path)?);
    }
    let key = SigningKey::generate("tessera host");
    match key.write(&path) {
        Ok(_) => {}
        // Another tessera made it first: use that one.
        Err(tessera_host::bundle::sign::KeyError::Exists(_)) => {
            return Ok(SigningKey::read(&path)?);
        }
        Err(e) => return Err(e.into()),
    }
    eprintln!(
        "made a host key for signing receipts: {} ({})",
        path.display(),
        key.signer().fingerprint
    );
    Ok(key)
}

/// Where `keys new` writes by default.
pub fn default_key_path() -> Option<PathBuf> {
    dirs::data_dir().map(|d| d.join("tessera").join("keys").join("tessera_ed25519"))
}

pub fn run(args: KeysArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        KeysCommand::New { out, comment } => {
            let Some(path) = out.or_else(default_key_path) else {
                anyhow::bail!("no home directory to keep keys in; choose a file with --out");
            };
            let key = SigningKey::generate(&comment);
            let public = key.write(&path)?;
            let signer = key.signer();
            super::print(&format!(
                "private key: {} (keep it secret)\npublic key:  {}\n  {}\nfingerprint: {}\n\nSign a bundle: tessera pack BUNDLE --sign {}\nTrust it on a host: tessera serve --trusted-keys {} (one .pub line per signer)\n",
                path.display(),
                public.display(),
                key.public_line(),
                signer.fingerprint,
                path.display(),
                public_path(&path).display(),
            ))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
