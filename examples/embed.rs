//! Embed the Tessera host as a library: load an expert bundle, invoke it,
//! and print its answer and trace.
//!
//! ```sh
//! cargo run -p tessera-host --example embed -- plugins/calculator "What is 6 * 7?"
//! ```
//!
//! The bundle must be built first (`tessera build plugins/calculator`).

use std::sync::Arc;

use anyhow::Context;
use tessera_host::bundle::Bundle;
use tessera_host::ensemble::Ensemble;
use tessera_host::inference::NoModel;
use tessera_host::sandbox::{CompileCache, HostPolicy, Sandbox};
use tessera_host::types::Request;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(bundle), Some(prompt)) = (args.next(), args.next()) else {
        anyhow::bail!(
            "usage: embed BUNDLE_DIR PROMPT (build the bundle with `tessera build` first)"
        );
    };

    // One sandbox per host: engine, linker, compile cache, host policy.
    let sandbox = Sandbox::new(
        HostPolicy::default(),
        CompileCache::default_dir().as_deref(),
    )?;
    // No inference engine yet: model calls fail with a clear error.
    let ensemble = Ensemble::new(sandbox, Arc::new(NoModel));

    let bundle = Bundle::open(bundle.as_ref()).with_context(|| format!("opening {bundle}"))?;
    let expert = ensemble.add(bundle).await?;
    println!(
        "loaded {} {}: {}",
        expert.info.name, expert.info.version, expert.info.description
    );

    let invocation = ensemble
        .invoke(expert.name(), Request::from_prompt(prompt))
        .await;
    match &invocation.result {
        Ok(response) => println!("answer: {}", response.content),
        Err(e) => println!("error ({}): {}", e.kind.as_str(), e.message),
    }
    let t = &invocation.trace;
    println!(
        "took {} µs, {} fuel, {} host calls, peak memory {} KiB",
        t.duration_us,
        t.fuel_consumed,
        t.host_calls.len(),
        t.peak_memory_bytes / 1024
    );
    Ok(())
}
