//! `tessera:expert/experts`: experts calling experts, with grants, a depth
//! limit and cycle detection. The callee runs in its own store with its own
//! limits, inside the caller's deadline and what is left of its budgets;
//! its fuel, tokens and model calls are charged to the caller.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use super::View;
use crate::audit::{CallEnd, CallResult};
use crate::bindings::experts::Host;
use crate::bindings::types::{Error, Request, Response};
use crate::bundle::{Capabilities, is_valid_name};
use crate::ensemble::{Inherited, Invocation};

const INTERFACE: &str = "tessera:expert/experts";

/// A nested invocation under way.
pub(crate) type Nested = Pin<Box<dyn Future<Output = Invocation> + Send>>;

/// What `experts.call` needs of the host: running an expert by name for a
/// caller. The ensemble implements it; the store holds nothing more.
pub(crate) trait Invoker: Send + Sync {
    /// Run `name` on `req` for a caller, inside what it handed down
    /// `from` itself. Boxed: experts calling experts make this recursive.
    fn call_nested(self: Arc<Self>, name: String, req: Request, from: Inherited) -> Nested;
}

/// What the `experts` interface of one invocation holds.
pub(crate) struct ExpertsCtx {
    invoker: Arc<dyn Invoker>,
    /// The bundle's grants (`experts` under [capabilities]).
    capabilities: Capabilities,
    /// Expert names from the outermost caller to this expert (inclusive).
    call_stack: Vec<String>,
    /// The policy's deepest call.
    max_depth: u32,
    /// When this invocation must be done; callees finish by then too.
    deadline: Instant,
}

impl ExpertsCtx {
    pub(crate) fn new(
        invoker: Arc<dyn Invoker>,
        capabilities: Capabilities,
        call_stack: Vec<String>,
        max_depth: u32,
        deadline: Instant,
    ) -> ExpertsCtx {
        ExpertsCtx {
            invoker,
            capabilities,
            call_stack,
            max_depth,
            deadline,
        }
    }
}

impl ExpertsCtx {
    /// Answer `experts.call` with `invoker` instead (a replay).
    pub(crate) fn set_invoker(&mut self, invoker: Arc<dyn Invoker>) {
        self.invoker = invoker;
    }

    fn check_call(&self, name: &str) -> Result<(), Error> {
        // Checked first, and never quoted: the name is the guest's, of any
        // size, and error lines end up in the trace.
        if !is_valid_name(name) {
            return Err(Error::InvalidInput(format!(
                "`experts.call` takes an expert's name (1 to 64 lowercase letters, digits and dashes); got {} bytes that are not one",
                name.len()
            )));
        }
        if !self.capabilities.may_call(name) {
            return Err(Error::Denied(format!(
                "expert `{}` may not call `{name}`: add \"{name}\" to `experts` under [capabilities] in its tessera.toml",
                self.call_stack.last().map_or("", String::as_str)
            )));
        }
        if self.call_stack.iter().any(|n| n == name) {
            let mut cycle = self.call_stack.clone();
            cycle.push(name.to_string());
            return Err(Error::Denied(format!(
                "call cycle refused: {}",
                cycle.join(" -> ")
            )));
        }
        let max = self.max_depth;
        // The outermost expert is depth 0; its callee depth 1, and so on.
        if self.call_stack.len() as u32 > max {
            return Err(Error::LimitExceeded(format!(
                "call depth limit of {max} reached: {} -> {name}",
                self.call_stack.join(" -> ")
            )));
        }
        Ok(())
    }
}

impl Host for View<'_, ExpertsCtx> {
    async fn call(
        &mut self,
        name: String,
        req: Request,
    ) -> wasmtime::Result<Result<Response, Error>> {
        let input = super::request_digest("tessera:expert/experts.call.in", &req)
            .text(&name)
            .finish();
        let record = self
            .ledger
            .begin_call(INTERFACE, "call", super::request_len(&req), input);
        if let Err(e) = self.ctx.check_call(&name) {
            self.ledger.end_call(record, CallEnd::failed(&e));
            return Ok(Err(e));
        }
        let ledger = &mut *self.ledger;
        let inherited = Inherited {
            stack: self.ctx.call_stack.clone(),
            deadline: self.ctx.deadline,
            tokens_left: ledger.tokens_left(),
            model_calls_left: ledger.model_calls_left(),
            fuel_left: ledger.fuel_left(),
            trace_budget: ledger.trace_budget.clone(),
        };
        let invocation = self
            .ctx
            .invoker
            .clone()
            .call_nested(name, req, inherited)
            .await;
        // What the callee spent is the caller's: fuel, tokens and model
        // calls all count against the caller's budgets.
        let ledger = &mut *self.ledger;
        ledger.pending_fuel_charge += invocation.trace.fuel_consumed;
        ledger.generated_tokens = ledger
            .generated_tokens
            .saturating_add(invocation.trace.generated_tokens);
        ledger.read_tokens = ledger
            .read_tokens
            .saturating_add(invocation.trace.read_tokens);
        ledger.model_calls = ledger
            .model_calls
            .saturating_add(invocation.trace.model_calls);
        let result = invocation.result.map_err(|e| e.to_guest());
        let end = match &result {
            Ok(resp) => CallEnd {
                bytes_out: resp.content.len() as u64,
                output_sha256: super::response_digest("tessera:expert/experts.call.out", resp),
                result: Some(CallResult::Response(resp.into())),
                ..CallEnd::default()
            },
            Err(e) => CallEnd::failed(e),
        };
        ledger.end_call(
            record,
            CallEnd {
                nested: Some(invocation.trace),
                ..end
            },
        );
        Ok(result)
    }
}
