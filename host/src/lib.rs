//! # tessera-host
//!
//! The Tessera host: it loads *experts* (sandboxed WebAssembly components
//! written against the WIT contract in `wit/`), lends them the host's
//! models, and runs each request in a fresh, limited instance with a trace
//! of everything it did.
//!
//! ```no_run
//! use std::sync::Arc;
//! use tessera_host::{bundle::Bundle, ensemble::Ensemble, inference::NoModel};
//! use tessera_host::sandbox::{HostPolicy, Sandbox};
//! use tessera_host::types::Request;
//!
//! # async fn demo() -> anyhow::Result<()> {
//! let sandbox = Sandbox::new(HostPolicy::default(), None)?;
//! let ensemble = Ensemble::new(sandbox, Arc::new(NoModel));
//! ensemble.add(Bundle::open("plugins/calculator".as_ref())?).await?;
//! let invocation = ensemble.invoke("calculator", Request::from_prompt("2 + 2 * 3")).await;
//! println!("{}", invocation.result?.content);
//! println!("{}", serde_json::to_string_pretty(&invocation.trace)?);
//! # Ok(()) }
//! ```
//!
//! Modules, one per capability: [`sandbox`] (engine, limits, stores),
//! [`bindings`] (the WIT contract), [`caps`] (host interfaces), [`bundle`]
//! (manifests and components), [`inference`] (model engines), [`ensemble`]
//! (loaded experts, invocation, hot reload), [`audit`] (traces), [`build`]
//! (plugin builds), [`server`] (the OpenAI-compatible HTTP API).
#![deny(missing_docs)]

pub mod audit;
#[allow(missing_docs, reason = "generated code; the WIT files carry the docs")]
pub mod bindings;
pub mod build;
pub mod bundle;
mod caps;
pub mod embed;
pub mod ensemble;
pub mod eval;
pub mod inference;
mod paths;
pub mod sandbox;
pub mod server;
pub mod text;
pub mod types;
