//! Running one expert on one request: budgets inherited from a caller,
//! the guest call, the answer's size checks and the trace.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::{Ensemble, Expert, InvokeError, InvokeErrorKind};
use crate::audit::receipt::{self, ReceiptExpert, ReceiptModel};
use crate::audit::{AuditStore, Outcome, Ran, Receipt, ReceiptBody, RecordedRequest, Trace};
use crate::bindings::types::{Request, Response};
use crate::bundle::sign::SigningKey;
use crate::caps::{Invoker, ModelCtx, Nested};
use crate::inference::Deltas;

/// The least time a rerun (replay, recompute) gets, whatever the recorded
/// deadline.
pub const RERUN_MIN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(600);

/// Most metadata pairs an answer may carry.
pub const MAX_RESPONSE_METADATA: usize = 64;
/// Most bytes of an answer's metadata, keys and values together.
pub const MAX_RESPONSE_METADATA_BYTES: usize = 64 * 1024;

fn metadata_too_large(response: &Response) -> bool {
    response.metadata.len() > MAX_RESPONSE_METADATA
        || response
            .metadata
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
            > MAX_RESPONSE_METADATA_BYTES
}

/// What a nested invocation inherits from its caller: it runs inside the
/// caller's deadline and what is left of the caller's budgets, so calling
/// another expert can never buy more tokens, model calls or fuel than the
/// caller has (token theft through a callee).
#[derive(Debug, Clone)]
pub(crate) struct Inherited {
    /// Expert names from the outermost caller to the caller (inclusive).
    pub stack: Vec<String>,
    /// The caller's deadline.
    pub deadline: Instant,
    /// Tokens the caller may still generate.
    pub tokens_left: u32,
    /// Model calls the caller may still make.
    pub model_calls_left: u32,
    /// Fuel the caller has left.
    pub fuel_left: u64,
    /// Trace entries the whole request may still record.
    pub trace_budget: Arc<std::sync::atomic::AtomicUsize>,
}

/// How to run an invocation again (replay, recompute): what answers its
/// host calls, and what the record says it saw.
pub(crate) struct Rerun {
    /// Answers `model` calls.
    pub engine: Arc<dyn crate::inference::ModelEngine>,
    /// Answers `experts.call`.
    pub invoker: Arc<dyn Invoker>,
    /// The recorded limits.
    pub limits: crate::sandbox::Limits,
    /// The recorded start: WASI's wall clock.
    pub started_at_unix_ms: u64,
    /// The recorded WASI random seed.
    pub wasi_random_seed: u64,
    /// The trace budget; whoever answers host calls may read from it
    /// which call is being made.
    pub trace_budget: Arc<std::sync::atomic::AtomicUsize>,
}

/// The result of one invocation: the answer (or error) and its trace.
#[derive(Debug)]
pub struct Invocation {
    /// The expert's answer, or why there is none.
    pub result: Result<Response, InvokeError>,
    /// What the invocation did.
    pub trace: Trace,
    /// The host's signed receipt for the answer, when the host has a key
    /// and there is an answer.
    pub receipt: Option<Receipt>,
    /// The record's id in the host's audit store, when it keeps one.
    pub audit_id: Option<i64>,
    /// The request, as its record holds it (outermost invocations only).
    pub request: Option<RecordedRequest>,
}

impl Ensemble {
    /// Run the expert `name` on `req`.
    pub async fn invoke(self: &Arc<Self>, name: &str, req: Request) -> Invocation {
        let Some(expert) = self.expert(name) else {
            return unknown_expert(name, 0);
        };
        self.run(expert, req, None, None).await
    }

    /// Run the expert `name` on `req`, sending the text it generates with
    /// `model.stream-answer` to `deltas` as it is generated. Dropping the
    /// future cancels the invocation and its model calls.
    pub async fn invoke_streaming(
        self: &Arc<Self>,
        name: &str,
        req: Request,
        deltas: Deltas,
    ) -> Invocation {
        let Some(expert) = self.expert(name) else {
            return unknown_expert(name, 0);
        };
        self.run(expert, req, None, Some(deltas)).await
    }

    pub(crate) async fn run(
        self: &Arc<Self>,
        expert: Arc<Expert>,
        req: Request,
        inherited: Option<Inherited>,
        answer_stream: Option<Deltas>,
    ) -> Invocation {
        self.run_with(expert, req, inherited, answer_stream, None)
            .await
    }

    /// Run `expert` on `req` again as a record says it ran: host calls
    /// answered by `setup`'s engine and invoker, WASI's clock and random
    /// from the record, under the recorded limits. Nothing is signed or
    /// stored.
    pub(crate) async fn rerun(
        self: &Arc<Self>,
        expert: Arc<Expert>,
        req: Request,
        setup: Rerun,
    ) -> Invocation {
        self.run_with(expert, req, None, None, Some(setup)).await
    }

    async fn run_with(
        self: &Arc<Self>,
        expert: Arc<Expert>,
        req: Request,
        inherited: Option<Inherited>,
        answer_stream: Option<Deltas>,
        rerun: Option<Rerun>,
    ) -> Invocation {
        let started = Instant::now();
        let started_at_unix_ms = match &rerun {
            Some(r) => r.started_at_unix_ms,
            None => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        };
        let (mut stack, trace_budget) = match (&inherited, &rerun) {
            (Some(i), _) => (i.stack.clone(), Some(i.trace_budget.clone())),
            (None, Some(r)) => (Vec::new(), Some(r.trace_budget.clone())),
            (None, None) => (Vec::new(), None),
        };
        let depth = stack.len() as u32;
        // A rerun keeps the recorded limits (the guest can observe what
        // they allow), but never more than this host grants the expert:
        // the record is the sender's word.
        let mut limits = match &rerun {
            Some(r) => crate::sandbox::Limits {
                memory_bytes: r.limits.memory_bytes.min(expert.limits.memory_bytes),
                deadline_ms: r.limits.deadline_ms,
                fuel: r.limits.fuel.min(expert.limits.fuel),
                model_calls: r.limits.model_calls.min(expert.limits.model_calls),
                generated_tokens: r
                    .limits
                    .generated_tokens
                    .min(expert.limits.generated_tokens),
            },
            None => expert.limits,
        };
        // A rerun may be slower than the original (a validator's machine,
        // a cold model): the deadline is the one limit it does not keep,
        // and the guest cannot observe it.
        let own_deadline = match &rerun {
            Some(_) => started + limits.deadline().max(RERUN_MIN_DEADLINE),
            None => started + limits.deadline(),
        };
        let deadline = inherited
            .as_ref()
            .map_or(own_deadline, |i| i.deadline.min(own_deadline));
        if let Some(i) = &inherited {
            limits.generated_tokens = limits.generated_tokens.min(i.tokens_left);
            limits.model_calls = limits.model_calls.min(i.model_calls_left);
            limits.fuel = limits.fuel.min(i.fuel_left);
        }
        stack.push(expert.name().to_string());

        let call = if let (None, Some(serving)) = (&expert.pre, &expert.adapter) {
            // An adapter bundle: may run the model with its own adapter,
            // nothing else.
            let capabilities = crate::bundle::Capabilities {
                model: crate::bundle::ModelGrant::Default,
                experts: Vec::new(),
                adapters: vec![expert.name().to_string()],
            };
            let mut state =
                self.invocation_state(stack, &capabilities, limits, deadline, trace_budget);
            // Hooks may rewrite the answer, so it cannot be streamed as
            // generated then.
            if serving.hooks.is_none() {
                state.model.answer_stream = answer_stream;
            }
            state.wall_clock_unix_ms = started_at_unix_ms;
            let name = expert.name().to_string();
            let hooks = serving.hooks.as_ref();
            self.call_guest(state, async |store| {
                adapter_turn(store, hooks, name, &req).await
            })
            .await
        } else {
            let Some(pre) = &expert.pre else {
                let error = InvokeError::new(
                    InvokeErrorKind::NotAnExpert,
                    format!(
                        "`{}` is a {} bundle, not an expert; only agents answer requests",
                        expert.name(),
                        expert.manifest.kind.world_name()
                    ),
                );
                return Invocation {
                    trace: Trace::failed(expert.name(), depth, error.kind.as_str(), &error.message),
                    result: Err(error),
                    receipt: None,
                    audit_id: None,
                    request: None,
                };
            };
            let mut state = self.invocation_state(
                stack,
                &expert.manifest.capabilities,
                limits,
                deadline,
                trace_budget,
            );
            if let Some(r) = &rerun {
                state.model = ModelCtx::new(r.engine.clone(), &expert.manifest.capabilities);
                state.experts.set_invoker(r.invoker.clone());
                state.wasi_seed = r.wasi_random_seed;
            }
            state.model.answer_stream = answer_stream;
            state.wall_clock_unix_ms = started_at_unix_ms;
            self.call_guest(state, async |store| {
                let agent = pre.instantiate_async(&mut *store).await?;
                agent.call_handle(store, &req).await
            })
            .await
        };
        self.finish(
            expert,
            req,
            started,
            started_at_unix_ms,
            depth,
            inherited.is_some(),
            rerun.is_some(),
            call,
        )
    }

    /// An invocation from what its guest call left: the answer's size
    /// checks, the trace, the receipt and, for an outermost invocation,
    /// its record in the audit store.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        expert: Arc<Expert>,
        req: Request,
        started: Instant,
        started_at_unix_ms: u64,
        depth: u32,
        nested: bool,
        rerun: bool,
        call: super::guest::GuestCall<Response>,
    ) -> Invocation {
        let wasi_random_seed = call.state.wasi_seed;
        let fuel_left = call.fuel_left;
        let max_response = self.sandbox.policy().max_response_bytes;
        let result = match call.result {
            Ok(response) if response.content.len() > max_response => Err(InvokeError::new(
                InvokeErrorKind::ResponseTooLarge,
                format!(
                    "the answer is {} bytes, over the host's limit of {max_response} bytes",
                    response.content.len()
                ),
            )),
            Ok(response) if metadata_too_large(&response) => Err(InvokeError::new(
                InvokeErrorKind::ResponseTooLarge,
                format!(
                    "the answer carries {} metadata pairs of {} bytes; the host keeps at most {MAX_RESPONSE_METADATA} pairs of {MAX_RESPONSE_METADATA_BYTES} bytes in all",
                    response.metadata.len(),
                    response
                        .metadata
                        .iter()
                        .map(|(k, v)| k.len() + v.len())
                        .sum::<usize>()
                ),
            )),
            other => other,
        };
        let state = call.state;
        let (stdout, stderr, output_dropped_bytes) = state.take_stdio();
        let ran = Ran {
            version: expert.manifest.version.clone(),
            component_sha256: expert.sha256.clone(),
            depth,
            started_at_unix_ms,
            wasi_random_seed,
            duration_us: started.elapsed().as_micros() as u64,
            fuel_left,
            peak_memory_bytes: state.limiter.peak_bytes() as u64,
            stdout,
            stderr,
            output_dropped_bytes,
            outcome: match &result {
                Ok(r) => Outcome::Ok {
                    content_bytes: r.content.len() as u64,
                },
                Err(e) => Outcome::Error {
                    kind: e.kind.as_str().to_string(),
                    message: e.message.clone(),
                },
            },
        };
        let trace = Trace::finish(state.ledger, ran);
        let key = self.host_key().filter(|_| !rerun);
        let store = self.audit_store().filter(|_| !nested && !rerun);
        // The trace's JSON, made once for the receipt's digest and the record.
        let trace_json = (key.is_some() || store.is_some())
            .then(|| serde_json::to_string(&trace).expect("a trace serializes"));
        let receipt = match (&result, key, &trace_json) {
            (Ok(response), Some(key), Some(json)) => {
                Some(self.receipt(&expert, &req, response, &trace, json, &key))
            }
            _ => None,
        };
        let mut invocation = Invocation {
            result,
            trace,
            receipt,
            audit_id: None,
            request: None,
        };
        // Nested invocations are inside their caller's trace.
        if !nested && !rerun {
            invocation.request = Some(RecordedRequest::from(&req));
            if let (Some(store), Some(json)) = (store, trace_json) {
                record(&store, &mut invocation, json);
            }
        }
        invocation
    }

    /// The signed receipt of `expert`'s `response` to `req`.
    fn receipt(
        &self,
        expert: &Expert,
        req: &Request,
        response: &Response,
        trace: &Trace,
        trace_json: &str,
        key: &SigningKey,
    ) -> Receipt {
        // The model the expert's grant names (an upstream's has no weights
        // digest here).
        let model = self.engine_for(&expert.manifest.capabilities);
        let body = ReceiptBody {
            version: receipt::RECEIPT_VERSION,
            request_sha256: receipt::request_sha256(req),
            response_sha256: receipt::response_sha256(response),
            expert: ReceiptExpert {
                name: expert.name().to_string(),
                version: expert.manifest.version.clone(),
                component_sha256: expert.sha256.clone(),
                signer: expert.signer.as_ref().map(|s| s.fingerprint.clone()),
            },
            model: ReceiptModel {
                name: model.model_name().to_string(),
                weights_sha256: model.weights_sha256().map(str::to_string),
            },
            sampling: receipt::sampling_of(trace),
            trace_sha256: receipt::trace_json_sha256(trace_json),
            started_at_unix_ms: trace.started_at_unix_ms,
            duration_us: trace.duration_us,
            host_key: key.public_line(),
        };
        Receipt::sign(body, key)
    }
}

impl Invoker for Ensemble {
    fn call_nested(self: Arc<Self>, name: String, req: Request, from: Inherited) -> Nested {
        Box::pin(async move {
            let Some(expert) = self.expert(&name) else {
                return unknown_expert(&name, from.stack.len() as u32);
            };
            self.run(expert, req, Some(from), None).await
        })
    }
}

/// An adapter bundle's turn: its `pre-request` hook (when it has a
/// component), the model through the bundle's own adapter (a host call in
/// the trace like any expert's), then its `post-response` hook.
async fn adapter_turn(
    store: &mut wasmtime::Store<crate::sandbox::InvocationState>,
    hooks: Option<&crate::bindings::adapter::AdapterPre<crate::sandbox::InvocationState>>,
    name: String,
    req: &Request,
) -> super::guest::GuestResult<Response> {
    use crate::bindings::model::Host as _;
    let instance = match hooks {
        Some(pre) => Some(pre.instantiate_async(&mut *store).await?),
        None => None,
    };
    let req = match &instance {
        Some(hooks) => match hooks.call_pre_request(&mut *store, req).await? {
            Ok(rewritten) => rewritten,
            Err(e) => return Ok(Err(e)),
        },
        None => req.clone(),
    };
    let state = store.data_mut();
    let stream = state.model.answer_stream.is_some();
    let mut view = crate::caps::View {
        ctx: &state.model,
        ledger: &mut state.ledger,
    };
    let completion = if stream {
        view.stream_answer(req.messages, req.sampling, Some(name))
            .await?
    } else {
        view.chat(req.messages, req.sampling, Some(name)).await?
    };
    let completion = match completion {
        Ok(c) => c,
        Err(e) => return Ok(Err(e)),
    };
    let response = Response {
        content: completion.text,
        usage: completion.usage,
        confidence: None,
        metadata: Vec::new(),
    };
    match &instance {
        Some(hooks) => hooks.call_post_response(&mut *store, &response).await,
        None => Ok(Ok(response)),
    }
}

/// Append an outermost invocation (its trace as `trace_json`) to the audit
/// store. An answer that cannot be recorded is withheld: the host
/// acknowledges nothing it has not recorded.
fn record(store: &AuditStore, invocation: &mut Invocation, trace_json: String) {
    let Some(request) = &invocation.request else {
        return;
    };
    let appended = store.append_parts(
        request,
        invocation.result.as_ref().ok().map(Into::into),
        &invocation.trace,
        trace_json,
        invocation.receipt.as_ref(),
    );
    match appended {
        Ok(id) => invocation.audit_id = Some(id),
        Err(e) => {
            tracing::error!(error = %e, "the audit store failed; withholding the answer");
            invocation.receipt = None;
            invocation.result = Err(InvokeError::new(
                InvokeErrorKind::Unrecorded,
                format!(
                    "the host could not record this answer in its audit store, so it is withheld: {e}"
                ),
            ));
        }
    }
}

fn unknown_expert(name: &str, depth: u32) -> Invocation {
    let error = InvokeError::new(
        InvokeErrorKind::UnknownExpert,
        format!("no expert named `{name}` is loaded"),
    );
    Invocation {
        trace: Trace::failed(name, depth, error.kind.as_str(), &error.message),
        result: Err(error),
        receipt: None,
        audit_id: None,
        request: None,
    }
}
