//! Ed25519 keys in OpenSSH's file formats, and SSHSIG signatures.
//!
//! A signing key is an unencrypted OpenSSH private key file (`ssh-keygen
//! -t ed25519` makes the same kind) with its public key beside it in
//! `FILE.pub`. Signatures are SSHSIG (`-----BEGIN SSH SIGNATURE-----`),
//! which carry the signer's public key and a namespace, so that a bundle
//! signature can never pass for a receipt's; `ssh-keygen -Y verify` checks
//! them as well as Tessera does. A trusted-keys file lists one OpenSSH
//! public key per line, as `authorized_keys` does.

use std::path::{Path, PathBuf};

use serde::Serialize;
use ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey, PublicKey, SshSig};

/// The SSHSIG namespace of bundle signatures.
pub const BUNDLE_NAMESPACE: &str = "tessera-bundle";
/// The largest key or trusted-keys file read.
pub const MAX_KEY_FILE_BYTES: u64 = 1 << 20;

/// Why a key could not be made, read or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The file could not be read or written.
    #[error("{path}: {reason}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The file is not a key Tessera can use.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// `keys new` would overwrite a key.
    #[error("{0}: a file is already there; choose another --out, or remove it first")]
    Exists(PathBuf),
}

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// Not an SSH signature, or not Ed25519.
    #[error("the signature is not a readable Ed25519 SSH signature: {0}")]
    Malformed(String),
    /// Well formed, but it does not sign these bytes (they changed after
    /// signing) or was made for another purpose.
    #[error(
        "the signature by {signer} does not match the signed content: it changed after signing"
    )]
    Mismatch {
        /// The key the signature names.
        signer: String,
    },
}

/// Why a host that requires signatures refused a bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// No signature (a directory bundle, or an unsigned pack).
    #[error(
        "it is not signed, and this host takes only bundles signed by a key in {keys}: pack and sign it with `tessera pack --sign KEY` (directory bundles are never signed)"
    )]
    Unsigned {
        /// The trusted-keys file.
        keys: PathBuf,
    },
    /// Signed, by a key the host does not trust.
    #[error("it is signed by {signer}, a key that is not in {keys}")]
    UnknownKey {
        /// The signer's fingerprint.
        signer: String,
        /// The trusted-keys file.
        keys: PathBuf,
    },
}

/// Who signed: an Ed25519 public key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Signer {
    /// `SHA256:…`, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    /// The key in OpenSSH's one-line form, without its comment.
    pub public_key: String,
}

impl Signer {
    fn of(key: &PublicKey) -> Signer {
        let mut bare = key.clone();
        bare.set_comment("");
        Signer {
            fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
            public_key: bare
                .to_openssh()
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
        }
    }
}

impl std::fmt::Display for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.fingerprint)
    }
}

/// An Ed25519 private key that signs bundles or receipts.
pub struct SigningKey {
    key: PrivateKey,
    /// The same key, expanded once: ssh-key re-derives and re-checks the
    /// public key on every signature, three times the cost of signing.
    expanded: ed25519_dalek::SigningKey,
    /// The public key's OpenSSH line, made once.
    public_line: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("signer", &self.signer().fingerprint)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A new random key; `comment` goes into its files.
    pub fn generate(comment: &str) -> SigningKey {
        let mut rng = ssh_key::rand_core::OsRng;
        let mut key = PrivateKey::random(&mut rng, Algorithm::Ed25519)
            .expect("Ed25519 keys are always supported");
        key.set_comment(comment);
        SigningKey::from_private(key).expect("a fresh Ed25519 key is well formed")
    }

    fn from_private(key: PrivateKey) -> Result<SigningKey, String> {
        let pair = key
            .key_data()
            .ed25519()
            .ok_or_else(|| format!("a {} key, not Ed25519", key.algorithm()))?;
        let expanded = ed25519_dalek::SigningKey::try_from(pair).map_err(|e| e.to_string())?;
        let public_line = key.public_key().to_openssh().map_err(|e| e.to_string())?;
        Ok(SigningKey {
            key,
            expanded,
            public_line,
        })
    }

    /// Read an OpenSSH private key file.
    pub fn read(path: &Path) -> Result<SigningKey, KeyError> {
        let text = read_text(path)?;
        let invalid = |reason: String| KeyError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let key = PrivateKey::from_openssh(text.as_bytes()).map_err(|e| {
            invalid(format!(
                "not an OpenSSH private key ({e}); make one with `tessera keys new`"
            ))
        })?;
        if key.is_encrypted() {
            return Err(invalid(
                "the key is encrypted with a passphrase, which tessera cannot ask for; use an unencrypted key (`tessera keys new`)".into(),
            ));
        }
        if key.algorithm() != Algorithm::Ed25519 {
            return Err(invalid(format!(
                "a {} key; tessera signs with Ed25519 keys only (`tessera keys new`)",
                key.algorithm()
            )));
        }
        SigningKey::from_private(key).map_err(|reason| invalid(format!("a damaged key: {reason}")))
    }

    /// Write the key to `path` (readable by this user only) and its public
    /// key to `path.pub`. Refuses to overwrite either.
    pub fn write(&self, path: &Path) -> Result<PathBuf, KeyError> {
        let public = public_path(path);
        for p in [path, public.as_path()] {
            if p.exists() {
                return Err(KeyError::Exists(p.to_path_buf()));
            }
        }
        let io = |p: &Path, e: &dyn std::fmt::Display| KeyError::Io {
            path: p.to_path_buf(),
            reason: e.to_string(),
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::paths::private_dir(dir).map_err(|e| io(dir, &e))?;
        }
        let pem = self
            .key
            .to_openssh(LineEnding::LF)
            .map_err(|e| io(path, &e))?;
        write_new(path, pem.as_bytes(), 0o600).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => KeyError::Exists(path.to_path_buf()),
            _ => io(path, &e),
        })?;
        let line = self
            .key
            .public_key()
            .to_openssh()
            .map_err(|e| io(&public, &e))?;
        write_new(&public, format!("{line}\n").as_bytes(), 0o644).map_err(|e| io(&public, &e))?;
        Ok(public)
    }

    /// Who this key signs as.
    pub fn signer(&self) -> Signer {
        Signer::of(self.key.public_key())
    }

    /// The public key in OpenSSH's one-line form, with its comment.
    pub fn public_line(&self) -> String {
        self.public_line.clone()
    }

    /// Sign `message` for `namespace`: an armored SSHSIG, the same bytes
    /// ssh-key (and `ssh-keygen -Y sign`) would make.
    pub fn sign(&self, namespace: &str, message: &[u8]) -> String {
        use ed25519_dalek::Signer as _;
        let signed = SshSig::signed_data(namespace, HashAlg::Sha512, message)
            .expect("the namespace is not empty");
        let raw = self.expanded.sign(&signed);
        let signature = ssh_key::Signature::new(Algorithm::Ed25519, raw.to_bytes().to_vec())
            .expect("64 bytes are an Ed25519 signature");
        SshSig::new(
            self.key.public_key().key_data().clone(),
            namespace,
            HashAlg::Sha512,
            signature,
        )
        .and_then(|sig| sig.to_pem(LineEnding::LF))
        .expect("a well-formed SSHSIG encodes")
    }
}

/// Check the armored SSHSIG `signature` over `message` for `namespace`;
/// who signed it.
pub fn verify(namespace: &str, message: &[u8], signature: &str) -> Result<Signer, SignatureError> {
    let sig =
        SshSig::from_pem(signature.trim()).map_err(|e| SignatureError::Malformed(e.to_string()))?;
    if sig.algorithm() != Algorithm::Ed25519 {
        return Err(SignatureError::Malformed(format!(
            "a {} signature; only Ed25519 is accepted",
            sig.algorithm()
        )));
    }
    let key = PublicKey::from(sig.public_key().clone());
    let signer = Signer::of(&key);
    key.verify(namespace, message, &sig)
        .map_err(|_| SignatureError::Mismatch {
            signer: signer.fingerprint.clone(),
        })?;
    Ok(signer)
}

/// The public keys whose signatures a host accepts.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    /// The file they came from, for messages.
    pub path: PathBuf,
    keys: Vec<Signer>,
}

impl TrustedKeys {
    /// Read one OpenSSH public key per line; blank lines and `#` comments
    /// are skipped. A line that is not an Ed25519 key is an error naming
    /// the line.
    pub fn read(path: &Path) -> Result<TrustedKeys, KeyError> {
        let text = read_text(path)?;
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let invalid = |reason: String| KeyError::Invalid {
                path: path.to_path_buf(),
                reason: format!("line {}: {reason}", n + 1),
            };
            let key = PublicKey::from_openssh(line).map_err(|e| {
                invalid(format!(
                    "not an OpenSSH public key ({e}); put the contents of a signer's .pub file on each line"
                ))
            })?;
            if key.algorithm() != Algorithm::Ed25519 {
                return Err(invalid(format!(
                    "a {} key; only Ed25519 keys sign bundles",
                    key.algorithm()
                )));
            }
            keys.push(Signer::of(&key));
        }
        if keys.is_empty() {
            return Err(KeyError::Invalid {
                path: path.to_path_buf(),
                reason: "no keys in the file: nothing could ever be trusted; add the signers' .pub lines".into(),
            });
        }
        Ok(TrustedKeys {
            path: path.to_path_buf(),
            keys,
        })
    }

    /// Accept a bundle signed by `signer` (or refuse it, and say why).
    pub fn check(&self, signer: Option<&Signer>) -> Result<(), TrustError> {
        match signer {
            None => Err(TrustError::Unsigned {
                keys: self.path.clone(),
            }),
            Some(s) if !self.trusts(s) => Err(TrustError::UnknownKey {
                signer: s.fingerprint.clone(),
                keys: self.path.clone(),
            }),
            Some(_) => Ok(()),
        }
    }

    /// Whether `signer` is trusted.
    pub fn trusts(&self, signer: &Signer) -> bool {
        self.keys.iter().any(|k| k.public_key == signer.public_key)
    }

    /// How many keys are trusted.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is trusted (never, for a file that was read).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The fingerprint of an OpenSSH one-line public key.
pub fn fingerprint_of(public_key: &str) -> Result<String, String> {
    PublicKey::from_openssh(public_key.trim())
        .map(|k| k.fingerprint(HashAlg::Sha256).to_string())
        .map_err(|e| e.to_string())
}

/// `path` with `.pub` appended.
pub fn public_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

fn read_text(path: &Path) -> Result<String, KeyError> {
    let bytes = super::read_capped(path, MAX_KEY_FILE_BYTES).map_err(|e| KeyError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    String::from_utf8(bytes).map_err(|_| KeyError::Invalid {
        path: path.to_path_buf(),
        reason: "not UTF-8 text".into(),
    })
}

/// Create `path` with `mode` and `bytes`, whole or not at all, never
/// replacing a file: written beside it, then linked into place. Two
/// processes making the same key at once get one key, and the loser an
/// `AlreadyExists` error.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    #[cfg(not(unix))]
    let _ = mode;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist_noclobber(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_and_names_its_signer() {
        let key = SigningKey::generate("test");
        let sig = key.sign(BUNDLE_NAMESPACE, b"digests");
        assert!(sig.starts_with("-----BEGIN SSH SIGNATURE-----"), "{sig}");
        assert_eq!(verify(BUNDLE_NAMESPACE, b"digests", &sig), Ok(key.signer()));
        assert!(key.signer().fingerprint.starts_with("SHA256:"));
    }

    /// The fast path makes the same SSHSIG as ssh-key's own signing
    /// (Ed25519 is deterministic), so `ssh-keygen -Y verify` accepts it.
    #[test]
    fn signatures_match_ssh_keys_own() {
        let key = SigningKey::generate("test");
        let reference = key
            .key
            .sign(BUNDLE_NAMESPACE, HashAlg::Sha512, b"digests")
            .unwrap()
            .to_pem(LineEnding::LF)
            .unwrap();
        assert_eq!(key.sign(BUNDLE_NAMESPACE, b"digests"), reference);
    }

    #[test]
    fn changed_bytes_another_namespace_and_garbage_are_refused() {
        let key = SigningKey::generate("test");
        let sig = key.sign(BUNDLE_NAMESPACE, b"digests");
        let mismatch = SignatureError::Mismatch {
            signer: key.signer().fingerprint,
        };
        assert_eq!(
            verify(BUNDLE_NAMESPACE, b"digestz", &sig),
            Err(mismatch.clone())
        );
        assert_eq!(verify("tessera-receipt", b"digests", &sig), Err(mismatch));
        assert!(matches!(
            verify(BUNDLE_NAMESPACE, b"digests", "not a signature"),
            Err(SignatureError::Malformed(_))
        ));
    }

    #[test]
    fn keys_round_trip_through_their_files_and_are_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/signing");
        let key = SigningKey::generate("alice@example");
        let public = key.write(&path).unwrap();
        assert_eq!(public, dir.path().join("keys/signing.pub"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let read = SigningKey::read(&path).unwrap();
        assert_eq!(read.signer(), key.signer());
        let err = key.write(&path).unwrap_err();
        assert!(err.to_string().contains("already there"), "{err}");

        let trusted = TrustedKeys::read(&public).unwrap();
        assert!(trusted.trusts(&key.signer()));
        assert!(!trusted.trusts(&SigningKey::generate("mallory").signer()));
    }

    #[test]
    fn a_bad_trusted_keys_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trusted");
        let good = SigningKey::generate("ok").public_line();
        std::fs::write(&path, format!("# signers\n{good}\nssh-ed25519 garbage\n")).unwrap();
        let err = TrustedKeys::read(&path).unwrap_err().to_string();
        assert!(err.contains("line 3"), "{err}");
        std::fs::write(&path, "# nobody\n").unwrap();
        let err = TrustedKeys::read(&path).unwrap_err().to_string();
        assert!(err.contains("no keys"), "{err}");
    }
}
