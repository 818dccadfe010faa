//! The GGUF reader on the real SmolLM2 file: the facts DESIGN.md states
//! about the model must be what the file says.

mod common;

use common::smollm2;
use tessera_host::inference::gguf::{TensorType, Value};

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

fn rms(v: &[f32]) -> f32 {
    (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    dot / (rms(a) * rms(b) * a.len() as f32)
}

#[test]
fn smollm2_tensors_dequantize_to_plausible_weights() {
    let g = smollm2();
    // Norm weights are F32 gains: finite and positive on average.
    let norm = g.tensor_f32("blk.0.attn_norm.weight").unwrap();
    assert_eq!(norm.len(), 576);
    assert!(norm.iter().all(|x| x.is_finite()) && norm.iter().sum::<f32>() > 0.0);
    // Q4_1 projections: finite, small, not all equal.
    for name in ["blk.0.attn_q.weight", "blk.29.ffn_down.weight"] {
        let w = g.tensor_f32(name).unwrap();
        assert!(w.iter().all(|x| x.is_finite()), "{name}");
        let r = rms(&w);
        assert!((0.005..1.0).contains(&r), "{name}: rms {r}");
    }
    // The Q8_0 token embedding: related words sit closer than unrelated
    // ones (ids from the vocabulary).
    let emb = g.tensor_f32("token_embd.weight").unwrap();
    assert_eq!(emb.len(), 576 * 49_152);
    let tokens = g
        .get("tokenizer.ggml.tokens")
        .and_then(Value::as_array)
        .unwrap();
    let id = |t: &str| tokens.iter().position(|v| v.as_str() == Some(t)).unwrap();
    let row = |t: &str| &emb[id(t) * 576..(id(t) + 1) * 576];
    let related = cosine(row("ĠParis"), row("ĠLondon"));
    let unrelated = cosine(row("ĠParis"), row("Ġthe"));
    assert!(
        related > unrelated,
        "Paris~London {related} vs Paris~the {unrelated}"
    );
}
