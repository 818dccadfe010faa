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
