//! `tessera:expert/experts`: experts calling experts, with grants, a depth
//! limit and cycle detection. The callee runs in its own store with its own
//! limits, inside the caller's deadline and what is left of its budgets;
//! its fuel, tokens and model calls are charged to the caller.

use crate::bindings::experts::Host;
use crate::bindings::types::{Error, Request, Response};
use crate::bundle::is_valid_name;
use crate::ensemble::Inherited;
use crate::sandbox::InvocationState;

const INTERFACE: &str = "tessera:expert/experts";

impl InvocationState {
    fn check_call(&self, name: &str) -> Result<(), Error> {
        // RequestOptions first, and never quoted: the name is the guest's, of any
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
                self.expert_name()
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
        let max = self.ensemble.sandbox().policy().max_call_depth;
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

impl Host for InvocationState {
    async fn call(
        &mut self,
        name: String,
        req: Request,
    ) -> wasmtime::Result<Result<Response, Error>> {
        let record = self.begin_call(INTERFACE, "call", super::request_len(&req));
        if let Err(e) = self.check_call(&name) {
            self.end_call(record, 0, None, Some(super::error_line(&e)), None);
            return Ok(Err(e));
        }
        let rec = &self.recorder;
        let inherited = Inherited {
            deadline: self.deadline,
            tokens_left: self
                .limits
                .generated_tokens
                .saturating_sub(rec.generated_tokens),
            model_calls_left: self.limits.model_calls.saturating_sub(rec.model_calls),
            fuel_left: rec
                .initial_fuel
                .saturating_sub(rec.fuel_at_host_entry)
                .saturating_sub(rec.pending_fuel_charge),
            trace_budget: self.trace_budget.clone(),
        };
        let invocation = self
            .ensemble
            .clone()
            .invoke_nested(name, req, self.call_stack.clone(), inherited)
            .await;
        // What the callee spent is the caller's: fuel, tokens and model
        // calls all count against the caller's budgets.
        self.recorder.pending_fuel_charge += invocation.trace.fuel_consumed;
        self.recorder.generated_tokens = self
            .recorder
            .generated_tokens
            .saturating_add(invocation.trace.generated_tokens);
        self.recorder.model_calls = self
            .recorder
            .model_calls
            .saturating_add(invocation.trace.model_calls);
        let result = invocation.result.map_err(|e| e.to_guest());
        let (bytes_out, error) = match &result {
            Ok(resp) => (resp.content.len() as u64, None),
            Err(e) => (0, Some(super::error_line(e))),
        };
        self.end_call(record, bytes_out, None, error, Some(invocation.trace));
        Ok(result)
    }
}
