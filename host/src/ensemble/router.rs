//! Which experts answer a request sent to `tessera/auto`.
//!
//! The default router embeds the request (its last user turn, with the
//! turn before it when the last one is short) and scores every routable
//! expert by the best cosine similarity between that vector and the
//! expert's description and examples ([`super::index`]). The top `k`
//! above [`RouterConfig::threshold`] are chosen (an expert with a routing
//! `margin` only when it leads the threshold and every other candidate by
//! that much); when none is, the base model answers. A router plugin (a bundle of kind `router`) can replace
//! it by configuration; when the plugin fails or runs out of time, the
//! default router decides and the failure is reported in the decision.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::Ensemble;
pub use super::strategy::{AUTO_MODEL, Strategy};
use crate::bindings::types::{ExpertInfo, Request, Role};

/// Default number of experts a decision keeps.
pub const DEFAULT_TOP_K: usize = 3;
/// Default lowest score of a chosen expert. MiniLM cosine similarities of
/// unrelated sentences sit around 0 to 0.15; a request and an example of
/// the same task usually score 0.25 and more (measured on the labelled
/// routing set, `tests/data/routing-labelled.json`).
pub const DEFAULT_THRESHOLD: f32 = 0.2;
/// Default time a router plugin gets before the default router decides.
pub const DEFAULT_PLUGIN_DEADLINE_MS: u64 = 2_000;
/// A last user turn shorter than this (bytes) is routed together with the
/// turn before it ("and in miles?").
pub const SHORT_TURN_BYTES: usize = 48;
/// Most bytes of the earlier turn added as context.
pub const CONTEXT_BYTES: usize = 256;
/// Shortest instruction head routed on by itself ("TL;DR", "Sum up").
pub const MIN_HEAD_BYTES: usize = 5;
/// Largest `top_k` a request or config may ask for.
pub const MAX_TOP_K: usize = 16;

/// How the ensemble routes.
#[derive(Debug, Clone, PartialEq)]
pub struct RouterConfig {
    /// Experts a decision keeps (the fan-out of `moa`, the length of a
    /// cascade).
    pub top_k: usize,
    /// Lowest score of a chosen expert; below it the base model answers.
    pub threshold: f32,
    /// A router plugin (bundle of kind `router`) that decides instead of
    /// the default router.
    pub plugin: Option<String>,
    /// Time the plugin gets.
    pub plugin_deadline: Duration,
    /// The strategy of a plain `tessera/auto`.
    pub default_strategy: Strategy,
    /// The expert that writes the final answer of `moa`.
    pub aggregator: String,
    /// A cascade stops at the first answer at least this confident (0..1).
    pub cascade_threshold: f32,
    /// A cascade escalates a low-confidence answer only to candidates the
    /// router scored within this of the best (a failed stage moves on to
    /// the next candidate whatever its score).
    pub cascade_window: f32,
    /// `moa` has the aggregator write the final answer from the experts'
    /// (generative fusion) instead of selecting one of them.
    pub moa_fuse: bool,
    /// Maps a stage's confidence to how often such answers were right on
    /// a development set; the cascade compares that with its threshold.
    pub cascade_calibration: Option<Arc<super::calibration::Calibration>>,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            top_k: DEFAULT_TOP_K,
            threshold: DEFAULT_THRESHOLD,
            plugin: None,
            plugin_deadline: Duration::from_millis(DEFAULT_PLUGIN_DEADLINE_MS),
            default_strategy: Strategy::Route,
            aggregator: "aggregator".into(),
            cascade_threshold: 0.5,
            cascade_window: super::strategy::DEFAULT_CASCADE_WINDOW,
            moa_fuse: false,
            cascade_calibration: None,
        }
    }
}

/// One chosen expert.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Choice {
    /// The expert.
    pub expert: String,
    /// Its score (cosine similarity for the default router).
    pub score: f32,
}

/// What the router decided, returned to the caller and kept in the trace.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// The strategy that answers.
    pub strategy: Strategy,
    /// Who decided: `default`, or the router plugin's name.
    pub router: String,
    /// The chosen experts, best first; empty when the base model answers.
    pub choices: Vec<Choice>,
    /// The best candidates whatever their score (at most `top_k`), for
    /// people reading the decision.
    pub candidates: Vec<Choice>,
    /// Score below which experts were not chosen.
    pub threshold: f32,
    /// Why the router plugin's decision was not used, when it was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugin_error: Option<String>,
    /// Time the decision took, microseconds (the query embedding included).
    pub duration_us: u64,
}

impl Decision {
    /// The best chosen expert, if any.
    pub fn top(&self) -> Option<&str> {
        self.choices.first().map(|c| c.expert.as_str())
    }
}

/// Why no decision could be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// The request has no user message to route on.
    #[error("the request has no user message to route on")]
    NoUserMessage,
    /// The embedding model is missing or failed.
    #[error("the router needs the embedding model: {0}")]
    Embedder(String),
}

/// The text routed on: the last user turn, with the turn before it when
/// the last one is short.
pub fn query_text(req: &Request) -> Option<String> {
    let last = req
        .messages
        .iter()
        .rposition(|m| matches!(m.role, Role::User))?;
    let question = req.messages[last].content.trim();
    if question.len() >= SHORT_TURN_BYTES || last == 0 {
        return Some(question.to_string());
    }
    let context = req.messages[..last]
        .iter()
        .rev()
        .find(|m| matches!(m.role, Role::User | Role::Assistant))
        .map(|m| crate::text::cut(m.content.trim(), CONTEXT_BYTES));
    Some(match context {
        Some(context) if !context.is_empty() => format!("{context}\n{question}"),
        _ => question.to_string(),
    })
}

/// What is embedded for a query: the whole text and, when the text is
/// long, its head (up to the first colon, line break or sentence end),
/// which is usually the instruction ("Summarise this:", "Extract the name
/// and age as JSON:") that a long passage after it would drown out. An
/// expert scores its best match against either.
pub fn query_views(query: &str) -> Vec<String> {
    let mut views = vec![query.to_string()];
    let head_end = query
        .char_indices()
        .find(|&(i, c)| {
            matches!(c, ':' | '\n')
                || (matches!(c, '.' | '?' | '!') && query[i + 1..].starts_with(char::is_whitespace))
        })
        .map(|(i, _)| i);
    if let Some(end) = head_end {
        let head = query[..end].trim();
        if head.len() >= MIN_HEAD_BYTES && head.len() * 2 <= query.len() {
            views.push(head.to_string());
        }
    }
    views
}

impl Ensemble {
    /// Decide who answers `req` under `strategy`.
    pub async fn route(
        self: &Arc<Self>,
        req: &Request,
        strategy: Strategy,
    ) -> Result<Decision, RouteError> {
        let started = Instant::now();
        let config = self.router_config();
        let query = query_text(req).ok_or(RouteError::NoUserMessage)?;
        let mut plugin_error = None;
        if let Some(plugin) = &config.plugin {
            match self.route_with_plugin(plugin, req, &config).await {
                Ok((choices, candidates)) => {
                    return Ok(Decision {
                        strategy,
                        router: plugin.clone(),
                        choices,
                        candidates,
                        threshold: config.threshold,
                        plugin_error: None,
                        duration_us: started.elapsed().as_micros() as u64,
                    });
                }
                Err(e) => {
                    tracing::warn!(router = %plugin, error = %e, "router plugin failed; the default router decides");
                    plugin_error = Some(e);
                }
            }
        }
        if self.model().embedder_name().is_none() {
            return Err(RouteError::Embedder("no embedding model is loaded".into()));
        }
        let vectors = self
            .model()
            .embed(query_views(&query))
            .await
            .map_err(|e| RouteError::Embedder(e.to_string()))?;
        if vectors.is_empty() {
            return Err(RouteError::Embedder("no vector returned".into()));
        }
        let ranked = self.routing_index().rank(&vectors, config.top_k);
        let candidates: Vec<Choice> = ranked
            .iter()
            .map(|(e, score)| Choice {
                expert: e.name.clone(),
                score: *score,
            })
            .collect();
        let choices = candidates
            .iter()
            .filter(|c| {
                let margin = self
                    .expert(&c.expert)
                    .map_or(0.0, |e| e.manifest.routing.margin);
                let best_other = candidates
                    .iter()
                    .filter(|o| o.expert != c.expert)
                    .map(|o| o.score)
                    .fold(f32::NEG_INFINITY, f32::max);
                c.score >= config.threshold + margin
                    && (margin == 0.0 || c.score >= best_other + margin)
            })
            .cloned()
            .collect();
        Ok(Decision {
            strategy,
            router: "default".into(),
            choices,
            candidates,
            threshold: config.threshold,
            plugin_error,
            duration_us: started.elapsed().as_micros() as u64,
        })
    }

    /// Ask the router plugin `name`; its choices must be routable experts.
    async fn route_with_plugin(
        self: &Arc<Self>,
        name: &str,
        req: &Request,
        config: &RouterConfig,
    ) -> Result<(Vec<Choice>, Vec<Choice>), String> {
        let router = self
            .expert(name)
            .ok_or_else(|| format!("no router plugin named `{name}` is loaded"))?;
        let pre = router.router_pre.as_ref().ok_or_else(|| {
            format!(
                "`{name}` is a {} bundle, not a router",
                router.manifest.kind.world_name()
            )
        })?;
        let candidates: Vec<ExpertInfo> = self
            .routing_index()
            .entries()
            .iter()
            .map(|e| e.info.clone())
            .collect();
        let mut limits = router.limits;
        limits.deadline_ms = limits
            .deadline_ms
            .min(config.plugin_deadline.as_millis() as u64);
        let deadline = Instant::now() + limits.deadline();
        let state = self.invocation_state(
            vec![name.to_string()],
            &router.manifest.capabilities,
            limits,
            deadline,
            None,
        );
        let call = self
            .call_guest(state, async |store| {
                let instance = pre.instantiate_async(&mut *store).await?;
                instance.call_route(store, req, &candidates).await
            })
            .await;
        let ranked = call.result.map_err(|e| match e.kind {
            super::InvokeErrorKind::Deadline => {
                format!("`{name}` did not decide within {} ms", limits.deadline_ms)
            }
            _ => format!("`{name}` failed: {e}"),
        })?;
        let mut choices: Vec<Choice> = Vec::new();
        for choice in ranked {
            if !choice.score.is_finite() {
                return Err(format!(
                    "`{name}` gave `{}` a score that is not a number",
                    choice.name
                ));
            }
            if candidates.iter().any(|c| c.name == choice.name)
                && !choices.iter().any(|c| c.expert == choice.name)
            {
                choices.push(Choice {
                    expert: choice.name,
                    score: choice.score,
                });
            }
        }
        choices.sort_by(|a, b| b.score.total_cmp(&a.score));
        choices.truncate(config.top_k);
        Ok((choices.clone(), choices))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::types::Message;

    fn request(turns: &[(Role, &str)]) -> Request {
        Request::from_messages(
            turns
                .iter()
                .map(|(role, content)| Message {
                    role: *role,
                    content: content.to_string(),
                })
                .collect(),
        )
    }

    #[test]
    fn a_short_follow_up_is_routed_with_the_turn_before_it() {
        let long = "Please convert twenty five degrees celsius to fahrenheit for me";
        assert_eq!(
            query_text(&request(&[(Role::System, "be nice"), (Role::User, long)])).unwrap(),
            long
        );
        assert_eq!(
            query_text(&request(&[
                (Role::User, "convert 5 km to miles"),
                (Role::Assistant, "3.11 miles"),
                (Role::User, "and 10 km?"),
            ]))
            .unwrap(),
            "3.11 miles\nand 10 km?"
        );
        assert!(query_text(&request(&[(Role::System, "x")])).is_none());
    }

    #[test]
    fn a_long_request_is_also_routed_on_its_instruction() {
        let views = query_views("Summarise this: the council met on Tuesday and voted on it.");
        assert_eq!(views[1], "Summarise this");
        assert_eq!(query_views("What is 2 + 2?").len(), 1);
        let views = query_views("TL;DR: The city library is extending its opening hours.");
        assert_eq!(views[1], "TL;DR");
        assert_eq!(query_views("Q: what is the capital of France?").len(), 1);
    }

    #[test]
    fn strategies_parse_from_their_names() {
        for s in Strategy::ALL {
            assert_eq!(s.as_str().parse::<Strategy>().unwrap(), s);
        }
        assert!("fastest".parse::<Strategy>().unwrap_err().contains("moa"));
    }
}
