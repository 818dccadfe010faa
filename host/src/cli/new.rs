//! `tessera new`: a plugin (a Rust crate or a Python project) that builds,
//! runs and passes its own test at once.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use tessera_host::bundle::is_valid_name;

mod adapter;
mod python;

/// Arguments of `tessera new`.
#[derive(Debug, clap::Args)]
pub struct NewArgs {
    /// The plugin's name (lowercase letters, digits, dashes); the directory
    /// made for it, under --dir.
    #[arg(value_name = "NAME", required_unless_present = "list")]
    name: Option<String>,

    /// What it is: an agent answers requests; a router picks which experts
    /// answer; an adapter is a LoRA fine-tune of the model, with hooks.
    #[arg(long, value_enum, default_value_t = Kind::Agent)]
    kind: Kind,

    /// The language it is written in.
    #[arg(long, value_enum, default_value_t = Lang::Rust)]
    lang: Lang,

    /// Where to make it [default: the current directory].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,

    /// The Tessera SDK crate a Rust plugin depends on [default: the `sdk`
    /// folder of the checkout this `tessera` was built from]. A Python
    /// plugin gets the Python SDK from `tessera` itself.
    #[arg(long, value_name = "DIR")]
    sdk: Option<PathBuf>,

    /// List the templates and exit.
    #[arg(long)]
    list: bool,
}

/// The templates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Kind {
    /// An expert (`agent` world): answers chat requests.
    Agent,
    /// A router (`router` world): ranks the experts for a request.
    Router,
    /// A fine-tune (`adapter` world): LoRA weights trained on a chat file,
    /// with hooks around the generation.
    Adapter,
}

impl Kind {
    fn world(self) -> &'static str {
        match self {
            Kind::Agent => "agent",
            Kind::Router => "router",
            Kind::Adapter => "adapter",
        }
    }

    fn summary(self) -> &'static str {
        match self {
            Kind::Agent => {
                "an expert: one exact branch (`reverse: TEXT`), the model for the rest, a native test"
            }
            Kind::Router => {
                "a router: ranks the experts whose tags appear in the request, a native test"
            }
            Kind::Adapter => {
                "a LoRA fine-tune: twelve training chats, train.sh, hooks that put the training prompt first, a native test"
            }
        }
    }
}

/// The plugin's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Lang {
    /// A crate, built by cargo.
    Rust,
    /// `app.py`, built with CPython into the component by componentize-py.
    Python,
}

/// Where the SDK was when this binary was built.
const BUILT_SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../sdk");

pub fn run(args: NewArgs) -> anyhow::Result<ExitCode> {
    if args.list {
        let mut text = String::from(
            "templates (tessera new NAME --kind KIND --lang LANG), each in rust and python:\n",
        );
        for kind in [Kind::Agent, Kind::Router, Kind::Adapter] {
            text.push_str(&format!("  {:<8} {}\n", kind.world(), kind.summary()));
        }
        super::print(&text)?;
        return Ok(ExitCode::SUCCESS);
    }
    let name = args.name.as_deref().unwrap_or_default();
    if !is_valid_name(name) {
        anyhow::bail!(
            "`{name}` is not a plugin name: use 1 to 64 lowercase letters, digits and dashes, starting with a letter (for example `word-count`)"
        );
    }
    let dir = args.dir.unwrap_or_else(|| PathBuf::from(".")).join(name);
    if dir.exists() {
        anyhow::bail!(
            "{} already exists: pick another name or --dir, or remove it",
            dir.display()
        );
    }
    let files = match args.lang {
        Lang::Rust => {
            let sdk = args.sdk.clone().unwrap_or_else(|| PathBuf::from(BUILT_SDK));
            let sdk = std::fs::canonicalize(&sdk)
                .ok()
                .filter(|p| p.join("Cargo.toml").is_file())
                .with_context(|| {
                    format!(
                        "no Tessera SDK at {}: pass --sdk with the `sdk` folder of a Tessera checkout",
                        sdk.display()
                    )
                })?;
            files(args.kind, name, &sdk)
        }
        Lang::Python => python::files(args.kind, name),
    };
    for (path, text) in &files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot make {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if args.lang == Lang::Python {
        // The SDK, for the native test (`tessera build` rewrites it).
        tessera_host::build::write_python_sdk(&dir)?;
    }
    let shown = dir.display();
    eprintln!(
        "made {} `{name}` in {shown}: {}",
        args.kind.world(),
        files
            .iter()
            .map(|(p, _)| p.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(", ")
    );
    eprintln!("next:");
    match args.lang {
        Lang::Rust => eprintln!("  (cd {shown} && cargo test)     # its native test"),
        Lang::Python => eprintln!("  (cd {shown} && python3 -m unittest)   # its native test"),
    }
    if args.kind == Kind::Adapter {
        eprintln!("  bash {shown}/train.sh          # train the LoRA weights (under a minute)");
    }
    match args.lang {
        Lang::Rust => eprintln!(
            "  tessera build {shown}          # the component (the first build takes a few minutes)"
        ),
        Lang::Python => eprintln!(
            "  tessera build {shown}          # the component: CPython + app.py (~10 s, needs componentize-py {})",
            tessera_host::build::COMPONENTIZE_PY_VERSION
        ),
    }
    match args.kind {
        Kind::Agent => eprintln!("  tessera run {shown} --prompt \"reverse: hello\""),
        Kind::Router => eprintln!(
            "  tessera serve {shown} EXPERT_BUNDLES... --router {name}   # route among experts"
        ),
        Kind::Adapter => {
            eprintln!("  tessera run {shown} --prompt \"When is Moss & Mill open?\"")
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The files of a new `kind` Rust plugin called `name`, by path.
fn files(kind: Kind, name: &str, sdk: &Path) -> Vec<(PathBuf, String)> {
    let sdk = toml_string(&sdk.to_string_lossy());
    let cargo = format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"

[lib]
crate-type = ["cdylib"]          # a .wasm library

[dependencies]
tessera-sdk = {{ path = {sdk} }}

[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
panic = "abort"
strip = "debuginfo"

# A standalone crate: not part of an enclosing workspace.
[workspace]
"#
    );
    let (manifest, lib, readme) = match kind {
        Kind::Agent => agent(name),
        Kind::Router => router(name),
        Kind::Adapter => adapter_hooks(name),
    };
    let mut files = vec![
        (PathBuf::from("Cargo.toml"), cargo),
        (PathBuf::from("tessera.toml"), manifest),
        (PathBuf::from("src/lib.rs"), lib),
        (PathBuf::from("README.md"), readme),
        (PathBuf::from(".gitignore"), "/target\n".to_string()),
    ];
    if kind == Kind::Adapter {
        files.extend(adapter::training_files());
    }
    files
}

/// An agent template's manifest. A Python component needs more memory (its
/// CPython heap) than a Rust one.
fn agent_manifest(name: &str, lang: Lang) -> String {
    let memory = match lang {
        Lang::Rust => "16",
        Lang::Python => "64                  # CPython needs more than a Rust expert",
    };
    format!(
        r#"name = "{name}"
version = "0.1.0"
kind = "agent"
# What routers read: say what it answers well, and what it does not.
description = "Reverses a text exactly, character by character (ask `reverse: TEXT`); answers other questions briefly with the host's model."
tags = ["text", "reverse"]
examples = [
    "reverse: hello world",
    "reverse: stressed",
]

[capabilities]
model = true                     # may call the host's model

[limits]
memory-mib = {memory}
deadline-ms = 10000
model-calls = 1
generated-tokens = 128
"#
    )
}

/// A router template's manifest.
fn router_manifest(name: &str, lang: Lang) -> String {
    let (memory, deadline) = match lang {
        Lang::Rust => (16, 500),
        Lang::Python => (64, 1000),
    };
    format!(
        r#"name = "{name}"
version = "0.1.0"
kind = "router"
description = "Ranks the experts whose tags or name words appear in the request."
tags = ["router"]

[limits]
memory-mib = {memory}
deadline-ms = {deadline}
"#
    )
}

/// `s` as a TOML basic string.
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn agent(name: &str) -> (String, String, String) {
    let manifest = agent_manifest(name, Lang::Rust);
    let lib = r#"use tessera_sdk::prelude::*;

struct Plugin;

// What the expert says about itself (name, description, tags, examples)
// is tessera.toml: export_expert! reads it at compile time.
impl Expert for Plugin {
    fn handle(req: Request) -> Result<Response, Error> {
        let question = req.require_user_message()?;
        // The exact branch: computed here, the same every time.
        if let Some(text) = reversal(question) {
            return Ok(Response::new(text)
                .with_confidence(1.0)
                .with_metadata("branch", "exact"));
        }
        // The model branch.
        let answer = model::chat(
            &[
                Message::system("Answer in one or two sentences."),
                Message::user(question),
            ],
            &req.sampling.clone().max_tokens(96),
        )?;
        Ok(Response::new(answer.text)
            .with_usage(answer.usage)
            .with_metadata("branch", "model"))
    }
}

/// `reverse: TEXT` reversed, or `None` for any other question.
fn reversal(question: &str) -> Option<String> {
    let (verb, text) = question.split_once(':')?;
    verb.trim()
        .eq_ignore_ascii_case("reverse")
        .then(|| text.trim().chars().rev().collect())
}

export_expert!(Plugin);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverses_exactly_and_leaves_the_rest_to_the_model() {
        assert_eq!(reversal("reverse: stressed").as_deref(), Some("desserts"));
        assert_eq!(reversal("Reverse:  ab c ").as_deref(), Some("c ba"));
        assert_eq!(reversal("What is the capital of France?"), None);
    }
}
"#
    .to_string();
    let readme = format!(
        r#"# {name}

A Tessera expert made with `tessera new`. Three commands:

```sh
cargo test                                   # the native unit test
tessera build .                              # the component and its bundle
tessera run . --prompt "reverse: hello"      # run it in the sandbox
```

`src/lib.rs` is the handler, `tessera.toml` what it is, what it may do
(capabilities) and its limits. See the plugin guide (`docs/plugin-guide.md`
in the Tessera repository).
"#
    );
    (manifest, lib, readme)
}

fn router(name: &str) -> (String, String, String) {
    let manifest = router_manifest(name, Lang::Rust);
    let lib = r#"use tessera_sdk::prelude::*;

struct Plugin;

impl Router for Plugin {
    fn route(req: Request, candidates: Vec<ExpertInfo>) -> Result<Vec<RouteChoice>, Error> {
        let question = req.require_user_message()?;
        Ok(rank(question, &candidates))
    }
}

/// The candidates with a tag or name word among the request's words, most
/// matches first, scores from 0 to 1. None: the base model answers.
fn rank(question: &str, candidates: &[ExpertInfo]) -> Vec<RouteChoice> {
    let words: Vec<String> = question
        .to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(String::from)
        .collect();
    let mut scored: Vec<(usize, &ExpertInfo)> = candidates
        .iter()
        .map(|c| {
            let labels = c.tags.iter().cloned().chain(c.name.split('-').map(String::from));
            let hits = labels
                .filter(|label| words.contains(&label.to_lowercase()))
                .count();
            (hits, c)
        })
        .filter(|(hits, _)| *hits > 0)
        .collect();
    scored.sort_by(|a, b| b.0.cmp(&a.0));
    let best = scored.first().map_or(1, |s| s.0) as f32;
    scored
        .into_iter()
        .map(|(hits, c)| RouteChoice::new(c.name.clone(), hits as f32 / best))
        .collect()
}

export_router!(Plugin);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_by_matching_tags() {
        let experts = [
            ExpertInfo::new("calculator", "Arithmetic.").tag("math"),
            ExpertInfo::new("text-stats", "Counts words.").tag("text").tag("words"),
        ];
        let choices = rank("count the words of this text", &experts);
        assert_eq!(choices.len(), 1);
        assert_eq!(choices[0].name, "text-stats");
        assert!(rank("hello", &experts).is_empty());
    }
}
"#
    .to_string();
    let readme = format!(
        r#"# {name}

A Tessera router made with `tessera new`. Three commands:

```sh
cargo test                                   # the native unit test
tessera build .                              # the component and its bundle
tessera serve . EXPERT_BUNDLES... --router {name}
```

See the plugin guide (`docs/plugin-guide.md` in the Tessera repository).
"#
    );
    (manifest, lib, readme)
}

fn adapter_hooks(name: &str) -> (String, String, String) {
    let manifest = adapter::manifest(name, Lang::Rust);
    let targets: String = adapter::TARGETS
        .iter()
        .map(|t| format!("\n            .target(\"{t}\")"))
        .collect();
    let lib = format!(
        r##"//! The adapter's hooks: they run sandboxed around every generation with
//! the LoRA weights that `train.sh` trains on `data/train.jsonl`.

use tessera_sdk::prelude::*;

/// The system prompt every training chat starts with.
pub const SYSTEM_PROMPT: &str =
    {prompt:?};

struct Plugin;

impl Adapter for Plugin {{
    /// The LoRA settings `train.sh` trains with: keep the two in step.
    fn describe() -> AdapterInfo {{
        AdapterInfo::new({name:?}, {base:?}, {rank}, {alpha:.1}){targets}
    }}

    fn pre_request(req: Request) -> Result<Request, Error> {{
        req.require_user_message()?;
        Ok(as_trained(req))
    }}

    fn post_response(resp: Response) -> Result<Response, Error> {{
        let answer = resp.content.trim().to_string();
        Ok(Response {{
            content: answer,
            ..resp
        }}
        .with_metadata("adapter", {name:?}))
    }}
}}

/// `req` as the adapter was trained to see it: the training system prompt
/// first (the caller's system messages dropped), greedy unless the caller
/// chose a temperature.
fn as_trained(mut req: Request) -> Request {{
    req.messages.retain(|m| m.role != Role::System);
    req.messages.insert(0, Message::system(SYSTEM_PROMPT));
    req.sampling.temperature.get_or_insert(0.0);
    req
}}

export_adapter!(Plugin);

#[cfg(test)]
mod tests {{
    use super::*;

    #[test]
    fn the_training_prompt_comes_first_and_decoding_is_greedy() {{
        let mut req = Request::new(vec![
            Message::system("Answer in French."),
            Message::user("When is Moss & Mill open?"),
        ]);
        let out = as_trained(req.clone());
        assert_eq!(out.messages.len(), 2);
        assert_eq!(out.messages[0].content, SYSTEM_PROMPT);
        assert_eq!(out.messages[1].role, Role::User);
        assert_eq!(out.sampling.temperature, Some(0.0));
        // A caller's temperature stands.
        req.sampling.temperature = Some(0.9);
        assert_eq!(as_trained(req).sampling.temperature, Some(0.9));
    }}

    #[test]
    fn every_training_chat_starts_with_the_prompt_the_hook_puts_first() {{
        let data = include_str!("../data/train.jsonl");
        let prompt = format!(r#""content":{{:?}}"#, SYSTEM_PROMPT);
        assert!(data.lines().all(|chat| chat.contains(&prompt)), "{{prompt}}");
    }}
}}
"##,
        prompt = adapter::SYSTEM_PROMPT,
        base = adapter::BASE_MODEL,
        rank = adapter::RANK,
        alpha = adapter::ALPHA,
    );
    let readme = adapter::readme(name, "cargo test", "src/lib.rs");
    (manifest, lib, readme)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdk_paths_are_quoted_for_toml() {
        // Whatever quoting is chosen, a TOML parser reads the path back.
        for path in [r#"C:\a "b""#, "/home/o'neil/tessera/sdk", "/plain/sdk"] {
            let table: toml::Table = format!("sdk = {}", toml_string(path)).parse().unwrap();
            assert_eq!(table["sdk"].as_str(), Some(path));
        }
    }
}
