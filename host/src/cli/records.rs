//! The audit store from the command line: the flags `serve` and `run`
//! share, and `tessera audit list | show | export | check`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tessera_host::audit::store::{self, AuditStore, Durability, Filter, Retention};

/// The audit store's flags, for `serve` and `run`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct StoreArgs {
    /// The audit store, a SQLite file [default: $TESSERA_AUDIT_DB, else
    /// the user data dir's tessera/audit/audit.sqlite].
    #[arg(long, value_name = "FILE")]
    pub audit_db: Option<PathBuf>,

    /// Keep no audit store: answers are not recorded (receipts are still
    /// signed).
    #[arg(long)]
    pub no_audit: bool,

    /// How long records are kept: an age, a size or both, such as `30d`,
    /// `2GiB`, `30d,10GiB`, or `forever` [default: 30d,10GiB].
    #[arg(long, value_name = "AGE,SIZE")]
    pub audit_retention: Option<Retention>,

    /// What a record survives once its answer is sent: `crash` (the host
    /// killed at any moment; the default) or `power` (power loss too: an
    /// fsync per answer).
    #[arg(long, value_name = "crash|power")]
    pub audit_sync: Option<SyncArg>,
}

/// `--audit-sync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyncArg {
    /// Survives the host being killed.
    Crash,
    /// Survives power loss.
    Power,
}

/// How often `serve` applies the retention.
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);

impl StoreArgs {
    /// Open the store, unless `--no-audit`; applies the retention once.
    pub fn open(&self) -> anyhow::Result<Option<Arc<AuditStore>>> {
        if self.no_audit {
            return Ok(None);
        }
        let path = store_path(self.audit_db.as_deref())?;
        let durability = match self.audit_sync {
            Some(SyncArg::Power) => Durability::Power,
            _ => Durability::Process,
        };
        let store = Arc::new(AuditStore::open(&path, durability)?);
        store.prune(self.retention(), now_ms())?;
        Ok(Some(store))
    }

    /// The retention asked for, or the default.
    pub fn retention(&self) -> Retention {
        self.audit_retention.unwrap_or(Retention::DEFAULT)
    }

    /// Apply the retention every minute, in the background.
    pub fn spawn_pruner(&self, store: Arc<AuditStore>) -> tokio::task::JoinHandle<()> {
        let retention = self.retention();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PRUNE_INTERVAL);
            tick.tick().await;
            loop {
                tick.tick().await;
                let store = store.clone();
                let pruned =
                    tokio::task::spawn_blocking(move || store.prune(retention, now_ms())).await;
                match pruned {
                    Ok(Ok(p)) if p.by_age + p.by_size > 0 => tracing::info!(
                        by_age = p.by_age,
                        by_size = p.by_size,
                        "audit records past the retention deleted"
                    ),
                    Ok(Err(e)) => tracing::error!(error = %e, "pruning the audit store failed"),
                    _ => {}
                }
            }
        })
    }
}

fn store_path(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    given.map(Path::to_path_buf).or_else(store::default_path).ok_or_else(|| {
        anyhow::anyhow!(
            "no home directory to keep the audit store in; give a file with --audit-db (or --no-audit)"
        )
    })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `tessera audit list | show | export | check`.
#[derive(Debug, clap::Subcommand)]
pub enum RecordsCommand {
    /// List recorded invocations, oldest first.
    List {
        /// Only this expert's.
        #[arg(long, value_name = "NAME")]
        expert: Option<String>,
        /// Only since this time: RFC 3339 (`2026-11-24T08:00:00Z`) or an
        /// age (`1h`, `2d`).
        #[arg(long, value_name = "T")]
        since: Option<String>,
        /// At most this many, the newest ones.
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
        /// The store [default: as `serve` uses].
        #[arg(long, value_name = "FILE")]
        audit_db: Option<PathBuf>,
    },
    /// One record: request, answer, trace and receipt.
    Show {
        /// Its id (from `list`, or `tessera.audit_id` of an answer).
        id: i64,
        /// The record as JSON, as `tessera verify` reads it.
        #[arg(long)]
        json: bool,
        /// The store [default: as `serve` uses].
        #[arg(long, value_name = "FILE")]
        audit_db: Option<PathBuf>,
    },
    /// Every record as JSON lines, oldest first (each line is what `show
    /// --json` prints, with its id).
    Export {
        /// Only this expert's.
        #[arg(long, value_name = "NAME")]
        expert: Option<String>,
        /// Only since this time (as for `list`).
        #[arg(long, value_name = "T")]
        since: Option<String>,
        /// The store [default: as `serve` uses].
        #[arg(long, value_name = "FILE")]
        audit_db: Option<PathBuf>,
    },
    /// SQLite's integrity check of the store, and its size.
    Check {
        /// The store [default: as `serve` uses].
        #[arg(long, value_name = "FILE")]
        audit_db: Option<PathBuf>,
    },
}

/// Records read per query while exporting.
const EXPORT_PAGE: u64 = 500;

/// Open an existing store for reading: a missing one is an error that
/// says where it looked.
fn open_existing(given: Option<&Path>) -> anyhow::Result<AuditStore> {
    let path = store_path(given)?;
    if !path.is_file() {
        anyhow::bail!(
            "no audit store at {}: `tessera serve` and `tessera run` make it on their first answer (or give one with --audit-db)",
            path.display()
        );
    }
    Ok(AuditStore::open(&path, Durability::Process)?)
}

/// `--since`: an RFC 3339 time or an age before now.
fn parse_since(text: &str) -> anyhow::Result<u64> {
    if let Ok(t) = humantime::parse_rfc3339_weak(text) {
        return Ok(t
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64));
    }
    if let Ok(age) = humantime::parse_duration(text) {
        return Ok(now_ms().saturating_sub(age.as_millis() as u64));
    }
    anyhow::bail!(
        "--since {text}: give a time such as 2026-11-24T08:00:00Z or an age such as 1h or 2d"
    )
}

fn time_of(unix_ms: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(unix_ms);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Run one of the store's commands.
pub fn run(command: RecordsCommand) -> anyhow::Result<ExitCode> {
    match command {
        RecordsCommand::List {
            expert,
            since,
            limit,
            json,
            audit_db,
        } => {
            let store = open_existing(audit_db.as_deref())?;
            let filter = Filter {
                expert,
                since_unix_ms: since.as_deref().map(parse_since).transpose()?,
                ..Filter::default()
            };
            let mut rows = store.list(&filter)?;
            if let Some(limit) = limit {
                let skip = rows.len().saturating_sub(limit as usize);
                rows.drain(..skip);
            }
            let mut out = String::new();
            if json {
                for row in &rows {
                    writeln!(out, "{}", serde_json::to_string(row)?)?;
                }
            } else {
                writeln!(
                    out,
                    "{:>8}  {:<24}  {:<28}  {:<14}  {:>10}  receipt",
                    "id", "started", "expert", "status", "ms"
                )?;
                for r in &rows {
                    writeln!(
                        out,
                        "{:>8}  {:<24}  {:<28}  {:<14}  {:>10.1}  {}",
                        r.id,
                        time_of(r.at_unix_ms),
                        format!("{}@{}", r.expert, r.version),
                        r.status,
                        r.duration_us as f64 / 1000.0,
                        if r.receipt { "signed" } else { "-" }
                    )?;
                }
                if rows.is_empty() {
                    writeln!(out, "(no records match)")?;
                }
            }
            super::print(&out)?;
        }
        RecordsCommand::Show { id, json, audit_db } => {
            let store = open_existing(audit_db.as_deref())?;
            let Some(record) = store.get(id)? else {
                anyhow::bail!(
                    "no record {id} in {} (`tessera audit list` shows the ids)",
                    store.path().display()
                );
            };
            let text = if json {
                serde_json::to_string_pretty(&record)? + "\n"
            } else {
                show(id, &record)?
            };
            super::print(&text)?;
        }
        RecordsCommand::Export {
            expert,
            since,
            audit_db,
        } => {
            let store = open_existing(audit_db.as_deref())?;
            let mut filter = Filter {
                expert,
                since_unix_ms: since.as_deref().map(parse_since).transpose()?,
                after_id: None,
                limit: Some(EXPORT_PAGE),
            };
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            loop {
                let page = store.list(&filter)?;
                let Some(last) = page.last() else { break };
                filter.after_id = Some(last.id);
                for row in &page {
                    let Some(record) = store.get(row.id)? else {
                        continue; // pruned meanwhile
                    };
                    #[derive(serde::Serialize)]
                    struct Line<'a> {
                        id: i64,
                        #[serde(flatten)]
                        record: &'a tessera_host::audit::Record,
                    }
                    let line = serde_json::to_string(&Line {
                        id: row.id,
                        record: &record,
                    })?;
                    if writeln!(out, "{line}").is_err() {
                        return Ok(ExitCode::SUCCESS); // reader went away
                    }
                }
            }
            let _ = out.flush();
        }
        RecordsCommand::Check { audit_db } => {
            let store = open_existing(audit_db.as_deref())?;
            let stats = store.stats()?;
            match store.integrity_check()? {
                Ok(()) => {
                    super::print(&format!(
                        "ok: {} holds {} records in {:.1} MiB; SQLite's integrity check passes\n",
                        store.path().display(),
                        stats.records,
                        stats.bytes as f64 / (1024.0 * 1024.0)
                    ))?;
                }
                Err(problems) => {
                    eprintln!(
                        "error: {} fails SQLite's integrity check:",
                        store.path().display()
                    );
                    for p in problems {
                        eprintln!("  {p}");
                    }
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A record for a person.
fn show(id: i64, r: &tessera_host::audit::Record) -> anyhow::Result<String> {
    let t = &r.trace;
    let mut out = String::new();
    writeln!(out, "record {id}: {}@{}", t.expert, t.version)?;
    writeln!(out, "  started    {}", time_of(t.started_at_unix_ms))?;
    writeln!(out, "  component  sha256 {}", t.component_sha256)?;
    writeln!(
        out,
        "  ran        {:.1} ms, {} fuel, {} model calls, {} tokens generated",
        t.duration_us as f64 / 1000.0,
        t.fuel_consumed,
        t.model_calls,
        t.generated_tokens
    )?;
    writeln!(out, "  outcome    {}", serde_json::to_string(&t.outcome)?)?;
    match &r.receipt {
        Some(_) => match r.check() {
            Ok(signer) => writeln!(
                out,
                "  receipt    signed by {signer}; it matches this record"
            )?,
            Err(e) => writeln!(out, "  receipt    DOES NOT HOLD: {e}")?,
        },
        None => writeln!(out, "  receipt    none")?,
    }
    writeln!(out, "request:")?;
    for (role, content) in &r.request.messages {
        writeln!(out, "  {role}: {}", one_line(content))?;
    }
    if let Some(resp) = &r.response {
        writeln!(out, "answer:\n  {}", one_line(&resp.content))?;
    }
    writeln!(out, "host calls:")?;
    for (i, c) in t.host_calls.iter().enumerate() {
        let what = match (&c.error, &c.tokens) {
            (Some(e), _) => format!("error: {}", one_line(e)),
            (None, Some(tokens)) => format!("{} + {} tokens", tokens.prompt, tokens.completion),
            (None, None) => format!("{} bytes out", c.bytes_out),
        };
        writeln!(
            out,
            "  {i:>3}  {}.{}  {what}",
            c.interface.rsplit('/').next().unwrap_or(&c.interface),
            c.function
        )?;
    }
    if t.host_calls.is_empty() {
        writeln!(out, "  (none)")?;
    }
    writeln!(
        out,
        "(`tessera audit show {id} --json > record.json`, then `tessera verify record.json --replay --bundle BUNDLE`)"
    )?;
    Ok(out)
}

/// `text` on one line, shortened to 120 characters.
fn one_line(text: &str) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match flat.char_indices().nth(120) {
        Some((at, _)) => format!("{}…", &flat[..at]),
        None => flat,
    }
}
