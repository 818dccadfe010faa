//! `tessera:expert/log`: log lines into the trace (capped) and the host log.

use super::View;
use crate::audit::LogLine;
use crate::bindings::log::{Host, Level};

/// What the `log` interface of one invocation holds.
pub(crate) struct LogCtx {
    /// Bytes of log lines one invocation may keep.
    pub(crate) max_bytes: usize,
}

impl Host for View<'_, LogCtx> {
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
        if ledger.log_bytes + size > self.ctx.max_bytes {
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
