//! `tessera:expert/log`: log lines into the trace (capped) and the host log.

use crate::audit::LogLine;
use crate::bindings::log::{Host, Level};
use crate::sandbox::InvocationState;

impl Host for InvocationState {
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
            self.recorder
                .panic_message
                .get_or_insert_with(|| crate::text::ellipsize(&message, 1024));
        }
        let size = message.len() + fields.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        let max = self.ensemble.sandbox().policy().max_log_bytes;
        // The cap comes before any sink, the host's own log included.
        if self.recorder.log_bytes + size > max {
            self.recorder.logs_dropped += 1;
            return Ok(());
        }
        tracing::debug!(expert = self.expert_name(), level, %message, "guest log");
        self.recorder.log_bytes += size;
        let at_us = self.elapsed_us();
        self.recorder.logs.push(LogLine {
            at_us,
            level: level.to_string(),
            message,
            fields,
        });
        Ok(())
    }
}
