//! The continuous-batching scheduler: sequences, tokens and budgets, over
//! any [`BatchModel`].
//!
//! One OS thread runs it. Each round:
//!
//! 1. embeds one chunk of the oldest embedding job, so that a request of
//!    thousands of texts holds the thread for one chunk at a time;
//! 2. drops jobs whose caller has gone (cancellation: the reply receiver
//!    was dropped, e.g. the expert hit its deadline);
//! 3. admits queued jobs round-robin across owners (fair queueing) while
//!    the batch has room and the KV budget covers the job's prompt plus its
//!    `max_tokens`;
//! 4. runs one forward pass over every active sequence: one token for each
//!    decoding sequence, prompt chunks for the others (chunked prefill);
//! 5. samples, checks stop conditions, and answers the finished jobs.
//!
//! Sequences join and leave between steps; nobody waits for a batch to
//! drain. A panic inside a round fails that round's sequences only.

use std::collections::{BTreeMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;

use super::batch::{BatchModel, Detokenize, Embed, ModelShape, StepInput};
use super::decode::Decode;
use super::lora::LoraAdapter;
use super::sampler::log_softmax_at;
use super::{Deltas, Finish, Generation, ModelError, SamplingParams};

mod stats;
#[cfg(test)]
mod tests;

pub(super) use stats::Counters;
pub use stats::EngineStats;
use stats::StoppedOnExit;

/// Texts embedded per scheduler round. MiniLM takes ~3 ms a text here, so
/// a chunk holds the engine for tens of milliseconds at most before a
/// generation step runs.
pub const EMBED_CHUNK: usize = 16;
/// Bytes of a text the embedder reads. MiniLM sees its first 128 tokens
/// only; a WordPiece token covers at most 100 characters, so this is past
/// what any real text puts in 128 tokens, and keeps tokenizing a megabyte
/// of text off the engine thread.
pub const MAX_EMBED_TEXT_BYTES: usize = 16 * 1024;

/// How the scheduler batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most sequences in one forward pass.
    pub max_batch: usize,
    /// Most prompt tokens fed per step, across sequences.
    pub prefill_chunk: usize,
    /// Memory for KV caches, in bytes. A job reserves its prompt plus its
    /// `max_tokens` when admitted.
    pub kv_budget_bytes: usize,
}

/// Work for the scheduler, and where its answer goes.
pub(super) struct Job {
    /// Whose turn it is: jobs are admitted round-robin across owners.
    pub owner: String,
    pub kind: JobKind,
    pub reply: Reply,
    /// The LoRA adapter the job runs with (generation and scoring).
    pub adapter: Option<Arc<LoraAdapter>>,
}

pub(super) type Reply = oneshot::Sender<Result<Output, ModelError>>;

/// What a job asks for; prompts are token ids.
pub(super) enum JobKind {
    Generate {
        prompt: Vec<u32>,
        params: SamplingParams,
        stream: Option<Deltas>,
    },
    /// The log-likelihood of `tokens[from..]` after `tokens[..from]`.
    Score {
        tokens: Vec<u32>,
        from: usize,
    },
    /// The log-likelihood of each of `continuations` after `prompt`: the
    /// prompt is read once, and the cache goes back to it between
    /// continuations. Never empty.
    Choices {
        prompt: Vec<u32>,
        continuations: Vec<Vec<u32>>,
    },
    /// The logits of the token after `tokens`.
    Logits {
        tokens: Vec<u32>,
    },
    Embed {
        texts: Vec<String>,
    },
}

/// How the model rates one token of a scored continuation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenScore {
    /// `log p(token)`.
    pub logprob: f32,
    /// The model's most likely token there.
    pub best: u32,
    /// Its log-probability.
    pub best_logprob: f32,
}

/// A job's answer, by kind.
#[derive(Debug)]
pub(super) enum Output {
    Generation(Generation),
    /// One entry per scored token.
    Score(Vec<TokenScore>),
    /// One [`Output::Score`] per continuation, in order.
    Choices(Vec<Vec<TokenScore>>),
    Logits(Vec<f32>),
    Embeddings(Vec<Vec<f32>>),
}

/// What a running sequence is for.
// One per running sequence, built once and never moved in a hot loop: the
// size difference (the sampler's RNG state) does not matter.
#[allow(clippy::large_enum_variant)]
enum Purpose {
    Generate(Decode),
    Score {
        from: usize,
        scored: Vec<TokenScore>,
    },
    /// Scores the continuation after `tokens[..from]`, then goes back to
    /// the prompt for the next one.
    Choices {
        from: usize,
        scored: Vec<TokenScore>,
        next: VecDeque<Vec<u32>>,
        done: Vec<Vec<TokenScore>>,
    },
    Logits,
}

struct EmbedJob {
    texts: Vec<String>,
    done: Vec<Vec<f32>>,
    reply: Reply,
}

struct Sequence<C> {
    reply: Reply,
    /// Prompt and generated tokens.
    tokens: Vec<u32>,
    cache: C,
    /// Tokens already in `cache`.
    fed: usize,
    /// KV tokens reserved against the budget.
    reserved: usize,
    purpose: Purpose,
    /// Its adapter; the scheduler holds it until the sequence ends, so
    /// evicting it from the engine's set never pulls it from under a
    /// running sequence.
    adapter: Option<Arc<LoraAdapter>>,
}

impl<C> Sequence<C> {
    /// Tokens not yet in the cache.
    fn pending(&self) -> usize {
        self.tokens.len() - self.fed
    }
}

/// The scheduler over model `M`, whose answers `D` turns into text.
pub(super) struct Scheduler<M: BatchModel, D> {
    model: M,
    shape: ModelShape,
    embedder: Option<Box<dyn Embed + Send>>,
    detokenizer: Arc<D>,
    limits: Limits,
    /// Waiting jobs per owner; admitted round-robin.
    queues: BTreeMap<String, VecDeque<Job>>,
    /// The owner admitted last.
    last_owner: Option<String>,
    active: Vec<Sequence<M::Cache>>,
    /// Embedding jobs, oldest first; one chunk is embedded per round.
    embeds: VecDeque<EmbedJob>,
    budget_tokens: usize,
    reserved_tokens: usize,
    seed: u64,
    stats: Arc<Counters>,
}

impl<M: BatchModel, D: Detokenize> Scheduler<M, D> {
    pub(super) fn new(
        model: M,
        embedder: Option<Box<dyn Embed + Send>>,
        detokenizer: Arc<D>,
        limits: Limits,
        stats: Arc<Counters>,
    ) -> Self {
        let shape = model.shape();
        let budget_tokens = limits.kv_budget_bytes / shape.kv_bytes_per_token.max(1);
        stats.budget.store(budget_tokens, Ordering::Relaxed);
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Scheduler {
            model,
            shape,
            embedder,
            detokenizer,
            limits,
            queues: BTreeMap::new(),
            last_owner: None,
            active: Vec::new(),
            embeds: VecDeque::new(),
            budget_tokens,
            reserved_tokens: 0,
            seed,
            stats,
        }
    }

    /// Serve `jobs` until every sender is gone.
    pub(super) fn run(mut self, jobs: mpsc::Receiver<Job>) {
        let _stopped = StoppedOnExit(self.stats.clone());
        self.publish();
        loop {
            if self.active.is_empty() && self.queues.is_empty() && self.embeds.is_empty() {
                match jobs.recv() {
                    Ok(job) => self.enqueue(job),
                    Err(_) => return,
                }
            }
            while let Ok(job) = jobs.try_recv() {
                self.enqueue(job);
            }
            self.round();
        }
    }

    /// One round: embed a chunk, drop cancelled jobs, admit, run a step. A
    /// panic anywhere in it (a kernel bug, an unforeseen input) fails only
    /// the sequences that were running, with the cause; queued jobs and
    /// later requests are served as if nothing happened.
    fn round(&mut self) {
        self.embed_chunk();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            self.drop_cancelled();
            self.admit();
            if !self.active.is_empty() {
                self.step();
            }
        }));
        if let Err(panic) = outcome {
            self.recover(panic_message(panic.as_ref()));
        }
        self.publish();
    }

    /// Fail the running sequences after a panic and free what they held.
    /// The model's weights are only read during a step, and each sequence
    /// owns its KV cache, so dropping the sequences leaves nothing half
    /// written.
    fn recover(&mut self, cause: String) {
        let failed = self.active.len();
        tracing::error!(
            sequences = failed,
            "the engine failed during a step and recovered; the running requests get an error: {cause}"
        );
        for seq in self.active.drain(..) {
            let _ = seq.reply.send(Err(ModelError::Failed(format!(
                "the engine failed while generating this answer ({cause}); it recovered and serves other requests, retry this one"
            ))));
        }
        self.reserved_tokens = 0;
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        *self
            .stats
            .last_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(cause);
    }

    fn publish(&self) {
        let s = &self.stats;
        s.active.store(self.active.len(), Ordering::Relaxed);
        s.queued.store(
            self.queues.values().map(VecDeque::len).sum(),
            Ordering::Relaxed,
        );
        s.reserved.store(self.reserved_tokens, Ordering::Relaxed);
        s.budget.store(self.budget_tokens, Ordering::Relaxed);
    }

    fn enqueue(&mut self, job: Job) {
        // Embeddings are batched on their own, a chunk per round between
        // generation steps (see `embed_chunk`).
        if let JobKind::Embed { texts } = job.kind {
            self.embeds.push_back(EmbedJob {
                texts,
                done: Vec::new(),
                reply: job.reply,
            });
            return;
        }
        self.queues
            .entry(job.owner.clone())
            .or_default()
            .push_back(job);
    }

    /// Embed the next chunk of the oldest embedding job; answer it when
    /// all its texts are done.
    fn embed_chunk(&mut self) {
        let Some(job) = self.embeds.front_mut() else {
            return;
        };
        if job.reply.is_closed() {
            self.embeds.pop_front();
            self.stats.cancelled.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let Some(embedder) = &self.embedder else {
            let job = self.embeds.pop_front().expect("checked above");
            let _ = job.reply.send(Err(ModelError::NotLoaded(
                "no embedding model is loaded; run `tessera models pull`".into(),
            )));
            return;
        };
        let from = job.done.len();
        let to = (from + EMBED_CHUNK).min(job.texts.len());
        let chunk: Vec<String> = job.texts[from..to]
            .iter()
            .map(|t| crate::text::cut(t, MAX_EMBED_TEXT_BYTES).to_string())
            .collect();
        let result = catch_unwind(AssertUnwindSafe(|| embedder.embed(&chunk))).unwrap_or_else(
            |panic| {
                let cause = panic_message(panic.as_ref());
                tracing::error!("the embedder failed and recovered: {cause}");
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                Err(ModelError::Failed(format!(
                    "the embedding model failed on this input ({cause}); it recovered and serves other requests"
                )))
            },
        );
        let job = self.embeds.front_mut().expect("checked above");
        match result {
            Ok(vectors) => {
                job.done.extend(vectors);
                if job.done.len() == job.texts.len() {
                    let job = self.embeds.pop_front().expect("checked above");
                    let _ = job.reply.send(Ok(Output::Embeddings(job.done)));
                }
            }
            Err(e) => {
                let job = self.embeds.pop_front().expect("checked above");
                let _ = job.reply.send(Err(e));
            }
        }
    }

    fn drop_cancelled(&mut self) {
        let mut freed = 0;
        let mut cancelled = 0;
        self.active.retain(|s| {
            let gone = s.reply.is_closed();
            if gone {
                freed += s.reserved;
                cancelled += 1;
            }
            !gone
        });
        self.reserved_tokens -= freed;
        for queue in self.queues.values_mut() {
            let before = queue.len();
            queue.retain(|j| !j.reply.is_closed());
            cancelled += before - queue.len();
        }
        self.stats
            .cancelled
            .fetch_add(cancelled as u64, Ordering::Relaxed);
        self.queues.retain(|_, q| !q.is_empty());
    }

    /// The owner after `last_owner` with work waiting, wrapping around.
    fn next_owner(&self) -> Option<String> {
        let after = self.last_owner.as_ref().and_then(|last| {
            self.queues
                .range::<String, _>((std::ops::Bound::Excluded(last), std::ops::Bound::Unbounded))
                .next()
        });
        after
            .or_else(|| self.queues.iter().next())
            .map(|(owner, _)| owner.clone())
    }

    /// Why `job` can never run, if it cannot; `need` is the KV tokens it
    /// reserves.
    fn refusal(&self, tokens: &[u32], need: usize) -> Option<ModelError> {
        let ModelShape {
            context,
            vocab,
            kv_bytes_per_token,
        } = self.shape;
        let len = tokens.len();
        if let Some(bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
            Some(ModelError::InvalidInput(format!(
                "token id {bad} is outside the model's vocabulary of {vocab} tokens"
            )))
        } else if len >= context {
            Some(ModelError::InvalidInput(format!(
                "the prompt is {len} tokens; the model's context holds {context}, and at least one must be left to answer"
            )))
        } else if need > self.budget_tokens {
            Some(ModelError::LimitExceeded(format!(
                "this request needs a KV cache of {need} tokens ({} MiB), more than the engine's whole KV budget of {} MiB; lower max-tokens or shorten the prompt, or start tessera with a larger --kv-budget-mib",
                (need * kv_bytes_per_token) >> 20,
                self.limits.kv_budget_bytes >> 20
            )))
        } else {
            None
        }
    }

    fn admit(&mut self) {
        let context = self.shape.context;
        while self.active.len() < self.limits.max_batch {
            let Some(owner) = self.next_owner() else {
                return;
            };
            let queue = &self.queues[&owner];
            let job = queue.front().expect("queues are never empty");
            let longest;
            let (tokens, extra) = match &job.kind {
                JobKind::Generate { prompt, params, .. } => (prompt, params.max_tokens as usize),
                JobKind::Score { tokens, .. } | JobKind::Logits { tokens } => (tokens, 0),
                // The cache holds the prompt and one continuation at a time.
                JobKind::Choices {
                    prompt,
                    continuations,
                } => {
                    longest = continuations
                        .iter()
                        .max_by_key(|c| c.len())
                        .map(|c| [prompt.as_slice(), c].concat())
                        .unwrap_or_default();
                    (&longest, 0)
                }
                JobKind::Embed { .. } => unreachable!("embeddings are queued apart"),
            };
            let need = (tokens.len() + extra).min(context);
            let refusal = match &job.kind {
                JobKind::Choices { continuations, .. }
                    if continuations.is_empty() || continuations.iter().any(Vec::is_empty) =>
                {
                    Some(ModelError::InvalidInput(
                        "there are no continuations to score, or one is empty".into(),
                    ))
                }
                JobKind::Choices { continuations, .. } => continuations
                    .iter()
                    .find_map(|c| self.refusal(c, 0))
                    .or_else(|| self.refusal(tokens, need)),
                _ => self.refusal(tokens, need),
            };
            if refusal.is_none() && self.reserved_tokens + need > self.budget_tokens {
                // Wait for running sequences to finish and free their cache.
                return;
            }
            let queue = self.queues.get_mut(&owner).expect("owner has a queue");
            let job = queue.pop_front().expect("checked above");
            if queue.is_empty() {
                self.queues.remove(&owner);
            }
            self.last_owner = Some(owner);
            if let Some(e) = refusal {
                let _ = job.reply.send(Err(e));
                continue;
            }
            self.seed = self.seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let (tokens, purpose) = match job.kind {
                JobKind::Generate {
                    prompt,
                    params,
                    stream,
                } => {
                    let max_tokens = (params.max_tokens as usize).min(context - prompt.len());
                    if max_tokens == 0 {
                        let _ = job.reply.send(Ok(Output::Generation(Generation {
                            text: String::new(),
                            finish: Finish::Length,
                            prompt_tokens: prompt.len() as u32,
                            completion_tokens: 0,
                            token_logprobs: Vec::new(),
                            token_ids: Vec::new(),
                            seed: params.seed.unwrap_or(self.seed),
                        })));
                        continue;
                    }
                    let decode = Decode::new(&params, self.seed, prompt.len(), max_tokens, stream);
                    (prompt, Purpose::Generate(decode))
                }
                JobKind::Score { tokens, from } => (
                    tokens,
                    Purpose::Score {
                        from,
                        scored: Vec::new(),
                    },
                ),
                JobKind::Choices {
                    prompt,
                    continuations,
                } => {
                    let mut next = VecDeque::from(continuations);
                    let first = next.pop_front().expect("refused when empty");
                    let from = prompt.len();
                    (
                        [prompt, first].concat(),
                        Purpose::Choices {
                            from,
                            scored: Vec::new(),
                            next,
                            done: Vec::new(),
                        },
                    )
                }
                JobKind::Logits { tokens } => (tokens, Purpose::Logits),
                JobKind::Embed { .. } => unreachable!("embeddings are queued apart"),
            };
            self.reserved_tokens += need;
            self.active.push(Sequence {
                reply: job.reply,
                tokens,
                cache: self.model.new_cache(),
                fed: 0,
                reserved: need,
                purpose,
                adapter: job.adapter,
            });
        }
    }

    /// How many tokens each active sequence feeds this step: one for each
    /// decoding sequence; prompts share the rest of the chunk budget, at
    /// least one token each so none starves.
    fn feeds(&self) -> Vec<usize> {
        let decoding = self.active.iter().filter(|s| s.pending() == 1).count();
        let mut budget = self.limits.prefill_chunk.saturating_sub(decoding);
        self.active
            .iter()
            .map(|s| {
                let pending = s.pending();
                if pending <= 1 {
                    return pending;
                }
                let n = pending.min(budget.max(1));
                budget = budget.saturating_sub(n);
                n
            })
            .collect()
    }

    /// One forward pass over every active sequence, then sampling.
    fn step(&mut self) {
        let feeds = self.feeds();
        let logits = {
            let mut inputs: Vec<StepInput<'_, M::Cache>> = self
                .active
                .iter_mut()
                .zip(&feeds)
                .map(|(s, &n)| StepInput {
                    tokens: &s.tokens[s.fed..s.fed + n],
                    cache: &mut s.cache,
                    all_logits: matches!(
                        s.purpose,
                        Purpose::Score { .. } | Purpose::Choices { .. }
                    ),
                    adapter: s.adapter.as_deref(),
                })
                .collect();
            self.model.step(&mut inputs)
        };
        for (seq, n) in self.active.iter_mut().zip(feeds) {
            seq.fed += n;
        }
        self.stats.steps.fetch_add(1, Ordering::Relaxed);
        let generating = self
            .active
            .iter()
            .filter(|s| matches!(s.purpose, Purpose::Generate(_)) && s.pending() == 0)
            .count();
        self.stats
            .generated
            .fetch_add(generating as u64, Ordering::Relaxed);

        let mut finished = Vec::new();
        for (index, (seq, rows)) in self.active.iter_mut().zip(logits).enumerate() {
            if let Some(output) = advance(&self.model, seq, rows, self.detokenizer.as_ref()) {
                finished.push((index, output));
            }
        }
        let mut replies = Vec::with_capacity(finished.len());
        for (index, output) in finished.into_iter().rev() {
            let seq = self.active.swap_remove(index);
            self.reserved_tokens -= seq.reserved;
            replies.push((seq.reply, output));
        }
        // Callers see the stats of the engine they were answered by.
        self.publish();
        for (reply, output) in replies {
            let _ = reply.send(Ok(output));
        }
    }
}

/// Score the tokens that `rows` (logits of the step that fed
/// `tokens[..fed]`'s last `rows.len()` tokens) predict, from `from` on.
fn score_rows(
    tokens: &[u32],
    fed: usize,
    from: usize,
    rows: &[Vec<f32>],
    scored: &mut Vec<TokenScore>,
) {
    // Row j predicts the token after position fed_from + j.
    let fed_from = fed - rows.len();
    for (j, row) in rows.iter().enumerate() {
        let next = fed_from + j + 1;
        if next >= from && next < tokens.len() {
            let token = tokens[next];
            let best = super::sampler::argmax(row);
            scored.push(TokenScore {
                logprob: log_softmax_at(row, token as usize),
                best,
                best_logprob: log_softmax_at(row, best as usize),
            });
        }
    }
}

/// The text of a panic's payload.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Take one step's logits for `seq`; returns its answer when it is done.
fn advance<M: BatchModel>(
    model: &M,
    seq: &mut Sequence<M::Cache>,
    rows: Vec<Vec<f32>>,
    detokenizer: &impl Detokenize,
) -> Option<Output> {
    let done_feeding = seq.pending() == 0;
    match &mut seq.purpose {
        Purpose::Score { from, scored } => {
            score_rows(&seq.tokens, seq.fed, *from, &rows, scored);
            done_feeding.then(|| Output::Score(std::mem::take(scored)))
        }
        Purpose::Choices {
            from,
            scored,
            next,
            done,
        } => {
            score_rows(&seq.tokens, seq.fed, *from, &rows, scored);
            if !done_feeding {
                return None;
            }
            done.push(std::mem::take(scored));
            let Some(continuation) = next.pop_front() else {
                return Some(Output::Choices(std::mem::take(done)));
            };
            // Back to the prompt less its last token, whose logits predict
            // the next continuation's first token: fed again with it.
            let keep = from.saturating_sub(1);
            model.truncate(&mut seq.cache, keep);
            seq.tokens.truncate(*from);
            seq.tokens.extend(continuation);
            seq.fed = keep;
            None
        }
        Purpose::Logits => done_feeding
            .then(|| rows.into_iter().last().map(Output::Logits))
            .flatten(),
        Purpose::Generate(decode) => {
            if !done_feeding {
                return None;
            }
            let row = rows.last().expect("one row per step");
            decode
                .advance(&mut seq.tokens, row, detokenizer)
                .map(Output::Generation)
        }
    }
}
