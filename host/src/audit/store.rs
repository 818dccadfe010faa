//! The audit store: every invocation's record (request, response, trace
//! with host-call results, receipt), appended to SQLite before the answer
//! is acknowledged.
//!
//! SQLite runs in WAL mode. With [`Durability::Process`] (the default) a
//! commit is in the operating system's page cache when `append` returns,
//! so a killed host (`kill -9`, a crash, an OOM kill) loses nothing it
//! acknowledged; the WAL is synced to disk at checkpoints. With
//! [`Durability::Power`] every commit is also synced (`fsync`), which
//! survives power loss and costs a disk flush per answer.
//!
//! The store's file is data another user might have written: rows are
//! parsed as data, capped in size, and a row that does not parse is an
//! error naming its id, never a crash.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::{Receipt, Record, RecordedRequest, RecordedResponse, Trace};

/// Overrides where the store lives (a file path).
pub const AUDIT_DB_ENV: &str = "TESSERA_AUDIT_DB";
/// The schema this host writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 1;
/// Largest record read back from the store: a row past it is reported,
/// not loaded.
pub const MAX_STORED_RECORD_BYTES: usize = 64 * 1024 * 1024;
/// Rows deleted per statement when pruning by size.
const PRUNE_BATCH: i64 = 100;
/// How long a writer waits for another connection's lock (a `tessera
/// audit` command reading while `serve` writes).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the store lives by default: `$TESSERA_AUDIT_DB`, else
/// `<data dir>/tessera/audit/audit.sqlite`.
pub fn default_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(AUDIT_DB_ENV) {
        return Some(PathBuf::from(path));
    }
    dirs::data_dir().map(|d| d.join("tessera").join("audit").join("audit.sqlite"))
}

/// What a commit survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// The host being killed at any moment (SQLite `synchronous=NORMAL`
    /// in WAL mode): the default.
    #[default]
    Process,
    /// Power loss too (`synchronous=FULL`): an `fsync` per answer.
    Power,
}

/// How long records are kept: older than `max_age`, or the oldest past
/// `max_bytes` of database pages, are deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    /// Keep records younger than this.
    pub max_age: Option<Duration>,
    /// Keep the store under this many bytes.
    pub max_bytes: Option<u64>,
}

impl Retention {
    /// The default: 30 days and 10 GiB, whichever comes first.
    pub const DEFAULT: Retention = Retention {
        max_age: Some(Duration::from_secs(30 * 24 * 3600)),
        max_bytes: Some(10 * 1024 * 1024 * 1024),
    };
}

impl FromStr for Retention {
    type Err = String;

    /// `30d`, `10GiB`, `30d,10GiB` (age and size, in either order) or
    /// `forever`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut r = Retention::default();
        if s.trim() == "forever" {
            return Ok(r);
        }
        for part in s.split(',').map(str::trim) {
            if let Some(bytes) = parse_size(part) {
                r.max_bytes = Some(bytes);
            } else if let Ok(age) = humantime::parse_duration(part) {
                r.max_age = Some(age);
            } else {
                return Err(format!(
                    "`{part}` is neither an age (`30d`, `12h`) nor a size (`500MiB`, `10GiB`); write for example `30d,10GiB`, or `forever`"
                ));
            }
        }
        Ok(r)
    }
}

/// `500MiB`, `10GiB`, `1TiB`, `2048KiB` or plain bytes `123B`.
fn parse_size(s: &str) -> Option<u64> {
    let units = [
        ("TiB", 1u64 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
        ("B", 1),
    ];
    units.iter().find_map(|(unit, scale)| {
        let n: u64 = s.strip_suffix(unit)?.trim().parse().ok()?;
        n.checked_mul(*scale)
    })
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The file could not be opened or set up.
    #[error("cannot open the audit store {path}: {message}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// SQLite failed.
    #[error("audit store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A row that does not hold a record.
    #[error("audit record {id} is unreadable: {reason}")]
    Corrupt {
        /// Its id.
        id: i64,
        /// Why.
        reason: String,
    },
}

/// One line of `tessera audit list`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// The record's id in this store.
    pub id: i64,
    /// When the invocation started, milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// The expert.
    pub expert: String,
    /// Its version.
    pub version: String,
    /// `ok`, or the error kind.
    pub status: String,
    /// How long it ran, microseconds.
    pub duration_us: u64,
    /// Whether a receipt was signed.
    pub receipt: bool,
}

/// Which records to list or export.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this expert's.
    pub expert: Option<String>,
    /// Only those started at or after this time (Unix milliseconds).
    pub since_unix_ms: Option<u64>,
    /// Only ids above this one (for paging).
    pub after_id: Option<i64>,
    /// At most this many (`None`: all).
    pub limit: Option<u64>,
}

/// What a prune deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pruned {
    /// Records older than the retention age.
    pub by_age: u64,
    /// Oldest records deleted to get under the size.
    pub by_size: u64,
}

/// The store's size figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StoreStats {
    /// Records held.
    pub records: u64,
    /// Bytes of database pages in use.
    pub bytes: u64,
}

/// An open audit store.
pub struct AuditStore {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl std::fmt::Debug for AuditStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditStore")
            .field("path", &self.path)
            .finish()
    }
}

impl AuditStore {
    /// Open (or create) the store at `path`; its directory is made private
    /// to this user.
    pub fn open(path: &Path, durability: Durability) -> Result<AuditStore, StoreError> {
        let open_error = |message: String| StoreError::Open {
            path: path.to_path_buf(),
            message,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::paths::private_dir(dir).map_err(|e| open_error(e.to_string()))?;
        }
        let conn = Connection::open(path).map_err(|e| open_error(e.to_string()))?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(open_error(format!(
                "it was written by a newer Tessera (schema {version}; this one reads {SCHEMA_VERSION}); upgrade, or give another file with --audit-db"
            )));
        }
        // Set before the first table exists, so that pruning can give
        // space back with `incremental_vacuum`.
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(open_error(format!(
                "SQLite refused write-ahead logging (journal mode {mode}); put the store on a local file system"
            )));
        }
        let synchronous = match durability {
            Durability::Process => "NORMAL",
            Durability::Power => "FULL",
        };
        conn.pragma_update(None, "synchronous", synchronous)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS invocations (
                 id INTEGER PRIMARY KEY,
                 at_ms INTEGER NOT NULL,
                 expert TEXT NOT NULL,
                 version TEXT NOT NULL,
                 status TEXT NOT NULL,
                 duration_us INTEGER NOT NULL,
                 receipt INTEGER NOT NULL,
                 record TEXT NOT NULL
             );

",
        )?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        Ok(AuditStore {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Append `record`, committed when this returns; its id.
    pub fn append(&self, record: &Record) -> Result<i64, StoreError> {
        self.append_parts(
            &record.request,
            record.response.clone(),
            &record.trace,
            serde_json::to_string(&record.trace).expect("a trace serializes"),
            record.receipt.as_ref(),
        )
    }

    /// Append the record of an invocation from its parts, its trace
    /// already serialized as `trace_json` (the receipt's digest is of the
    /// same bytes), committed when this returns; its id.
    pub fn append_parts(
        &self,
        request: &RecordedRequest,
        response: Option<RecordedResponse>,
        trace: &Trace,
        trace_json: String,
        receipt: Option<&Receipt>,
    ) -> Result<i64, StoreError> {
        // The same fields as `Record`, borrowed.
        #[derive(Serialize)]
        struct Parts<'a> {
            request: &'a RecordedRequest,
            response: Option<RecordedResponse>,
            trace: &'a serde_json::value::RawValue,
            receipt: Option<&'a Receipt>,
        }
        let raw = serde_json::value::RawValue::from_string(trace_json)
            .expect("a serialized trace is JSON");
        let has_receipt = receipt.is_some();
        let json = serde_json::to_string(&Parts {
            request,
            response,
            trace: &raw,
            receipt,
        })
        .expect("a record serializes");
        let status = match &trace.outcome {
            super::Outcome::Error { kind, .. } => kind.as_str(),
            _ => "ok",
        };
        let conn = self.conn();
        conn.prepare_cached(
            "INSERT INTO invocations (at_ms, expert, version, status, duration_us, receipt, record)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            trace.started_at_unix_ms as i64,
            trace.expert,
            trace.version,
            status,
            trace.duration_us as i64,
            has_receipt,
            json,
        ])?;
        Ok(conn.last_insert_rowid())
    }

    /// The record `id`, if the store holds it.
    pub fn get(&self, id: i64) -> Result<Option<Record>, StoreError> {
        let conn = self.conn();
        let row: Option<(i64, Option<String>)> = conn
            .query_row(
                "SELECT length(record), CASE WHEN length(record) <= ?2 THEN record END
                 FROM invocations WHERE id = ?1",
                params![id, MAX_STORED_RECORD_BYTES as i64],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        row.map(|(len, json)| parse_record(id, len, json))
            .transpose()
    }

    /// Records matching `filter`, oldest first.
    pub fn list(&self, filter: &Filter) -> Result<Vec<Summary>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id, at_ms, expert, version, status, duration_us, receipt FROM invocations
             WHERE (?1 IS NULL OR expert = ?1) AND (?2 IS NULL OR at_ms >= ?2)
               AND (?3 IS NULL OR id > ?3)
             ORDER BY id LIMIT ?4",
        )?;
        let rows = stmt.query_map(
            params![
                filter.expert,
                filter.since_unix_ms.map(|t| t as i64),
                filter.after_id,
                filter.limit.map_or(-1, |l| l as i64)
            ],
            |r| {
                Ok(Summary {
                    id: r.get(0)?,
                    at_unix_ms: r.get::<_, i64>(1)? as u64,
                    expert: r.get(2)?,
                    version: r.get(3)?,
                    status: r.get(4)?,
                    duration_us: r.get::<_, i64>(5)? as u64,
                    receipt: r.get(6)?,
                })
            },
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Delete what `retention` no longer keeps, then give the space back.
    pub fn prune(&self, retention: Retention, now_unix_ms: u64) -> Result<Pruned, StoreError> {
        let conn = self.conn();
        let mut pruned = Pruned::default();
        if let Some(age) = retention.max_age {
            let cutoff = now_unix_ms.saturating_sub(age.as_millis() as u64) as i64;
            if let Some(last_old) = last_id_before(&conn, cutoff)? {
                pruned.by_age = conn
                    .execute("DELETE FROM invocations WHERE id <= ?1", params![last_old])?
                    as u64;
            }
        }
        if let Some(max) = retention.max_bytes {
            while used_bytes(&conn)? > max {
                let n = conn.execute(
                    "DELETE FROM invocations WHERE id IN
                     (SELECT id FROM invocations ORDER BY id LIMIT ?1)",
                    params![PRUNE_BATCH],
                )?;
                if n == 0 {
                    break;
                }
                pruned.by_size += n as u64;
            }
        }
        if pruned != Pruned::default() {
            conn.execute_batch("PRAGMA incremental_vacuum; PRAGMA wal_checkpoint(TRUNCATE);")?;
        }
        Ok(pruned)
    }

    /// Records held and bytes used.
    pub fn stats(&self) -> Result<StoreStats, StoreError> {
        let conn = self.conn();
        let records: i64 = conn.query_row("SELECT count(*) FROM invocations", [], |r| r.get(0))?;
        Ok(StoreStats {
            records: records as u64,
            bytes: used_bytes(&conn)?,
        })
    }

    /// SQLite's own integrity check: `Ok` or the problems it lists.
    pub fn integrity_check(&self) -> Result<Result<(), Vec<String>>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("PRAGMA integrity_check")?;
        let lines: Vec<String> = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(if lines == ["ok"] { Ok(()) } else { Err(lines) })
    }
}

/// The last id of a record started before `cutoff_ms`. Records are
/// appended as invocations end, so start times grow with ids (up to one
/// invocation's length, which retention can ignore): a binary search over
/// ids finds it without an index on time, which would cost every append
/// another page write.
fn last_id_before(conn: &Connection, cutoff_ms: i64) -> Result<Option<i64>, rusqlite::Error> {
    // The first record at or after `id`: (its id, its start).
    let at_or_after = |id: i64| -> Result<Option<(i64, i64)>, rusqlite::Error> {
        conn.query_row(
            "SELECT id, at_ms FROM invocations WHERE id >= ?1 ORDER BY id LIMIT 1",
            params![id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
    };
    let Some((first, first_at)) = at_or_after(i64::MIN)? else {
        return Ok(None);
    };
    if first_at >= cutoff_ms {
        return Ok(None);
    }
    let last: i64 = conn.query_row("SELECT max(id) FROM invocations", [], |r| r.get(0))?;
    // Invariant: `lo` started before the cutoff; everything past `hi` did not.
    let (mut lo, mut hi) = (first, last);
    while lo < hi {
        let mid = lo + (hi - lo + 1) / 2;
        match at_or_after(mid)? {
            Some((id, at)) if at < cutoff_ms && id <= hi => lo = id,
            _ => hi = mid - 1,
        }
    }
    Ok(Some(lo))
}

fn used_bytes(conn: &Connection) -> Result<u64, rusqlite::Error> {
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let free: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    let size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    Ok(((pages - free).max(0) * size) as u64)
}

fn parse_record(id: i64, len: i64, json: Option<String>) -> Result<Record, StoreError> {
    let Some(json) = json else {
        return Err(StoreError::Corrupt {
            id,
            reason: format!(
                "it is {len} bytes, over the {MAX_STORED_RECORD_BYTES} bytes this host reads"
            ),
        });
    };
    serde_json::from_str(&json).map_err(|e| StoreError::Corrupt {
        id,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Outcome;
    use crate::types::Request;

    fn record(expert: &str, at_ms: u64) -> Record {
        let mut trace = Trace::failed(expert, 0, "x", "y");
        trace.outcome = Outcome::Ok { content_bytes: 2 };
        trace.started_at_unix_ms = at_ms;
        Record {
            request: RecordedRequest::from(&Request::from_prompt("hi")),
            response: None,
            trace,
            receipt: None,
        }
    }

    #[test]
    fn records_come_back_and_filters_apply() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            AuditStore::open(&dir.path().join("a/audit.sqlite"), Durability::Process).unwrap();
        let a = store.append(&record("echo", 1_000)).unwrap();
        let b = store.append(&record("calc", 2_000)).unwrap();
        assert_eq!(store.get(a).unwrap(), Some(record("echo", 1_000)));
        assert_eq!(store.get(b + 10).unwrap(), None);
        let only =
            |f: Filter| -> Vec<i64> { store.list(&f).unwrap().iter().map(|s| s.id).collect() };
        assert_eq!(only(Filter::default()), vec![a, b]);
        let calc = Filter {
            expert: Some("calc".into()),
            ..Filter::default()
        };
        assert_eq!(only(calc), vec![b]);
        let since = Filter {
            since_unix_ms: Some(1_500),
            ..Filter::default()
        };
        assert_eq!(only(since), vec![b]);
        let first = Filter {
            limit: Some(1),
            ..Filter::default()
        };
        assert_eq!(only(first), vec![a]);
        assert_eq!(store.integrity_check().unwrap(), Ok(()));
    }

    #[test]
    fn retention_deletes_by_age_and_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            AuditStore::open(&dir.path().join("audit.sqlite"), Durability::Process).unwrap();
        for i in 0..3000u64 {
            store.append(&record("echo", i)).unwrap();
        }
        let by_age = Retention {
            max_age: Some(Duration::from_millis(1000)),
            max_bytes: None,
        };
        let pruned = store.prune(by_age, 2000).unwrap();
        assert_eq!(pruned.by_age, 1000);
        assert_eq!(store.stats().unwrap().records, 2000);

        let before = store.stats().unwrap().bytes;
        let by_size = Retention {
            max_age: None,
            max_bytes: Some(before / 4 * 3),
        };
        let pruned = store.prune(by_size, 2000).unwrap();
        assert!((400..=1000).contains(&pruned.by_size), "{pruned:?}");
        let after = store.stats().unwrap();
        assert!(after.bytes <= before / 4 * 3, "{after:?}");
        assert_eq!(after.records, 2000 - pruned.by_size);
        // The oldest went first.
        let first = store.list(&Filter::default()).unwrap()[0].at_unix_ms;
        assert_eq!(first, 1000 + pruned.by_size);
    }

    #[test]
    fn retention_parses_ages_sizes_and_both() {
        let r: Retention = "30d,10GiB".parse().unwrap();
        assert_eq!(r.max_age, Some(Duration::from_secs(30 * 86400)));
        assert_eq!(r.max_bytes, Some(10 << 30));
        let r: Retention = "500MiB".parse().unwrap();
        assert_eq!((r.max_age, r.max_bytes), (None, Some(500 << 20)));
        assert_eq!("forever".parse::<Retention>(), Ok(Retention::default()));
        let err = "30 parsecs".parse::<Retention>().unwrap_err();
        assert!(
            err.contains("`30 parsecs`") && err.contains("30d,10GiB"),
            "{err}"
        );
    }

    /// A row someone else wrote is an error naming it, not a crash.
    #[test]
    fn a_corrupt_row_is_reported_by_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.sqlite");
        let store = AuditStore::open(&path, Durability::Process).unwrap();
        let id = store.append(&record("echo", 1)).unwrap();
        store
            .conn()
            .execute("UPDATE invocations SET record = '{\"not\": 1}'", [])
            .unwrap();
        let err = store.get(id).unwrap_err().to_string();
        assert!(err.contains(&format!("record {id}")), "{err}");
    }
}
