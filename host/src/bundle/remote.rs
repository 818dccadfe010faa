//! `.tessera` packs fetched from URLs pinned by sha256: every host of a
//! fleet serves the same bytes, or refuses to start.
//!
//! A pin is written `URL#sha256=HEX` (the fragment is never sent to the
//! server). Fetched packs are kept under `<cache>/bundles/<HEX>.tessera`;
//! a cached file is hashed again before each use, since caches are not
//! trusted, and fetched again when it does not match.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use super::pack::{MAX_PACK_BYTES, PACK_EXTENSION};

/// Time one fetch may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(300);

/// A pack's URL and the sha256 its bytes must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedUrl {
    /// Where to fetch it (http or https).
    pub url: String,
    /// 64 lowercase hex digits.
    pub sha256: String,
}

/// Why a pinned pack cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The pin is not `URL#sha256=HEX`.
    #[error(
        "`{0}` is not a pinned bundle URL: write URL#sha256=HEX (64 hex digits), for example https://example.com/calculator-0.1.0.tessera#sha256=9f86d081…"
    )]
    BadPin(String),
    /// The fetch failed.
    #[error("{url}: {reason}")]
    Fetch {
        /// The URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The bytes are not the pinned ones.
    #[error(
        "{url}: its sha256 is {actual}, but the pin says {expected}: refusing it (the file changed, or the pin is wrong)"
    )]
    Mismatch {
        /// The URL.
        url: String,
        /// The pin.
        expected: String,
        /// What the bytes hash to.
        actual: String,
    },
    /// The cache cannot be written.
    #[error("cannot keep the fetched bundle in {}: {reason}", dir.display())]
    Cache {
        /// The cache directory.
        dir: PathBuf,
        /// Why.
        reason: std::io::Error,
    },
}

impl std::str::FromStr for PinnedUrl {
    type Err = RemoteError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || RemoteError::BadPin(s.chars().take(300).collect());
        let (url, pin) = s.rsplit_once("#sha256=").ok_or_else(bad)?;
        let sha256 = pin.to_ascii_lowercase();
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let parsed = reqwest::Url::parse(url).map_err(|_| bad())?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(bad());
        }
        Ok(PinnedUrl {
            url: url.to_string(),
            sha256,
        })
    }
}

/// sha256 of the file at `path`, hex.
fn file_sha256(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// The pack `pin` names, from `cache` when it is there with the pinned
/// bytes, else fetched (at most [`MAX_PACK_BYTES`]), checked against the
/// pin, and kept in `cache`. The path of the checked file.
pub async fn fetch_pinned(pin: &PinnedUrl, cache: &Path) -> Result<PathBuf, RemoteError> {
    let dir = cache.join("bundles");
    let cache_err = |reason| RemoteError::Cache {
        dir: dir.clone(),
        reason,
    };
    crate::paths::private_dir(&dir).map_err(cache_err)?;
    let path = dir.join(format!("{}.{PACK_EXTENSION}", pin.sha256));
    if path.is_file() {
        if file_sha256(&path).is_ok_and(|h| h == pin.sha256) {
            return Ok(path);
        }
        // Changed since it was kept: fetch it again.
        let _ = std::fs::remove_file(&path);
    }
    let fetch_err = |reason: String| RemoteError::Fetch {
        url: pin.url.clone(),
        reason,
    };
    let client = reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .build()
        .map_err(|e| fetch_err(e.to_string()))?;
    let response = client
        .get(&pin.url)
        .send()
        .await
        .map_err(|e| fetch_err(format!("cannot fetch it: {e}")))?;
    if !response.status().is_success() {
        return Err(fetch_err(format!("HTTP {}", response.status().as_u16())));
    }
    let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(cache_err)?;
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| fetch_err(format!("the download broke: {e}")))?;
        size += chunk.len() as u64;
        if size > MAX_PACK_BYTES {
            return Err(fetch_err(format!(
                "it is over {} MiB, the largest pack a host takes",
                MAX_PACK_BYTES >> 20
            )));
        }
        hasher.update(&chunk);
        tmp.write_all(&chunk).map_err(cache_err)?;
    }
    let actual = hex::encode(hasher.finalize());
    if actual != pin.sha256 {
        return Err(RemoteError::Mismatch {
            url: pin.url.clone(),
            expected: pin.sha256.clone(),
            actual,
        });
    }
    tmp.persist(&path).map_err(|e| cache_err(e.error))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_parsed_and_bad_ones_explained() {
        let hex = "ab".repeat(32);
        let pin: PinnedUrl = format!("https://x.example/a.tessera#sha256={}", hex.to_uppercase())
            .parse()
            .unwrap();
        assert_eq!(pin.url, "https://x.example/a.tessera");
        assert_eq!(pin.sha256, hex);
        for bad in [
            "https://x.example/a.tessera".to_string(),
            format!("https://x.example/a.tessera#sha256={}", &hex[..63]),
            format!("ftp://x.example/a.tessera#sha256={hex}"),
            format!("not a url#sha256={hex}"),
        ] {
            let e = bad.parse::<PinnedUrl>().unwrap_err().to_string();
            assert!(e.contains("URL#sha256=HEX"), "{e}");
        }
    }

    /// Serve `body` once per connection on a loopback port.
    async fn serve_bytes(body: Vec<u8>) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut request = [0u8; 1024];
                let _ = socket.read(&mut request).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(&body).await;
            }
        });
        format!("http://{address}/calculator.tessera")
    }

    #[tokio::test]
    async fn the_pinned_bytes_are_fetched_kept_and_checked_again() {
        let body = b"pretend pack bytes".to_vec();
        let sha = hex::encode(Sha256::digest(&body));
        let url = serve_bytes(body.clone()).await;
        let cache = tempfile::tempdir().unwrap();
        let pin: PinnedUrl = format!("{url}#sha256={sha}").parse().unwrap();
        let path = fetch_pinned(&pin, cache.path()).await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), body);
        // A cached file that changed is fetched again, not used.
        std::fs::write(&path, b"tampered").unwrap();
        let again = fetch_pinned(&pin, cache.path()).await.unwrap();
        assert_eq!(std::fs::read(&again).unwrap(), body);

        // Bytes that are not the pinned ones are refused and not kept.
        let other = "00".repeat(32);
        let wrong: PinnedUrl = format!("{url}#sha256={other}").parse().unwrap();
        let e = fetch_pinned(&wrong, cache.path())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("its sha256 is {sha}, but the pin says {other}")),
            "{e}"
        );
        assert!(
            !cache
                .path()
                .join(format!("bundles/{other}.tessera"))
                .exists()
        );
    }
}
