//! `tessera:expert/log`: log lines into the trace (capped) and the host log.

use wasmtime::component::HasData;

use crate::audit::{Ledger, LogLine};
use crate::bindings::log::{Host, Level};

/// The `log` interface's view of a store: the cap on log bytes and the
/// ledger the lines go to.
pub(crate) struct LogHost<'a> {
    /// Bytes of log lines one invocation may keep.
    pub(crate) max_bytes: usize,
    pub(crate) ledger: &'a mut Ledger,
}

/// Marks the `log` interface's view for `add_to_linker`.
pub(crate) struct LogCaps;

impl HasData for LogCaps {
    type Data<'a> = LogHost<'a>;
}

impl Host for LogHost<'_> {
    async fn log(
        &mut self,
        level: Level,
        message: String,
        fields: Vec<(String, String)>,
    ) -> wasmtime::Result<()> {
        let level = match level {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        };
        // The SDK's panic hook logs the panic message with `panic=true`
        // just before the guest aborts; keep it for the error report.
        if fields.iter().any(|(k, v)| k == "panic" && v == "true") {
            self.ledger
                .panic_message
                .get_or_insert_with(|| crate::text::ellipsize(&message, 1024));
        }
        let size = message.len() + fields.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        let ledger = &mut *self.ledger;
        // The cap comes before any sink, the host's own log included.
        if ledger.log_bytes + size > self.max_bytes {
            ledger.logs_dropped += 1;
            return Ok(());
        }
        tracing::debug!(expert = ledger.expert, level, %message, "guest log");
        ledger.log_bytes += size;
        let at_us = ledger.elapsed_us();
        ledger.logs.push(LogLine {
            at_us,
            level: level.to_string(),
            message,
            fields,
        });
        Ok(())
    }
}
