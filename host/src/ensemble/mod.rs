//! The experts loaded on a host and how a request reaches one of them.
//!
//! [`Ensemble::invoke`] runs an expert in a fresh store, with its limits,
//! and returns its answer together with the [`Trace`] of what it did.

pub mod answer;
pub mod calibration;
mod error;
mod guest;
pub mod index;
mod invoke;
pub mod router;
pub mod strategy;
pub mod watch;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

pub use answer::{Answer, AnswerError, Ask, Report, Target, UnknownModel};
pub use error::{InvokeError, InvokeErrorKind};
pub use index::RoutingIndex;
pub(crate) use invoke::{Inherited, Rerun};
pub use invoke::{Invocation, MAX_RESPONSE_METADATA, MAX_RESPONSE_METADATA_BYTES};
pub use router::{Decision, RouteError, RouterConfig, Strategy};

use crate::audit::AuditStore;
use crate::bindings::adapter::AdapterPre;
use crate::bindings::agent::AgentPre;
use crate::bindings::router::RouterPre;
use crate::bindings::types::ExpertInfo;
use crate::bundle::sign::{Signer, SigningKey, TrustError, TrustedKeys};
use crate::bundle::{
    Bundle, BundleKind, MAX_EXAMPLES, MAX_TAGS, Manifest, check_description, is_valid_name,
    is_valid_version,
};
use crate::inference::ModelEngine;
use crate::sandbox::{InvocationState, Limits, LoadError, LoadedComponent, Sandbox};

/// Deadline of the `describe` call made at load time.
pub const DESCRIBE_DEADLINE_MS: u64 = 2_000;
/// Fuel of the `describe` call made at load time.
pub const DESCRIBE_FUEL: u64 = 100_000_000;

/// An expert loaded on the host.
pub struct Expert {
    /// Its manifest.
    pub manifest: Manifest,
    /// What it said about itself at load time, merged with the manifest
    /// (the manifest wins on name and version; tags and examples are
    /// joined).
    pub info: ExpertInfo,
    /// The compiled component (none for an adapter bundle that ships
    /// only weights).
    pub component: Option<LoadedComponent>,
    /// What names its code (and, for an adapter bundle, its weights) in
    /// traces and receipts: the component's sha256, or an adapter
    /// bundle's [`crate::bundle::adapter_digest`].
    pub sha256: String,
    /// For an adapter bundle: how it is served.
    pub adapter: Option<AdapterServing>,
    /// The limits its invocations run under: the manifest's, clamped by
    /// the host policy once, at load.
    pub limits: Limits,
    /// Who signed its `.tessera` pack, if it came signed.
    pub signer: Option<Signer>,
    pre: Option<AgentPre<InvocationState>>,
    router_pre: Option<RouterPre<InvocationState>>,
}

impl Expert {
    /// The expert's name.
    pub fn name(&self) -> &str {
        &self.manifest.name
    }
}

/// An adapter bundle as the host serves it: its weights registered with
/// the engine under the bundle's name, its hooks (if it has a component)
/// run around each generation.
pub struct AdapterServing {
    /// The `pre-request` / `post-response` hooks.
    pub(crate) hooks: Option<AdapterPre<InvocationState>>,
    /// The checked copy of its PEFT files the engine loads (and reloads
    /// after an eviction) from; removed with the expert.
    _files: tempfile::TempDir,
}

/// Why a bundle could not be added to the ensemble.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AddError {
    /// The component could not be loaded.
    #[error("{name}: {reason}")]
    Load {
        /// The bundle's name.
        name: String,
        /// What went wrong.
        reason: LoadError,
    },
    /// The manifest's kind and the component's world differ.
    #[error(
        "{name}: the manifest says kind = \"{declared}\" but the component implements the {actual} world"
    )]
    KindMismatch {
        /// The bundle's name.
        name: String,
        /// From the manifest.
        declared: &'static str,
        /// From the component.
        actual: &'static str,
    },
    /// The host requires signatures and this bundle's is missing or not
    /// trusted.
    #[error("{name}: refused: {reason}")]
    Untrusted {
        /// The bundle's name.
        name: String,
        /// Why.
        reason: TrustError,
    },
    /// `describe` failed.
    #[error("{name}: `describe` failed: {reason}")]
    Describe {
        /// The bundle's name.
        name: String,
        /// What went wrong.
        reason: InvokeError,
    },
    /// `describe()` gave another name than the manifest.
    #[error(
        "the manifest names the expert `{manifest}` but its describe() says `{described}`; the manifest's name is the expert's name: make describe() return the same name (or an empty one)"
    )]
    NameMismatch {
        /// The manifest's name.
        manifest: String,
        /// What `describe()` returned.
        described: String,
    },
    /// The name belongs to something else on this host.
    #[error("`{name}` cannot be an expert's name: {why}; rename it in its tessera.toml")]
    ReservedName {
        /// The name.
        name: String,
        /// Whose it is.
        why: String,
    },
    /// An adapter bundle's weights cannot be served.
    #[error("{name}: {reason}")]
    Adapter {
        /// The bundle.
        name: String,
        /// Why.
        reason: String,
    },
    /// The manifest's `model` names a model this host does not serve.
    #[error(
        "{name}: its tessera.toml asks for model `{model}`, which this host does not serve (it serves: {known}); configure it (`tessera serve --upstream {model}=URL`) or set `model = true` under [capabilities] for the default model"
    )]
    UnknownModel {
        /// The bundle's name.
        name: String,
        /// The model it asks for.
        model: String,
        /// What the host serves.
        known: String,
    },
    /// `describe()` returned more than the host accepts.
    #[error("{name}: describe() returned {field} that {problem}")]
    DescribeTooLarge {
        /// The bundle's name.
        name: String,
        /// Which field.
        field: &'static str,
        /// What is over the cap.
        problem: String,
    },
}

/// Pool slots kept out of request reservations, for loading bundles
/// (`describe`) and router plugins while requests hold the rest.
pub const LOAD_SLOTS: u32 = 2;

/// Sandbox instances held for one request; released when dropped.
#[derive(Debug)]
pub struct SlotReservation {
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// Why a request cannot have the sandbox instances it may need.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SlotError {
    /// More than the host has at all: asking again will not help.
    #[error(
        "this request may need {need} sandbox instances at once (choices × experts run in parallel × call depth), more than this host's {total}; ask for fewer choices (n)"
    )]
    NeverFits {
        /// What it may need.
        need: u32,
        /// What the host has for requests.
        total: u32,
    },
    /// Other requests hold them now.
    #[error(
        "this request may need {need} sandbox instances at once and only {free} of {total} are free now; retry shortly"
    )]
    Busy {
        /// What it may need.
        need: u32,
        /// Free now.
        free: u32,
        /// What the host has for requests.
        total: u32,
    },
}

/// The experts of one host, the sandbox they run in and the model they
/// share.
pub struct Ensemble {
    sandbox: Sandbox,
    /// Pool slots requests may reserve.
    slots: Arc<tokio::sync::Semaphore>,
    slots_total: u32,
    model: Arc<dyn ModelEngine>,
    /// The other configured models (upstreams), by lowercase name.
    models: RwLock<BTreeMap<String, Arc<dyn ModelEngine>>>,
    experts: RwLock<BTreeMap<String, Arc<Expert>>>,
    routing_index: RoutingIndex,
    router_config: RwLock<RouterConfig>,
    /// When set, only bundles signed by one of these keys are added.
    trusted_keys: RwLock<Option<Arc<TrustedKeys>>>,
    /// When set, every expert answer gets a receipt signed with it.
    host_key: RwLock<Option<Arc<SigningKey>>>,
    /// When set, every outermost invocation is recorded here before its
    /// answer is returned.
    audit_store: RwLock<Option<Arc<AuditStore>>>,
}

impl Ensemble {
    /// An empty ensemble.
    pub fn new(sandbox: Sandbox, model: Arc<dyn ModelEngine>) -> Arc<Ensemble> {
        let pool = sandbox.policy().pool_instances;
        let slots_total = if pool > 2 * LOAD_SLOTS {
            pool - LOAD_SLOTS
        } else {
            pool
        };
        Arc::new(Ensemble {
            slots: Arc::new(tokio::sync::Semaphore::new(slots_total as usize)),
            slots_total,
            sandbox,
            model,
            models: RwLock::new(BTreeMap::new()),
            experts: RwLock::new(BTreeMap::new()),
            routing_index: RoutingIndex::default(),
            router_config: RwLock::new(RouterConfig::default()),
            trusted_keys: RwLock::new(None),
            host_key: RwLock::new(None),
            audit_store: RwLock::new(None),
        })
    }

    /// Sign a receipt for every expert answer with `key`.
    pub fn set_host_key(&self, key: SigningKey) {
        *self.host_key.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(key));
    }

    /// The key receipts are signed with, if any.
    pub fn host_key(&self) -> Option<Arc<SigningKey>> {
        self.host_key
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Record every outermost invocation in `store` before answering.
    pub fn set_audit_store(&self, store: Arc<AuditStore>) {
        *self.audit_store.write().unwrap_or_else(|e| e.into_inner()) = Some(store);
    }

    /// The store invocations are recorded in, if any.
    pub fn audit_store(&self) -> Option<Arc<AuditStore>> {
        self.audit_store
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// From now on, add only bundles signed by one of `keys`.
    pub fn require_signatures(&self, keys: TrustedKeys) {
        *self.trusted_keys.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(keys));
    }

    /// The keys bundles must be signed with, if signatures are required.
    pub fn trusted_keys(&self) -> Option<Arc<TrustedKeys>> {
        self.trusted_keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Sandbox instances one invocation of `expert` may hold at once: its
    /// own, and one per level of `experts.call` below it when it may call
    /// experts (calls are synchronous, so one chain at a time).
    pub fn slots_for(&self, expert: &Expert) -> u32 {
        if expert.manifest.capabilities.experts.is_empty() {
            1
        } else {
            1 + self.sandbox.policy().max_call_depth
        }
    }

    /// Hold `need` sandbox instances for a request, so that it cannot run
    /// out of them halfway, nor exhaust the pool for others. Refused at
    /// once, never waited for.
    pub fn reserve_slots(&self, need: u32) -> Result<SlotReservation, SlotError> {
        if need == 0 {
            return Ok(SlotReservation { _permit: None });
        }
        if need > self.slots_total {
            return Err(SlotError::NeverFits {
                need,
                total: self.slots_total,
            });
        }
        match self.slots.clone().try_acquire_many_owned(need) {
            Ok(permit) => Ok(SlotReservation {
                _permit: Some(permit),
            }),
            Err(_) => Err(SlotError::Busy {
                need,
                free: self.slots.available_permits() as u32,
                total: self.slots_total,
            }),
        }
    }

    /// The routing index.
    pub fn routing_index(&self) -> &RoutingIndex {
        &self.routing_index
    }

    /// How `tessera/auto` routes.
    pub fn router_config(&self) -> RouterConfig {
        self.router_config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Change how `tessera/auto` routes.
    pub fn set_router_config(&self, config: RouterConfig) {
        *self
            .router_config
            .write()
            .unwrap_or_else(|e| e.into_inner()) = config;
    }

    /// The sandbox.
    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// The default model engine.
    pub fn model(&self) -> &Arc<dyn ModelEngine> {
        &self.model
    }

    /// Serve `engine` (an upstream model) beside the default one, under
    /// its name. Refused when the name is taken.
    pub fn add_model(&self, engine: Arc<dyn ModelEngine>) -> Result<(), String> {
        let name = engine.model_name().to_string();
        if let Some(why) = self.reserved(&name) {
            return Err(format!("model `{name}` cannot be served: {why}"));
        }
        if self.expert(&name).is_some() {
            return Err(format!(
                "model `{name}` cannot be served: it is an expert's name"
            ));
        }
        self.models
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_ascii_lowercase(), engine);
        Ok(())
    }

    /// The configured models besides the default one, by name.
    pub fn other_models(&self) -> Vec<Arc<dyn ModelEngine>> {
        self.models
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The model called `name` (ignoring case): the default one or another
    /// configured one.
    pub fn model_named(&self, name: &str) -> Option<Arc<dyn ModelEngine>> {
        if self.model.model_name() != crate::inference::NoModel.model_name()
            && name.eq_ignore_ascii_case(self.model.model_name())
        {
            return Some(self.model.clone());
        }
        self.models
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&name.to_ascii_lowercase())
            .cloned()
    }

    /// The engine a bundle's `model` grant names: the default one unless
    /// it names another (which loading checked is served).
    pub(crate) fn engine_for(
        &self,
        capabilities: &crate::bundle::Capabilities,
    ) -> Arc<dyn ModelEngine> {
        capabilities
            .model
            .name()
            .and_then(|name| self.model_named(name))
            .unwrap_or_else(|| self.model.clone())
    }

    /// Every model's name, the default first.
    pub fn model_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        if self.model.model_name() != crate::inference::NoModel.model_name() {
            names.push(self.model.model_name().to_string());
        }
        names.extend(
            self.other_models()
                .iter()
                .map(|m| m.model_name().to_string()),
        );
        names
    }

    /// The expert called `name`.
    pub fn expert(&self, name: &str) -> Option<Arc<Expert>> {
        self.experts
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Every loaded expert, by name.
    pub fn experts(&self) -> Vec<Arc<Expert>> {
        self.experts
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Why `name` cannot be an expert's name here, if it cannot: the
    /// models' names (matched ignoring case, as requests are) and the
    /// `tessera` prefix of the ensemble's own model ids are taken.
    pub fn reserved(&self, name: &str) -> Option<String> {
        let model = self.model.model_name();
        if model != crate::inference::NoModel.model_name() && name.eq_ignore_ascii_case(model) {
            return Some(format!("it is the base model's name (`{model}`)"));
        }
        if let Some(embedder) = self.model.embedder_name()
            && name.eq_ignore_ascii_case(embedder)
        {
            return Some(format!("it is the embedding model's name (`{embedder}`)"));
        }
        if name.starts_with("tessera") {
            return Some("names starting with `tessera` are the host's (tessera/auto...)".into());
        }
        if let Some(other) = self
            .models
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&name.to_ascii_lowercase())
        {
            return Some(format!(
                "it is a configured model's name (`{}`)",
                other.model_name()
            ));
        }
        None
    }

    /// Load a bundle: compile (or fetch from cache) its component, check
    /// its world against the manifest, ask an agent to `describe` itself,
    /// and register it under its name (replacing an older one of the same
    /// name: hot reload checks beforehand that names are not taken by
    /// another bundle).
    ///
    /// The manifest's name is the expert's name. `describe()` may repeat
    /// it or leave it empty; any other name is refused. Only a bare
    /// `.wasm` given on the command line, whose manifest was made up, takes
    /// the name its component gives itself.
    pub async fn add(self: &Arc<Self>, mut bundle: Bundle) -> Result<Arc<Expert>, AddError> {
        let name = bundle.manifest.name.clone();
        if let Some(why) = self.reserved(&name) {
            return Err(AddError::ReservedName { name, why });
        }
        if let Some(keys) = self.trusted_keys() {
            keys.check(bundle.signer.as_ref())
                .map_err(|reason| AddError::Untrusted {
                    name: name.clone(),
                    reason,
                })?;
        }
        if let Some(model) = bundle.manifest.capabilities.model.name()
            && self.model_named(model).is_none()
        {
            let known = self.model_names();
            return Err(AddError::UnknownModel {
                name,
                model: model.to_string(),
                known: if known.is_empty() {
                    "no model".into()
                } else {
                    known.join(", ")
                },
            });
        }
        let signer = bundle.signer.take();
        if bundle.manifest.kind == BundleKind::Adapter {
            return self.add_adapter(bundle, signer).await;
        }
        // Compiling takes up to seconds of CPU: on a blocking thread, not
        // on the workers that answer requests.
        let this = self.clone();
        let (wasm, sha256) = (std::mem::take(&mut bundle.wasm), bundle.sha256.clone());
        let component = tokio::task::spawn_blocking(move || this.sandbox.load(&wasm, &sha256))
            .await
            .unwrap_or_else(|e| Err(LoadError::Compile(format!("the compiler failed: {e}"))))
            .map_err(|reason| AddError::Load {
                name: name.clone(),
                reason,
            })?;
        let actual = component.info.world.kind();
        if actual != bundle.manifest.kind {
            return Err(AddError::KindMismatch {
                name,
                declared: bundle.manifest.kind.world_name(),
                actual: actual.world_name(),
            });
        }
        let mut manifest = bundle.manifest;
        let mut info = ExpertInfo {
            name: manifest.name.clone(),
            version: manifest.version.clone(),
            description: manifest.description.clone(),
            tags: manifest.tags.clone(),
            examples: manifest.examples.clone(),
        };
        let pre = if actual == BundleKind::Agent {
            let pre = AgentPre::new(component.pre.clone()).map_err(|e| AddError::Load {
                name: name.clone(),
                reason: LoadError::Link(format!("{e:#}")),
            })?;
            let described =
                self.describe(&name, &pre)
                    .await
                    .map_err(|reason| AddError::Describe {
                        name: name.clone(),
                        reason,
                    })?;
            if let Err((field, problem)) =
                check_description(&described.description, &described.tags, &described.examples)
            {
                return Err(AddError::DescribeTooLarge {
                    name,
                    field,
                    problem,
                });
            }
            if bundle.bare {
                if !described.name.is_empty() {
                    if !is_valid_name(&described.name) {
                        return Err(AddError::ReservedName {
                            name: described.name.chars().take(80).collect(),
                            why: "an expert's name is 1 to 64 lowercase letters, digits and dashes, starting with a letter".into(),
                        });
                    }
                    if let Some(why) = self.reserved(&described.name) {
                        return Err(AddError::ReservedName {
                            name: described.name,
                            why,
                        });
                    }
                    if self.expert(&described.name).is_some() {
                        return Err(AddError::ReservedName {
                            name: described.name,
                            why: "another loaded expert has it".into(),
                        });
                    }
                    manifest.name = described.name.clone();
                    info.name = described.name.clone();
                }
                if is_valid_version(&described.version) {
                    manifest.version = described.version.clone();
                    info.version = described.version.clone();
                }
            } else if !described.name.is_empty() && described.name != manifest.name {
                return Err(AddError::NameMismatch {
                    manifest: manifest.name,
                    described: described.name.chars().take(80).collect(),
                });
            }
            if info.description.is_empty() {
                info.description = described.description;
            }
            merge(&mut info.tags, described.tags);
            merge(&mut info.examples, described.examples);
            info.tags.truncate(MAX_TAGS);
            info.examples.truncate(MAX_EXAMPLES);
            Some(pre)
        } else {
            None
        };
        let router_pre = if actual == BundleKind::Router {
            Some(
                RouterPre::new(component.pre.clone()).map_err(|e| AddError::Load {
                    name: name.clone(),
                    reason: LoadError::Link(format!("{e:#}")),
                })?,
            )
        } else {
            None
        };
        let limits = self.sandbox.policy().limits_for(&manifest.limits);
        let expert = Arc::new(Expert {
            limits,
            signer,
            manifest,
            info,
            sha256: component.sha256.clone(),
            component: Some(component),
            adapter: None,
            pre,
            router_pre,
        });
        self.install(&expert).await;
        Ok(expert)
    }

    /// Load an adapter bundle: its PEFT files copied to a private
    /// directory and registered with the engine under the bundle's name
    /// (checked against the base model now), its component, when it has
    /// one, compiled and checked to be of the `adapter` world.
    async fn add_adapter(
        self: &Arc<Self>,
        mut bundle: Bundle,
        signer: Option<Signer>,
    ) -> Result<Arc<Expert>, AddError> {
        let name = bundle.manifest.name.clone();
        let failed = |reason: String| AddError::Adapter {
            name: name.clone(),
            reason,
        };
        let files = bundle
            .adapter
            .take()
            .ok_or_else(|| failed("the bundle carries no adapter weights".into()))?;
        let engine = self.model.clone();
        let registered = name.clone();
        let dir = tokio::task::spawn_blocking(move || {
            let dir = tempfile::Builder::new()
                .prefix("tessera-adapter-")
                .tempdir()
                .map_err(|e| format!("cannot make a directory for its weights: {e}"))?;
            files
                .write_to(dir.path())
                .map_err(|e| format!("cannot copy its weights: {e}"))?;
            engine
                .register_adapter(&registered, dir.path())
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(dir)
        })
        .await
        .unwrap_or_else(|e| Err(format!("loading the adapter failed: {e}")))
        .map_err(failed)?;
        let hooks = if bundle.wasm.is_empty() {
            None
        } else {
            let this = self.clone();
            let wasm = std::mem::take(&mut bundle.wasm);
            let sha = crate::bundle::sha256_hex(&wasm);
            let loaded = tokio::task::spawn_blocking(move || this.sandbox.load(&wasm, &sha))
                .await
                .unwrap_or_else(|e| Err(LoadError::Compile(format!("the compiler failed: {e}"))));
            let component = match loaded {
                Ok(c) => c,
                Err(reason) => {
                    self.model.unregister_adapter(&name);
                    return Err(AddError::Load { name, reason });
                }
            };
            let actual = component.info.world.kind();
            if actual != BundleKind::Adapter {
                self.model.unregister_adapter(&name);
                return Err(AddError::KindMismatch {
                    name,
                    declared: BundleKind::Adapter.world_name(),
                    actual: actual.world_name(),
                });
            }
            match AdapterPre::new(component.pre.clone()) {
                Ok(pre) => Some((component, pre)),
                Err(e) => {
                    self.model.unregister_adapter(&name);
                    return Err(AddError::Load {
                        name,
                        reason: LoadError::Link(format!("{e:#}")),
                    });
                }
            }
        };
        let manifest = bundle.manifest;
        let info = ExpertInfo {
            name: manifest.name.clone(),
            version: manifest.version.clone(),
            description: manifest.description.clone(),
            tags: manifest.tags.clone(),
            examples: manifest.examples.clone(),
        };
        let limits = self.sandbox.policy().limits_for(&manifest.limits);
        let (component, hooks) = match hooks {
            Some((c, pre)) => (Some(c), Some(pre)),
            None => (None, None),
        };
        let expert = Arc::new(Expert {
            limits,
            signer,
            manifest,
            info,
            component,
            sha256: bundle.sha256,
            adapter: Some(AdapterServing { hooks, _files: dir }),
            pre: None,
            router_pre: None,
        });
        self.install(&expert).await;
        Ok(expert)
    }

    /// Index a loaded expert for routing and serve it under its name
    /// (replacing an older one of the same name).
    async fn install(&self, expert: &Arc<Expert>) {
        self.index(expert).await;
        self.experts
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(expert.name().to_string(), expert.clone());
    }

    /// Put a routable expert in the routing index (or take it out). An
    /// expert that cannot be indexed still answers by name.
    async fn index(&self, expert: &Expert) {
        let routable = matches!(
            expert.manifest.kind,
            BundleKind::Agent | BundleKind::Adapter
        ) && expert.manifest.routing.routable;
        if !routable || self.model.embedder_name().is_none() {
            self.routing_index.remove(expert.name());
            return;
        }
        if let Err(e) = self
            .routing_index
            .index(
                self.model.as_ref(),
                &expert.info,
                &expert.sha256,
                expert.manifest.routing.cost,
            )
            .await
        {
            self.routing_index.remove(expert.name());
            tracing::warn!(expert = expert.name(), error = %e, "cannot index the expert for routing; it answers only by name");
        }
    }

    /// Remove the expert `name`; in-flight invocations finish on it.
    pub fn remove(&self, name: &str) -> Option<Arc<Expert>> {
        self.routing_index.remove(name);
        let removed = self
            .experts
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        if removed.as_ref().is_some_and(|e| e.adapter.is_some()) {
            self.model.unregister_adapter(name);
        }
        removed
    }

    async fn describe(
        self: &Arc<Self>,
        name: &str,
        pre: &AgentPre<InvocationState>,
    ) -> Result<ExpertInfo, InvokeError> {
        let mut limits = self.sandbox.policy().limits_for(&Default::default());
        limits.deadline_ms = DESCRIBE_DEADLINE_MS;
        limits.fuel = DESCRIBE_FUEL;
        let deadline = Instant::now() + limits.deadline();
        let mut state = self.invocation_state(
            vec![name.to_string()],
            &Default::default(),
            limits,
            deadline,
            None,
        );
        state.model.allowed = false;
        let call = self
            .call_guest(state, async |store| {
                let agent = pre.instantiate_async(&mut *store).await?;
                agent.call_describe(store).await.map(Ok)
            })
            .await;
        call.result.map_err(|mut e| {
            if e.kind == InvokeErrorKind::Deadline {
                e.message = format!("deadline of {DESCRIBE_DEADLINE_MS} ms exceeded");
            }
            e
        })
    }
}

fn merge(into: &mut Vec<String>, from: Vec<String>) {
    for item in from {
        if !into.contains(&item) {
            into.push(item);
        }
    }
}
