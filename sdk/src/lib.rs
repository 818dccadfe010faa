//! # tessera-sdk: write Tessera experts in Rust
//!
//! An *expert* is a WebAssembly component that answers chat requests. The
//! Tessera host runs it in a sandbox, lends it the host's language model
//! ([`model`]), lets it call other experts ([`experts`]) and records what it
//! did ([`log`]) in an audit trace.
//!
//! Implement [`Expert`] for a type and export it with [`export_expert!`]:
//!
//! ```ignore
//! use tessera_sdk::prelude::*;
//!
//! struct Haiku;
//!
//! impl Expert for Haiku {
//!     fn handle(req: Request) -> Result<Response, Error> {
//!         let question = req.require_user_message()?;
//!         let answer = model::chat(
//!             &[
//!                 Message::system("Answer with a haiku: three lines, 5-7-5 syllables."),
//!                 Message::user(question),
//!             ],
//!             &req.sampling.clone().max_tokens(64),
//!         )?;
//!         Ok(Response::from_completion(answer))
//!     }
//! }
//!
//! export_expert!(Haiku);
//! ```
//!
//! What the expert says about itself (name, version, description, tags and
//! example prompts, which routers read) is its `tessera.toml`:
//! [`export_expert!`] reads that file at compile time, so the component's
//! `describe()` and its manifest cannot disagree.
//!
//! ```toml
//! name = "haiku"
//! version = "0.1.0"
//! kind = "agent"
//! description = "Answers every question as a haiku."
//! tags = ["poetry"]
//! examples = ["Write a haiku about the sea"]
//!
//! [capabilities]
//! model = true
//! ```
//!
//! Build it with `tessera build path/to/crate` and try it with
//! `tessera run path/to/crate --prompt "..."`. The crate must be a `cdylib`
//! and carry a `tessera.toml` manifest; see the plugin guide in the
//! [`guide`] (also `docs/plugin-guide.md` in the repository).
//!
//! Routers ([`Router`], [`export_router!`]) and fine-tune adapters
//! ([`Adapter`], [`export_adapter!`]) are written the same way.
#![deny(missing_docs)]

// The generated code names the runtime through `tessera_sdk::`, as plugin
// crates see it; make that path work inside this crate too.
extern crate self as tessera_sdk;

#[cfg(all(feature = "arena", any(target_arch = "wasm32", test)))]
mod arena;
mod helpers;

#[doc = include_str!("../../docs/plugin-guide.md")]
pub mod guide {}

/// The generated bindings, one module per world. Use the re-exports at the
/// crate root instead; these are public only for the export macros.
#[doc(hidden)]
#[allow(clippy::too_many_arguments, reason = "generated code")]
pub mod bindings {
    /// The `agent` world: experts.
    pub mod agent {
        wit_bindgen::generate!({
            world: "agent",
            path: "../wit",
            pub_export_macro: true,
            export_macro_name: "export",
            default_bindings_module: "tessera_sdk::bindings::agent",
            runtime_path: "tessera_sdk::__private::wit_bindgen::rt",
            additional_derives: [Clone, PartialEq],
        });
    }

    /// The `router` world: routers.
    pub mod router {
        wit_bindgen::generate!({
            world: "router",
            path: "../wit",
            pub_export_macro: true,
            export_macro_name: "export",
            default_bindings_module: "tessera_sdk::bindings::router",
            runtime_path: "tessera_sdk::__private::wit_bindgen::rt",
            with: {
                "tessera:expert/types@0.1.0": crate::bindings::agent::tessera::expert::types,
                "tessera:expert/model@0.1.0": crate::bindings::agent::tessera::expert::model,
                "tessera:expert/log@0.1.0": crate::bindings::agent::tessera::expert::log,
            },
        });
    }

    /// The `adapter` world: fine-tune adapters.
    pub mod adapter {
        wit_bindgen::generate!({
            world: "adapter",
            path: "../wit",
            pub_export_macro: true,
            export_macro_name: "export",
            default_bindings_module: "tessera_sdk::bindings::adapter",
            runtime_path: "tessera_sdk::__private::wit_bindgen::rt",
            with: {
                "tessera:expert/types@0.1.0": crate::bindings::agent::tessera::expert::types,
                "tessera:expert/log@0.1.0": crate::bindings::agent::tessera::expert::log,
            },
        });
    }
}

use bindings::agent::tessera::expert as wit;

pub use wit::types::{
    AdapterInfo, Completion, Error, ExpertInfo, FinishReason, Message, Request, Response, Role,
    RouteChoice, Sampling, TokenLogprob, Usage,
};

/// Everything an expert usually needs, in one `use`.
pub mod prelude {
    pub use crate::{
        Adapter, AdapterInfo, Completion, Error, Expert, ExpertInfo, FinishReason, Message,
        Request, Response, Role, RouteChoice, Router, Sampling, Usage, experts, export_adapter,
        export_expert, export_router, log, model,
    };
}

/// An expert: answers requests.
///
/// A fresh instance of the component handles every request, so keep no
/// state between calls (statics are reset).
pub trait Expert {
    /// Answer one request.
    fn handle(req: Request) -> Result<Response, Error>;

    /// What the component answers to `describe()`, given what its
    /// `tessera.toml` says (`manifest`, read at compile time by
    /// [`export_expert!`]). Keep the default: the host takes the name,
    /// description, tags and examples from the manifest anyway, and only
    /// fills in what the manifest leaves empty from this. Override it only
    /// for a component served under several manifests (return an empty
    /// name then). Called at load time; it must not call the model.
    fn describe(manifest: ExpertInfo) -> ExpertInfo {
        manifest
    }
}

/// A router: ranks candidate experts for a request, best first.
pub trait Router {
    /// Rank `candidates` for `req`. Return an empty list to let the base
    /// model answer.
    fn route(req: Request, candidates: Vec<ExpertInfo>) -> Result<Vec<RouteChoice>, Error>;
}

/// A fine-tune adapter's component: describes the LoRA weights shipped with
/// it and may rewrite requests and responses.
pub trait Adapter {
    /// Base model, rank, alpha and target modules.
    fn describe() -> AdapterInfo;

    /// Rewrite a request before the model sees it. The default passes it
    /// through.
    fn pre_request(req: Request) -> Result<Request, Error> {
        Ok(req)
    }

    /// Rewrite a response before the caller sees it. The default passes it
    /// through.
    fn post_response(resp: Response) -> Result<Response, Error> {
        Ok(resp)
    }
}

/// The host's language and embedding models.
///
/// Every call counts against the expert's limits (model calls and generated
/// tokens, from its manifest) and needs `capabilities.model = true`.
pub mod model {
    use crate::wit::model as raw;
    use crate::{Completion, Error, Message, Sampling};

    /// Answer a conversation with the base model and its chat template.
    pub fn chat(messages: &[Message], sampling: &Sampling) -> Result<Completion, Error> {
        raw::chat(messages, sampling, None)
    }

    /// Like [`chat`], through the fine-tune adapter named `adapter`.
    pub fn chat_with_adapter(
        messages: &[Message],
        sampling: &Sampling,
        adapter: &str,
    ) -> Result<Completion, Error> {
        raw::chat(messages, sampling, Some(adapter))
    }

    /// Like [`chat`], for the call whose text is your answer: when the
    /// client asked for a stream, its tokens reach the client as they are
    /// generated. Return a [`Response`](crate::Response) whose content
    /// begins with the completion's text (whitespace around it aside), for
    /// example [`Response::from_completion`](crate::Response::from_completion).
    /// Otherwise the same as [`chat`].
    pub fn stream_answer(messages: &[Message], sampling: &Sampling) -> Result<Completion, Error> {
        raw::stream_answer(messages, sampling, None)
    }

    /// Ask one question (a single user message) and get the answer text.
    pub fn ask(question: &str, sampling: &Sampling) -> Result<String, Error> {
        chat(&[Message::user(question)], sampling).map(|c| c.text)
    }

    /// Continue raw text, without a chat template.
    pub fn complete(prompt: &str, sampling: &Sampling) -> Result<Completion, Error> {
        raw::complete(prompt, sampling, None)
    }

    /// The model's token ids for `text`.
    pub fn tokenize(text: &str) -> Result<Vec<u32>, Error> {
        raw::tokenize(text)
    }

    /// Log-likelihood of `continuation` after `prompt` (natural log, summed
    /// over tokens).
    pub fn score(prompt: &str, continuation: &str) -> Result<f64, Error> {
        raw::score(prompt, continuation, None)
    }

    /// [`score`] for each of `continuations` after `prompt`, in order. The
    /// model reads the prompt once, so rating candidates this way costs
    /// far fewer tokens (and less time) than one `score` each. At most 256
    /// continuations per call; none may be empty.
    pub fn score_choices<S: AsRef<str>>(
        prompt: &str,
        continuations: &[S],
    ) -> Result<Vec<f64>, Error> {
        let owned: Vec<String> = continuations
            .iter()
            .map(|c| c.as_ref().to_string())
            .collect();
        raw::score_choices(prompt, &owned, None)
    }

    /// One L2-normalised sentence embedding per text.
    pub fn embed(texts: &[String]) -> Result<Vec<Vec<f32>>, Error> {
        raw::embed(texts)
    }
}

/// Other experts on the same host.
pub mod experts {
    use crate::{Error, Request, Response};

    /// Call the expert `name`. The manifest must grant it under
    /// `capabilities.experts`; the host refuses cycles and deep nesting.
    pub fn call(name: &str, req: &Request) -> Result<Response, Error> {
        crate::wit::experts::call(name, req)
    }
}

/// Structured logging into the invocation's audit trace.
pub mod log {
    pub use crate::wit::log::Level;

    /// Write a line with key/value fields.
    pub fn with_fields(level: Level, message: &str, fields: &[(&str, &str)]) {
        let fields: Vec<(String, String)> = fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        crate::wit::log::log(level, message, &fields);
    }

    /// Write a debug line.
    pub fn debug(message: &str) {
        crate::wit::log::log(Level::Debug, message, &[]);
    }

    /// Write an info line.
    pub fn info(message: &str) {
        crate::wit::log::log(Level::Info, message, &[]);
    }

    /// Write a warning.
    pub fn warn(message: &str) {
        crate::wit::log::log(Level::Warn, message, &[]);
    }

    /// Write an error line.
    pub fn error(message: &str) {
        crate::wit::log::log(Level::Error, message, &[]);
    }
}

/// Randomness for crates that ask `getrandom` 0.3 (`rand`, JS engines'
/// `Math.random`, ...): a component has no entropy source, and an expert's
/// run must be replayable by a validator, so the bytes are a fixed
/// pseudo-random stream (SplitMix64 from a constant seed), the same in
/// every instance. Never use them for secrets. `tessera build` selects
/// this backend (`--cfg getrandom_backend="custom"`).
#[cfg(target_arch = "wasm32")]
mod random {
    use std::sync::atomic::{AtomicU64, Ordering};

    static STATE: AtomicU64 = AtomicU64::new(0x5445_5353_4552_4131);

    fn next() -> u64 {
        let mut z = STATE
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// getrandom 0.3's custom backend.
    ///
    /// # Safety
    /// `dest` must be valid for writes of `len` bytes (getrandom's contract).
    #[unsafe(no_mangle)]
    unsafe extern "Rust" fn __getrandom_v03_custom(
        dest: *mut u8,
        len: usize,
    ) -> Result<(), getrandom::Error> {
        // SAFETY: the caller hands us `len` writable bytes at `dest`.
        let out = unsafe { std::slice::from_raw_parts_mut(dest, len) };
        for chunk in out.chunks_mut(8) {
            chunk.copy_from_slice(&next().to_le_bytes()[..chunk.len()]);
        }
        Ok(())
    }
}

/// Support for the export macros. Not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;

    pub use tessera_sdk_macros::manifest_description;

    /// An [`ExpertInfo`](crate::ExpertInfo) from the literals
    /// `manifest_description!` makes.
    pub fn expert_info(
        (name, version, description, tags, examples): (&str, &str, &str, &[&str], &[&str]),
    ) -> crate::ExpertInfo {
        let owned = |items: &[&str]| items.iter().map(|s| s.to_string()).collect();
        crate::ExpertInfo {
            name: name.to_string(),
            version: version.to_string(),
            description: description.to_string(),
            tags: owned(tags),
            examples: owned(examples),
        }
    }

    /// Send panic messages to the host's log before the instance traps, so
    /// the error the caller sees says what went wrong.
    pub fn install_panic_hook() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            std::panic::set_hook(Box::new(|info| {
                crate::log::with_fields(
                    crate::log::Level::Error,
                    &info.to_string(),
                    &[("panic", "true")],
                );
            }));
        });
    }
}

/// Export a type implementing [`Expert`] as this component's expert.
///
/// Use it once per crate, at the top level. It reads the crate's
/// `tessera.toml` (beside `Cargo.toml`) at compile time: the component's
/// `describe()` answers with that manifest's name, version, description,
/// tags and examples (passed through [`Expert::describe`]). A missing or
/// malformed manifest is a compile error naming the file.
#[macro_export]
macro_rules! export_expert {
    ($ty:ty) => {
        #[doc(hidden)]
        pub struct __TesseraExpertExport;

        impl $crate::bindings::agent::Guest for __TesseraExpertExport {
            fn describe() -> $crate::ExpertInfo {
                $crate::__private::install_panic_hook();
                let manifest = $crate::__private::expert_info(
                    $crate::__private::manifest_description!(),
                );
                <$ty as $crate::Expert>::describe(manifest)
            }

            fn handle(req: $crate::Request) -> ::core::result::Result<$crate::Response, $crate::Error> {
                $crate::__private::install_panic_hook();
                <$ty as $crate::Expert>::handle(req)
            }
        }

        $crate::bindings::agent::export!(__TesseraExpertExport with_types_in $crate::bindings::agent);
    };
}

/// Export a type implementing [`Router`] as this component's router.
#[macro_export]
macro_rules! export_router {
    ($ty:ty) => {
        #[doc(hidden)]
        pub struct __TesseraRouterExport;

        impl $crate::bindings::router::Guest for __TesseraRouterExport {
            fn route(
                req: $crate::Request,
                candidates: ::std::vec::Vec<$crate::ExpertInfo>,
            ) -> ::core::result::Result<::std::vec::Vec<$crate::RouteChoice>, $crate::Error> {
                $crate::__private::install_panic_hook();
                <$ty as $crate::Router>::route(req, candidates)
            }
        }

        $crate::bindings::router::export!(__TesseraRouterExport with_types_in $crate::bindings::router);
    };
}

/// Export a type implementing [`Adapter`] as this component's adapter.
#[macro_export]
macro_rules! export_adapter {
    ($ty:ty) => {
        #[doc(hidden)]
        pub struct __TesseraAdapterExport;

        impl $crate::bindings::adapter::Guest for __TesseraAdapterExport {
            fn describe() -> $crate::AdapterInfo {
                $crate::__private::install_panic_hook();
                <$ty as $crate::Adapter>::describe()
            }

            fn pre_request(req: $crate::Request) -> ::core::result::Result<$crate::Request, $crate::Error> {
                $crate::__private::install_panic_hook();
                <$ty as $crate::Adapter>::pre_request(req)
            }

            fn post_response(resp: $crate::Response) -> ::core::result::Result<$crate::Response, $crate::Error> {
                $crate::__private::install_panic_hook();
                <$ty as $crate::Adapter>::post_response(resp)
            }
        }

        $crate::bindings::adapter::export!(__TesseraAdapterExport with_types_in $crate::bindings::adapter);
    };
}
