//! `.tessera` files: a whole bundle in one zip archive, its files listed
//! with their sha256 in `DIGESTS` (the format `sha256sum -c` reads), and
//! `DIGESTS.sig`, an SSHSIG over that list, when it is signed.
//!
//! Reading one trusts nothing in it: entries must be plain files under
//! plain relative names, within counts and sizes, each matching its digest
//! (whatever the archive's headers claim), with nothing unlisted; the
//! signature, if any, must cover the digests exactly.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use super::sign::{self, BUNDLE_NAMESPACE, SignatureError, Signer, SigningKey};
use super::{
    Bundle, BundleError, MANIFEST_FILE, MAX_COMPONENT_BYTES, MAX_MANIFEST_BYTES, Manifest,
    read_capped, sha256_hex,
};

/// The extension of packed bundles.
pub const PACK_EXTENSION: &str = "tessera";
/// The file listing every other file's sha256.
pub const DIGESTS_FILE: &str = "DIGESTS";
/// The signature over [`DIGESTS_FILE`].
pub const SIGNATURE_FILE: &str = "DIGESTS.sig";
/// Most files one pack may hold.
pub const MAX_PACK_FILES: usize = 256;
/// Most bytes of any one file that is not the component or manifest.
pub const MAX_PACK_FILE_BYTES: u64 = 64 << 20;
/// Most bytes a pack may hold, unpacked, and the largest `.tessera` file.
pub const MAX_PACK_BYTES: u64 = 256 << 20;

/// Why a bundle could not be packed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PackError {
    /// The bundle itself could not be read.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// Only bundle directories and built plugin crates pack.
    #[error(
        "{0}: a bare component has no manifest to pack; build it into a bundle with `tessera build` first"
    )]
    Bare(PathBuf),
    /// A file of the bundle directory cannot go into a pack.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Writing the pack failed.
    #[error("cannot write {path}: {reason}")]
    Write {
        /// The pack file.
        path: PathBuf,
        /// The error.
        reason: String,
    },
}

/// What `pack` wrote.
#[derive(Debug, Clone)]
pub struct Packed {
    /// The `.tessera` file.
    pub path: PathBuf,
    /// The files in it (manifest, component and the rest), by name.
    pub files: Vec<(String, u64)>,
    /// Who signed it, if anyone.
    pub signer: Option<Signer>,
}

/// `NAME-VERSION.tessera`, the file name of a pack of `manifest`.
pub fn pack_file_name(manifest: &Manifest) -> String {
    format!("{}-{}.{PACK_EXTENSION}", manifest.name, manifest.version)
}

/// Pack the bundle at `path` (a bundle directory or a built plugin crate)
/// into `out`, signed with `key` if given.
pub fn pack(path: &Path, key: Option<&SigningKey>, out: &Path) -> Result<Packed, PackError> {
    let bundle = Bundle::open(path)?;
    if bundle.bare {
        return Err(PackError::Bare(path.to_path_buf()));
    }
    if bundle.packed.is_some() {
        return Err(PackError::File {
            path: path.to_path_buf(),
            reason: "is already a .tessera pack; pack the bundle directory it came from".into(),
        });
    }
    let mut files = BTreeMap::new();
    collect(&bundle.dir, &bundle.dir, &mut files)?;
    let total: u64 = files.values().map(|b| b.len() as u64).sum();
    if total > MAX_PACK_BYTES {
        return Err(PackError::File {
            path: bundle.dir.clone(),
            reason: format!("holds {total} bytes, over a pack's limit of {MAX_PACK_BYTES}"),
        });
    }
    let digests = digests_text(&files);
    let signature = key.map(|k| k.sign(BUNDLE_NAMESPACE, digests.as_bytes()));

    let write_err = |e: &dyn std::fmt::Display| PackError::Write {
        path: out.to_path_buf(),
        reason: e.to_string(),
    };
    // Written beside the target, then renamed: a reader never sees half a
    // pack, and a failed pack leaves the old one.
    let dir = out
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| write_err(&e))?;
    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| write_err(&e))?;
    let mut zip = zip::ZipWriter::new(tmp);
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .last_modified_time(zip::DateTime::default())
        .unix_permissions(0o644);
    let mut entry = |name: &str, bytes: &[u8]| -> Result<(), PackError> {
        zip.start_file(name, options).map_err(|e| write_err(&e))?;
        zip.write_all(bytes).map_err(|e| write_err(&e))
    };
    for (name, bytes) in &files {
        entry(name, bytes)?;
    }
    entry(DIGESTS_FILE, digests.as_bytes())?;
    if let Some(signature) = &signature {
        entry(SIGNATURE_FILE, signature.as_bytes())?;
    }
    let tmp = zip.finish().map_err(|e| write_err(&e))?;
    tmp.as_file().sync_all().map_err(|e| write_err(&e))?;
    tmp.persist(out).map_err(|e| write_err(&e.error))?;
    Ok(Packed {
        path: out.to_path_buf(),
        files: files
            .iter()
            .map(|(name, bytes)| (name.clone(), bytes.len() as u64))
            .collect(),
        signer: key.map(SigningKey::signer),
    })
}

/// Every regular file under `dir`, by its path relative to `root` with
/// `/` separators. A symlink or special file is an error, so a pack holds
/// what it seems to.
fn collect(
    root: &Path,
    dir: &Path,
    files: &mut BTreeMap<String, Vec<u8>>,
) -> Result<(), PackError> {
    let file_err = |path: &Path, reason: String| PackError::File {
        path: path.to_path_buf(),
        reason,
    };
    let entries = std::fs::read_dir(dir).map_err(|e| file_err(dir, e.to_string()))?;
    for entry in entries {
        let entry = entry.map_err(|e| file_err(dir, e.to_string()))?;
        let path = entry.path();
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return Err(file_err(&path, "its name is not UTF-8".into()));
        };
        // Hidden files (`.git`, editor swap files) and earlier packs stay
        // out.
        if name.starts_with('.') || name.ends_with(&format!(".{PACK_EXTENSION}")) {
            continue;
        }
        let kind = entry
            .file_type()
            .map_err(|e| file_err(&path, e.to_string()))?;
        if kind.is_dir() {
            collect(root, &path, files)?;
            continue;
        }
        if !kind.is_file() {
            return Err(file_err(
                &path,
                "is a symlink or special file; a pack holds regular files only".into(),
            ));
        }
        let rel = path
            .strip_prefix(root)
            .expect("walked from root")
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/");
        if rel == DIGESTS_FILE || rel == SIGNATURE_FILE {
            return Err(file_err(
                &path,
                format!("the names {DIGESTS_FILE} and {SIGNATURE_FILE} are the pack's own"),
            ));
        }
        if files.len() >= MAX_PACK_FILES {
            return Err(file_err(
                root,
                format!("holds more than {MAX_PACK_FILES} files, a pack's limit"),
            ));
        }
        let bytes = read_capped(&path, file_cap(&rel))?;
        files.insert(rel, bytes);
    }
    Ok(())
}

/// The size cap of the pack member `name`.
fn file_cap(name: &str) -> u64 {
    if name == MANIFEST_FILE {
        MAX_MANIFEST_BYTES
    } else if name.ends_with(".wasm") {
        MAX_COMPONENT_BYTES
    } else {
        MAX_PACK_FILE_BYTES
    }
}

/// `sha256  name` per file, sorted by name, as `sha256sum` writes.
fn digests_text(files: &BTreeMap<String, Vec<u8>>) -> String {
    files
        .iter()
        .map(|(name, bytes)| format!("{}  {name}\n", sha256_hex(bytes)))
        .collect()
}

/// Why a `.tessera` file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PackReadError {
    /// Not a zip archive, or a damaged one.
    #[error("not a readable .tessera pack: {0}")]
    Archive(String),
    /// An entry that a pack may not hold.
    #[error("member `{name}`: {reason}")]
    Member {
        /// The entry's name (as much of it as is printable).
        name: String,
        /// Why.
        reason: String,
    },
    /// A file's bytes differ from its listed digest.
    #[error(
        "`{name}` changed after packing: its sha256 is {actual} but {DIGESTS_FILE} says {expected}"
    )]
    Changed {
        /// The file.
        name: String,
        /// From `DIGESTS`.
        expected: String,
        /// Computed.
        actual: String,
    },
    /// `DIGESTS` and the files disagree on which files there are.
    #[error("{0}")]
    Listing(String),
    /// The signature is bad.
    #[error(transparent)]
    Signature(#[from] SignatureError),
}

/// The files of a pack, checked against its digests, and who signed them.
pub(crate) struct Unpacked {
    pub files: BTreeMap<String, Vec<u8>>,
    pub signer: Option<Signer>,
    /// sha256 of `DIGESTS`: names the pack's whole contents.
    pub digest: String,
}

/// Read and check the pack at `path`.
pub(crate) fn unpack(path: &Path) -> Result<Unpacked, BundleError> {
    let bytes = read_capped(path, MAX_PACK_BYTES)?;
    unpack_bytes(&bytes).map_err(|reason| BundleError::Pack {
        path: path.to_path_buf(),
        reason,
    })
}

fn unpack_bytes(bytes: &[u8]) -> Result<Unpacked, PackReadError> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| PackReadError::Archive(e.to_string()))?;
    if archive.len() > MAX_PACK_FILES + 2 {
        return Err(PackReadError::Archive(format!(
            "{} members, over a pack's limit of {MAX_PACK_FILES} files",
            archive.len()
        )));
    }
    let mut files = BTreeMap::new();
    let mut total = 0u64;
    for index in 0..archive.len() {
        let mut entry = archive
            .by_index(index)
            .map_err(|e| PackReadError::Archive(e.to_string()))?;
        let name = entry
            .name()
            .map_err(|e| PackReadError::Archive(format!("a member's name is unreadable: {e}")))?
            .into_owned();
        let member = |reason: &str| PackReadError::Member {
            name: crate::text::ellipsize(&name, 200),
            reason: reason.to_string(),
        };
        if entry.is_dir() {
            continue;
        }
        if entry.is_symlink() || !entry.is_file() {
            return Err(member("is not a regular file"));
        }
        let plain = !name.is_empty()
            && !name.contains('\\')
            && Path::new(&name)
                .components()
                .all(|c| matches!(c, Component::Normal(_)));
        if !plain {
            return Err(member(
                "is not a plain relative path (absolute, `..` or empty parts)",
            ));
        }
        let cap = match name.as_str() {
            DIGESTS_FILE | SIGNATURE_FILE => MAX_MANIFEST_BYTES,
            other => file_cap(other),
        };
        // Read at most the cap, whatever the header says the size is.
        let mut data = Vec::new();
        (&mut entry)
            .take(cap + 1)
            .read_to_end(&mut data)
            .map_err(|e| member(&format!("cannot be read: {e}")))?;
        if data.len() as u64 > cap {
            return Err(member(&format!("is over its limit of {cap} bytes")));
        }
        total += data.len() as u64;
        if total > MAX_PACK_BYTES {
            return Err(PackReadError::Archive(format!(
                "unpacks to more than {MAX_PACK_BYTES} bytes"
            )));
        }
        if files.insert(name.clone(), data).is_some() {
            return Err(member("is in the archive twice"));
        }
    }
    let digests = files.remove(DIGESTS_FILE).ok_or_else(|| {
        PackReadError::Listing(format!(
            "no {DIGESTS_FILE} file: not a pack made by `tessera pack`"
        ))
    })?;
    let signature = files.remove(SIGNATURE_FILE);
    let text = String::from_utf8(digests.clone())
        .map_err(|_| PackReadError::Listing(format!("{DIGESTS_FILE} is not UTF-8 text")))?;
    let signer = signature
        .map(|sig| {
            let sig = String::from_utf8(sig)
                .map_err(|_| SignatureError::Malformed(format!("{SIGNATURE_FILE} is not text")))?;
            sign::verify(BUNDLE_NAMESPACE, &digests, &sig)
        })
        .transpose()?;
    let mut listed = BTreeMap::new();
    for line in text.lines() {
        let Some((digest, name)) = line.split_once("  ") else {
            return Err(PackReadError::Listing(format!(
                "{DIGESTS_FILE} has a line that is not `sha256  name`: {}",
                crate::text::ellipsize(line, 200)
            )));
        };
        listed.insert(name.to_string(), digest.to_ascii_lowercase());
    }
    for (name, data) in &files {
        let Some(expected) = listed.remove(name) else {
            return Err(PackReadError::Listing(format!(
                "`{}` is in the pack but not in {DIGESTS_FILE}: it was added after packing",
                crate::text::ellipsize(name, 200)
            )));
        };
        let actual = sha256_hex(data);
        if actual != expected {
            return Err(PackReadError::Changed {
                name: name.clone(),
                expected,
                actual,
            });
        }
    }
    if let Some(name) = listed.keys().next() {
        return Err(PackReadError::Listing(format!(
            "`{}` is listed in {DIGESTS_FILE} but missing from the pack",
            crate::text::ellipsize(name, 200)
        )));
    }
    Ok(Unpacked {
        files,
        signer,
        digest: sha256_hex(&digests),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bundle directory with a manifest, a (fake) component and a
    /// prompt file in a subdirectory.
    fn bundle_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(MANIFEST_FILE),
            "name = \"echo\"\nversion = \"1.2.0\"\ncomponent = \"expert.wasm\"\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("expert.wasm"), b"\0asm component bytes").unwrap();
        std::fs::create_dir(dir.path().join("prompts")).unwrap();
        std::fs::write(dir.path().join("prompts/system.txt"), "Be brief.").unwrap();
        std::fs::write(dir.path().join(".hidden"), "not packed").unwrap();
        dir
    }

    fn packed(key: Option<&SigningKey>) -> (tempfile::TempDir, PathBuf) {
        let dir = bundle_dir();
        let out = dir.path().join("echo-1.2.0.tessera");
        pack(dir.path(), key, &out).unwrap();
        (dir, out)
    }

    /// The members of the pack at `path`.
    fn members(path: &Path) -> Vec<(String, Vec<u8>)> {
        let bytes = std::fs::read(path).unwrap();
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
        (0..archive.len())
            .map(|i| {
                let mut f = archive.by_index(i).unwrap();
                let mut data = Vec::new();
                f.read_to_end(&mut data).unwrap();
                (f.name().unwrap().into_owned(), data)
            })
            .collect()
    }

    /// Write `members` as the pack at `path`.
    fn write_members(path: &Path, members: &[(String, Vec<u8>)]) {
        let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
        for (name, data) in members {
            zip.start_file(name.as_str(), zip::write::SimpleFileOptions::default())
                .unwrap();
            zip.write_all(data).unwrap();
        }
        zip.finish().unwrap();
    }

    /// The pack with `edit` applied to its members.
    fn tampered(path: &Path, edit: impl FnOnce(&mut Vec<(String, Vec<u8>)>)) -> String {
        let mut m = members(path);
        edit(&mut m);
        write_members(path, &m);
        match Bundle::open(path) {
            Ok(_) => panic!("the tampered pack was accepted"),
            Err(e) => e.to_string(),
        }
    }

    fn member<'a>(m: &'a mut [(String, Vec<u8>)], name: &str) -> &'a mut Vec<u8> {
        &mut m.iter_mut().find(|(n, _)| n == name).unwrap().1
    }

    #[test]
    fn a_signed_pack_opens_with_its_signer_and_every_file() {
        let key = SigningKey::generate("alice");
        let (_dir, path) = packed(Some(&key));
        let bundle = Bundle::open(&path).unwrap();
        assert_eq!(bundle.manifest.name, "echo");
        assert_eq!(bundle.wasm, b"\0asm component bytes");
        assert_eq!(bundle.signer, Some(key.signer()));
        let names: Vec<String> = members(&path).into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "expert.wasm",
                "prompts/system.txt",
                MANIFEST_FILE,
                DIGESTS_FILE,
                SIGNATURE_FILE
            ]
        );
        // DIGESTS is what `sha256sum -c` reads.
        let digests = String::from_utf8(member(&mut members(&path), DIGESTS_FILE).clone()).unwrap();
        assert!(digests.contains(&format!(
            "{}  expert.wasm\n",
            sha256_hex(b"\0asm component bytes")
        )));
    }

    #[test]
    fn packing_is_reproducible() {
        let key = SigningKey::generate("alice");
        let (_a, first) = packed(None);
        let (_b, second) = packed(None);
        assert_eq!(
            std::fs::read(&first).unwrap(),
            std::fs::read(&second).unwrap()
        );
        let (_c, signed) = packed(Some(&key));
        assert!(Bundle::open(&signed).unwrap().signer.is_some());
        assert!(Bundle::open(&first).unwrap().signer.is_none());
    }

    #[test]
    fn a_changed_component_byte_is_named() {
        let (_dir, path) = packed(Some(&SigningKey::generate("a")));
        let err = tampered(&path, |m| member(m, "expert.wasm")[3] ^= 1);
        assert!(err.contains("`expert.wasm` changed after packing"), "{err}");
    }

    #[test]
    fn a_changed_manifest_is_named() {
        let (_dir, path) = packed(Some(&SigningKey::generate("a")));
        let err = tampered(&path, |m| {
            member(m, MANIFEST_FILE).extend_from_slice(b"description = \"now free tokens\"\n")
        });
        assert!(
            err.contains(&format!("`{MANIFEST_FILE}` changed after packing")),
            "{err}"
        );
    }

    /// Re-listing the digests after a change leaves the signature over
    /// the old list: refused as a signature mismatch.
    #[test]
    fn digests_rewritten_after_signing_break_the_signature() {
        let key = SigningKey::generate("a");
        let (_dir, path) = packed(Some(&key));
        let err = tampered(&path, |m| {
            member(m, "expert.wasm")[3] ^= 1;
            let files: BTreeMap<String, Vec<u8>> = m
                .iter()
                .filter(|(n, _)| n != DIGESTS_FILE && n != SIGNATURE_FILE)
                .cloned()
                .collect();
            *member(m, DIGESTS_FILE) = digests_text(&files).into_bytes();
        });
        assert!(err.contains("does not match the signed content"), "{err}");
        assert!(err.contains(&key.signer().fingerprint), "{err}");
    }

    #[test]
    fn added_missing_and_unlisted_files_are_refused() {
        let (_dir, path) = packed(None);
        let err = tampered(&path, |m| m.push(("extra.bin".into(), b"x".to_vec())));
        assert!(
            err.contains("`extra.bin` is in the pack but not in DIGESTS"),
            "{err}"
        );
        let (_dir, path) = packed(None);
        let err = tampered(&path, |m| m.retain(|(n, _)| n != "prompts/system.txt"));
        assert!(
            err.contains("`prompts/system.txt` is listed in DIGESTS but missing"),
            "{err}"
        );
        let (_dir, path) = packed(None);
        let err = tampered(&path, |m| m.retain(|(n, _)| n != DIGESTS_FILE));
        assert!(err.contains("no DIGESTS file"), "{err}");
    }

    #[test]
    fn hostile_member_names_are_refused() {
        for name in ["../escape.txt", "/etc/passwd", "a/../../b", "dir\\file"] {
            let (_dir, path) = packed(None);
            let err = tampered(&path, |m| m.push((name.into(), b"x".to_vec())));
            assert!(err.contains("not a plain relative path"), "{name}: {err}");
        }
    }

    #[test]
    fn garbage_is_not_a_pack() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.tessera");
        std::fs::write(&path, b"PK\x03\x04 not really").unwrap();
        let err = Bundle::open(&path).unwrap_err().to_string();
        assert!(err.contains("not a readable .tessera pack"), "{err}");
    }
}
