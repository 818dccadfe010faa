//! LoRA fine-tuning with burn's autodiff: what `tessera adapt` runs.
//!
//! The base model stays as loaded, its weights plain tensors that autodiff
//! treats as constants; each adapted projection gets `A` (`[in, r]`) and
//! `B` (`[r, out]`) as autodiff leaves, and the forward pass is the serving
//! one ([`Llama::hidden`] with the adapter's unmerged delta), so what is
//! trained is exactly what is served. The loss is the mean cross-entropy
//! of the tokens to learn: assistant turns of a chat, or the completion of
//! a prompt. The optimizer is Adam (β 0.9 / 0.999, ε 1e-8, no weight
//! decay) with the gradient's global norm clipped to 1.0, as Hugging
//! Face's `Trainer` does by default; `A` starts Kaiming-uniform and `B` at
//! zero, as PEFT's do, so training starts from the base model.
//!
//! Everything random (the initial `A`, the held-out split, the order of
//! examples in each epoch) comes from the seed, and the CPU backend's sums
//! run in a fixed order, so a seed gives the same adapter, bit for bit.

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

use super::batch::StepInput;
use super::llama::{KvCache, Llama};
use super::lora::{LoraAdapter, PeftSpec, Target, write_peft};
use super::{ChatMessage, ChatRole, TextTokenizer};

/// Largest dataset file read.
pub const MAX_DATASET_BYTES: u64 = 256 << 20;
/// Largest line of a dataset file.
pub const MAX_LINE_BYTES: usize = 4 << 20;

/// One training example: its tokens, and which of them the loss learns.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// The whole text's token ids.
    pub tokens: Vec<u32>,
    /// `learn[i]`: token `i` is predicted by the loss (an assistant or
    /// completion token).
    pub learn: Vec<bool>,
    /// Its line in the dataset file (1-based).
    pub line: usize,
}

impl Example {
    /// Tokens the loss learns.
    pub fn learned(&self) -> usize {
        self.learn.iter().filter(|&&l| l).count()
    }
}

/// A dataset read from JSON lines.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Examples in file order.
    pub examples: Vec<Example>,
    /// Examples cut to the token limit.
    pub truncated: usize,
    /// Examples left out because nothing to learn was left after the cut.
    pub skipped: usize,
}

/// Why a dataset cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DatasetError {
    /// The file could not be read.
    #[error("cannot read {path}: {message}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// One line is wrong.
    #[error("{path}:{line}: {message}")]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// Nothing to train on.
    #[error("{path}: {message}")]
    Empty {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

/// The line formats, in words, for error messages.
const FORMATS: &str = r#"each line must be {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]} or {"prompt": "...", "completion": "..."}"#;

impl Dataset {
    /// Read the JSON-lines dataset at `path`, each example cut to
    /// `max_tokens` tokens. Blank lines are skipped.
    pub fn read(
        path: &Path,
        tokenizer: &TextTokenizer,
        max_tokens: usize,
    ) -> Result<Dataset, DatasetError> {
        let io = |message: String| DatasetError::Io {
            path: path.to_path_buf(),
            message,
        };
        let file = std::fs::File::open(path).map_err(|e| io(e.to_string()))?;
        let size = file.metadata().map_err(|e| io(e.to_string()))?.len();
        if size > MAX_DATASET_BYTES {
            return Err(io(format!(
                "{size} bytes; datasets are read up to {MAX_DATASET_BYTES} bytes: split it"
            )));
        }
        let mut reader = std::io::BufReader::new(file);
        let mut dataset = Dataset {
            examples: Vec::new(),
            truncated: 0,
            skipped: 0,
        };
        let mut buf = Vec::new();
        for line in 1.. {
            buf.clear();
            let read = (&mut reader)
                .take(MAX_LINE_BYTES as u64 + 1)
                .read_until(b'\n', &mut buf)
                .map_err(|e| io(e.to_string()))?;
            if read == 0 {
                break;
            }
            let fail = |message: String| DatasetError::Line {
                path: path.to_path_buf(),
                line,
                message,
            };
            if buf.len() > MAX_LINE_BYTES {
                return Err(fail(format!(
                    "longer than {MAX_LINE_BYTES} bytes; one example per line, each shorter"
                )));
            }
            let text = std::str::from_utf8(&buf).map_err(|e| fail(format!("not UTF-8: {e}")))?;
            if text.trim().is_empty() {
                continue;
            }
            let value: serde_json::Value =
                serde_json::from_str(text).map_err(|e| fail(format!("not JSON: {e}")))?;
            let mut example = example_of(&value, tokenizer).map_err(fail)?;
            example.line = line;
            if example.tokens.len() > max_tokens {
                example.tokens.truncate(max_tokens);
                example.learn.truncate(max_tokens);
                dataset.truncated += 1;
            }
            // The first token is never predicted.
            if example.learn.iter().skip(1).any(|&l| l) {
                dataset.examples.push(example);
            } else {
                dataset.skipped += 1;
            }
        }
        if dataset.examples.is_empty() {
            return Err(DatasetError::Empty {
                path: path.to_path_buf(),
                message: if dataset.skipped > 0 {
                    format!(
                        "no example has a token to learn within {max_tokens} tokens; raise --max-tokens"
                    )
                } else {
                    format!("no examples; {FORMATS}")
                },
            });
        }
        Ok(dataset)
    }
}

/// The example one JSON line describes.
fn example_of(value: &serde_json::Value, tokenizer: &TextTokenizer) -> Result<Example, String> {
    let object = value
        .as_object()
        .ok_or_else(|| format!("not an object; {FORMATS}"))?;
    if let Some(messages) = object.get("messages") {
        chat_example(messages, tokenizer)
    } else if object.contains_key("prompt") || object.contains_key("completion") {
        let text = |key: &str| {
            object
                .get(key)
                .and_then(serde_json::Value::as_str)
                .ok_or_else(|| format!("`{key}` must be a string; {FORMATS}"))
        };
        let (prompt, completion) = (text("prompt")?, text("completion")?);
        // As TRL's prompt-completion format: the prompt as raw text (its
        // markup, if any, is the author's), the completion learned, then
        // the end-of-sequence token.
        let tokenize = |e: super::TokenizerError| e.to_string();
        let mut tokens = tokenizer.encode_prompt(prompt).map_err(tokenize)?;
        let mut learn = vec![false; tokens.len()];
        let answer = tokenizer.encode(completion).map_err(tokenize)?;
        tokens.extend(&answer);
        tokens.push(tokenizer.eos());
        learn.resize(tokens.len(), true);
        Ok(Example {
            tokens,
            learn,
            line: 0,
        })
    } else {
        let keys: Vec<&str> = object.keys().map(String::as_str).collect();
        Err(format!("has keys {keys:?}; {FORMATS}"))
    }
}

/// A chat's tokens, learning every assistant turn through its end-of-turn
/// token. Messages after the last assistant turn teach nothing and are
/// left out.
fn chat_example(
    messages: &serde_json::Value,
    tokenizer: &TextTokenizer,
) -> Result<Example, String> {
    let list = messages
        .as_array()
        .ok_or_else(|| format!("`messages` must be a list; {FORMATS}"))?;
    let mut chat = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let field = |key: &str| {
            m.get(key)
                .and_then(serde_json::Value::as_str)
                .ok_or_else(|| format!("message {i} needs a string `{key}`"))
        };
        let role = match field("role")? {
            "system" => ChatRole::System,
            "user" => ChatRole::User,
            "assistant" => ChatRole::Assistant,
            "tool" => ChatRole::Tool,
            other => {
                return Err(format!(
                    "message {i} has role `{other}`; use system, user, assistant or tool"
                ));
            }
        };
        chat.push(ChatMessage {
            role,
            content: field("content")?.to_string(),
        });
    }
    let last = chat
        .iter()
        .rposition(|m| m.role == ChatRole::Assistant)
        .ok_or("no assistant message: nothing to learn")?;
    chat.truncate(last + 1);
    let encode = |msgs: &[ChatMessage], open: bool| {
        tokenizer
            .encode_chat(msgs, open)
            .map_err(|e| format!("cannot render the chat template: {e}"))
    };
    let tokens = encode(&chat, false)?;
    let mut learn = vec![false; tokens.len()];
    for (i, m) in chat.iter().enumerate() {
        if m.role != ChatRole::Assistant {
            continue;
        }
        let before = encode(&chat[..i], true)?;
        let through = encode(&chat[..=i], false)?;
        if !tokens.starts_with(&before) || !tokens.starts_with(&through) {
            return Err(
                "the model's chat template renders a conversation's start differently from the whole conversation, so assistant turns cannot be found; use {\"prompt\", \"completion\"} lines"
                    .into(),
            );
        }
        // The turn's tokens through its end-of-turn token; what the
        // template adds after it (a newline) is not the model's to say.
        let end = tokens[before.len()..through.len()]
            .iter()
            .position(|&t| t == tokenizer.eos())
            .map_or(through.len(), |p| before.len() + p + 1);
        learn[before.len()..end].fill(true);
    }
    Ok(Example {
        tokens,
        learn,
        line: 0,
    })
}

/// How to train.
#[derive(Debug, Clone, PartialEq)]
pub struct AdaptOptions {
    /// LoRA rank.
    pub rank: usize,
    /// LoRA alpha (the delta is scaled by `alpha / rank`).
    pub alpha: f64,
    /// Projections to adapt.
    pub targets: Vec<Target>,
    /// Passes over the training examples.
    pub epochs: usize,
    /// Adam's learning rate.
    pub lr: f64,
    /// Seed of the initial weights, the split and the order.
    pub seed: u64,
    /// Examples per optimizer step.
    pub batch: usize,
    /// Fraction of the examples held out to measure the loss on.
    pub holdout: f64,
}

impl Default for AdaptOptions {
    fn default() -> Self {
        AdaptOptions {
            rank: 8,
            alpha: 16.0,
            targets: vec![Target::Q, Target::V],
            epochs: 3,
            lr: 1e-3,
            seed: 0,
            batch: 4,
            holdout: 0.1,
        }
    }
}

impl AdaptOptions {
    /// Check the options, saying which is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.rank == 0 || self.rank > super::lora::MAX_RANK {
            return Err(format!(
                "--rank must be 1 to {}, not {}",
                super::lora::MAX_RANK,
                self.rank
            ));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err("--alpha must be a positive number".into());
        }
        if self.targets.is_empty() {
            return Err("--targets names no projection; use q,k,v,o,gate,up,down".into());
        }
        if self.epochs == 0 {
            return Err("--epochs must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0 && self.lr < 1.0) {
            return Err("--lr must be between 0 and 1 (1e-4 to 5e-3 is usual)".into());
        }
        if self.batch == 0 {
            return Err("--batch must be at least 1".into());
        }
        if !(0.0..0.9).contains(&self.holdout) {
            return Err("--holdout must be a fraction from 0 to 0.9".into());
        }
        Ok(())
    }
}

/// The examples split into training and held-out sets, from the seed.
pub fn split(examples: Vec<Example>, holdout: f64, seed: u64) -> (Vec<Example>, Vec<Example>) {
    let n = examples.len();
    let held = if n < 2 {
        0
    } else {
        ((n as f64 * holdout).round() as usize).clamp(usize::from(holdout > 0.0), n - 1)
    };
    let mut order: Vec<usize> = (0..n).collect();
    shuffle(
        &mut order,
        &mut ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_5911_7000),
    );
    let mut held_out: Vec<usize> = order[..held].to_vec();
    held_out.sort_unstable();
    let mut train = Vec::with_capacity(n - held);
    let mut test = Vec::with_capacity(held);
    for (i, e) in examples.into_iter().enumerate() {
        if held_out.binary_search(&i).is_ok() {
            test.push(e);
        } else {
            train.push(e);
        }
    }
    (train, test)
}

/// Fisher–Yates with `rng`.
fn shuffle<T>(items: &mut [T], rng: &mut ChaCha8Rng) {
    for i in (1..items.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

/// One adapted projection's weights and Adam moments, in the engine's
/// layout: `a` is `[in, r]`, `b` is `[r, out]`.
struct Param {
    layer: usize,
    target: Target,
    inp: usize,
    out: usize,
    a: Vec<f32>,
    b: Vec<f32>,
    moments: [Vec<f32>; 4],
}

/// What one optimizer step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// Mean loss over the batch's learned tokens, before the update.
    pub loss: f64,
    /// Tokens the forward pass ran.
    pub tokens: usize,
    /// Tokens the loss learned.
    pub learned: usize,
}

/// A LoRA being trained on a loaded model.
pub struct Trainer<'m> {
    model: &'m Llama,
    options: AdaptOptions,
    params: Vec<Param>,
    scale: f32,
    device: Device,
    steps: u64,
    rng: ChaCha8Rng,
}

impl<'m> Trainer<'m> {
    /// A fresh adapter on `model`: `A` Kaiming-uniform (bound `1/√in`, as
    /// PEFT's `kaiming_uniform_(a=√5)`), `B` zero.
    pub fn new(model: &'m Llama, options: AdaptOptions) -> Result<Trainer<'m>, String> {
        options.validate()?;
        let cfg = model.config();
        let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
        let r = options.rank;
        let mut targets = options.targets.clone();
        targets.sort_unstable();
        targets.dedup();
        let mut params = Vec::new();
        for layer in 0..cfg.layers {
            for &target in &targets {
                let (out, inp) = target.shape(cfg);
                let bound = 1.0 / (inp as f32).sqrt();
                // Drawn in PEFT's `[r, in]` order, stored as `[in, r]`.
                let a_peft: Vec<f32> = (0..r * inp)
                    .map(|_| (uniform(&mut rng) * 2.0 - 1.0) * bound)
                    .collect();
                let a = super::llama::transpose(&a_peft, r, inp);
                let b = vec![0.0; r * out];
                let moments = [
                    vec![0.0; a.len()],
                    vec![0.0; a.len()],
                    vec![0.0; b.len()],
                    vec![0.0; b.len()],
                ];
                params.push(Param {
                    layer,
                    target,
                    inp,
                    out,
                    a,
                    b,
                    moments,
                });
            }
        }
        let scale = (options.alpha / r as f64) as f32;
        let rng = ChaCha8Rng::seed_from_u64(options.seed.wrapping_add(1));
        Ok(Trainer {
            model,
            options: AdaptOptions { targets, ..options },
            params,
            scale,
            device: model.device().clone(),
            steps: 0,
            rng,
        })
    }

    /// The options it trains with.
    pub fn options(&self) -> &AdaptOptions {
        &self.options
    }

    /// Trainable parameters.
    pub fn parameters(&self) -> usize {
        self.params.iter().map(|p| p.a.len() + p.b.len()).sum()
    }

    /// Optimizer steps taken.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The training examples' order for the next epoch (indices into
    /// them), from the seed.
    pub fn epoch_order(&mut self, examples: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..examples).collect();
        shuffle(&mut order, &mut self.rng);
        order
    }

    /// The adapter as it stands, its tensors on `device` (autodiff leaves
    /// when `device` is an autodiff device).
    fn adapter(&self, device: &Device, leaves: bool) -> (LoraAdapter, Vec<[Tensor<2>; 2]>) {
        let r = self.options.rank;
        let cfg = self.model.config();
        let mut layers: Vec<[Option<(Tensor<2>, Tensor<2>)>; 7]> =
            (0..cfg.layers).map(|_| Default::default()).collect();
        let mut handles = Vec::with_capacity(self.params.len());
        for p in &self.params {
            let mut a = Tensor::<2>::from_data(TensorData::new(p.a.clone(), [p.inp, r]), device);
            let mut b = Tensor::<2>::from_data(TensorData::new(p.b.clone(), [r, p.out]), device);
            if leaves {
                a = a.require_grad();
                b = b.require_grad();
            }
            layers[p.layer][p.target as usize] = Some((a.clone(), b.clone()));
            handles.push([a, b]);
        }
        let adapter = LoraAdapter::from_pairs(r, self.scale, None, layers);
        (adapter, handles)
    }

    /// The trained adapter, ready to serve on the model's device.
    pub fn current(&self) -> LoraAdapter {
        self.adapter(&self.device, false).0
    }

    /// One optimizer step on `batch`.
    pub fn step(&mut self, batch: &[&Example]) -> StepReport {
        let autodiff = self.device.clone().autodiff();
        let (adapter, handles) = self.adapter(&autodiff, true);
        let (loss, tokens, learned) = batch_loss(self.model, batch, Some(&adapter));
        let grads = loss.backward();
        let value = f64::from(loss.into_scalar::<f32>());
        let mut grads: Vec<[Vec<f32>; 2]> = handles
            .iter()
            .zip(&self.params)
            .map(|([a, b], p)| {
                let read = |t: &Tensor<2>, len: usize| {
                    t.grad(&grads).map_or_else(
                        || vec![0.0; len],
                        |g| g.into_data().try_into_vec::<f32>().expect("f32 gradients"),
                    )
                };
                [read(a, p.a.len()), read(b, p.b.len())]
            })
            .collect();
        drop(adapter);
        drop(handles);

        // Clip the global norm to 1.0, then Adam.
        let norm = grads
            .iter()
            .flatten()
            .flatten()
            .map(|&g| f64::from(g) * f64::from(g))
            .sum::<f64>()
            .sqrt();
        let clip = if norm > 1.0 { (1.0 / norm) as f32 } else { 1.0 };
        self.steps += 1;
        let t = self.steps as i32;
        let (b1, b2, eps) = (0.9f32, 0.999f32, 1e-8f32);
        let lr = self.options.lr as f32;
        let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        for (p, g) in self.params.iter_mut().zip(&mut grads) {
            let [m_a, v_a, m_b, v_b] = &mut p.moments;
            for (w, g, m, v) in [(&mut p.a, &g[0], m_a, v_a), (&mut p.b, &g[1], m_b, v_b)] {
                for i in 0..w.len() {
                    let g = g[i] * clip;
                    m[i] = b1 * m[i] + (1.0 - b1) * g;
                    v[i] = b2 * v[i] + (1.0 - b2) * g * g;
                    w[i] -= lr * (m[i] / c1) / ((v[i] / c2).sqrt() + eps);
                }
            }
        }
        StepReport {
            loss: value,
            tokens,
            learned,
        }
    }

    /// Mean loss per learned token over `examples`, with the adapter as
    /// it stands (`adapted`) or the base model alone; `batch` examples per
    /// forward pass.
    pub fn eval(&self, examples: &[Example], adapted: bool) -> f64 {
        let adapter = adapted.then(|| self.current());
        mean_loss(self.model, examples, adapter.as_ref(), self.options.batch)
    }

    /// Write the adapter to `dir` in PEFT's format, naming `base_model`.
    pub fn save(&self, dir: &Path, base_model: &str) -> std::io::Result<()> {
        let cfg = self.model.config();
        let spec = PeftSpec {
            r: self.options.rank,
            alpha: self.options.alpha,
            targets: self.options.targets.clone(),
            base_model: base_model.to_string(),
        };
        let r = self.options.rank;
        write_peft(dir, cfg, &spec, |layer, target| {
            let p = self
                .params
                .iter()
                .find(|p| p.layer == layer && p.target == target)
                .expect("every layer has every target");
            (
                super::llama::transpose(&p.a, p.inp, r),
                super::llama::transpose(&p.b, r, p.out),
            )
        })
    }
}

/// A uniform draw in `[0, 1)`.
fn uniform(rng: &mut ChaCha8Rng) -> f32 {
    (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32
}

/// Mean loss per learned token over `examples`, `batch` at a time.
pub fn mean_loss(
    model: &Llama,
    examples: &[Example],
    adapter: Option<&LoraAdapter>,
    batch: usize,
) -> f64 {
    let (mut total, mut count) = (0.0, 0usize);
    for chunk in examples.chunks(batch.max(1)) {
        let refs: Vec<&Example> = chunk.iter().collect();
        let (loss, _, learned) = batch_loss(model, &refs, adapter);
        total += f64::from(loss.into_scalar::<f32>()) * learned as f64;
        count += learned;
    }
    if count == 0 {
        f64::NAN
    } else {
        total / count as f64
    }
}

/// Mean cross-entropy of the learned tokens of `batch` (one forward pass
/// over all of it), with the tokens run and learned.
fn batch_loss(
    model: &Llama,
    batch: &[&Example],
    adapter: Option<&LoraAdapter>,
) -> (Tensor<1>, usize, usize) {
    let mut caches: Vec<KvCache> = batch.iter().map(|_| model.new_cache()).collect();
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    let mut offset = 0;
    for e in batch {
        // Position t predicts token t + 1; the last token predicts nothing.
        for t in 0..e.tokens.len() - 1 {
            if e.learn[t + 1] {
                rows.push((offset + t) as i64);
                targets.push(i64::from(e.tokens[t + 1]));
            }
        }
        offset += e.tokens.len() - 1;
    }
    let mut inputs: Vec<StepInput<'_, KvCache>> = batch
        .iter()
        .zip(caches.iter_mut())
        .map(|(e, cache)| StepInput {
            tokens: &e.tokens[..e.tokens.len() - 1],
            cache,
            all_logits: true,
            adapter,
        })
        .collect();
    let hidden = model.hidden(&mut inputs);
    let device = model.device();
    let learned = rows.len();
    let rows = Tensor::<1, Int>::from_data(TensorData::new(rows, [learned]), device);
    let targets = Tensor::<2, Int>::from_data(TensorData::new(targets, [learned, 1]), device);
    let logits = model.logits(hidden.select(0, rows));
    let chosen = log_softmax(logits, 1).gather(1, targets);
    let loss = chosen.sum().neg().div_scalar(learned as f64);
    (loss, offset, learned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inference::{DeviceChoice, open_weights, test_smollm2};

    fn tokenizer() -> TextTokenizer {
        open_weights(&test_smollm2()).unwrap().1
    }

    fn write(lines: &[&str]) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), lines.join("\n")).unwrap();
        file
    }

    #[test]
    fn chats_learn_assistant_turns_and_completions_learn_the_completion() {
        let tok = tokenizer();
        let file = write(&[
            r#"{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"}, {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Goodbye"}]}"#,
            "",
            r#"{"prompt": "2+2=", "completion": "4"}"#,
        ]);
        let data = Dataset::read(file.path(), &tok, 512).unwrap();
        assert_eq!(data.examples.len(), 2);
        let chat = &data.examples[0];
        assert_eq!(chat.line, 1);
        // What is learned decodes to both answers, each with its end of
        // turn, and nothing of the user's turns.
        let learned: Vec<u32> = chat
            .tokens
            .iter()
            .zip(&chat.learn)
            .filter(|(_, l)| **l)
            .map(|(t, _)| *t)
            .collect();
        assert_eq!(
            tok.decode(&learned, true).unwrap(),
            "Hello there<|im_end|>Goodbye<|im_end|>"
        );
        let completion = &data.examples[1];
        assert_eq!(completion.line, 3);
        let learned: Vec<u32> = completion
            .tokens
            .iter()
            .zip(&completion.learn)
            .filter(|(_, l)| **l)
            .map(|(t, _)| *t)
            .collect();
        assert_eq!(*learned.last().unwrap(), tok.eos());
        assert_eq!(tok.decode(&learned, false).unwrap(), "4");
    }

    #[test]
    fn bad_lines_are_named_with_the_fix() {
        let tok = tokenizer();
        let err = |lines: &[&str]| {
            let file = write(lines);
            Dataset::read(file.path(), &tok, 512)
                .unwrap_err()
                .to_string()
        };
        let e = err(&[r#"{"prompt": "a", "completion": "b"}"#, "{not json"]);
        assert!(e.contains(":2: not JSON"), "{e}");
        let e = err(&[r#"{"text": "a"}"#]);
        assert!(
            e.contains(":1: has keys [\"text\"]") && e.contains("\"messages\""),
            "{e}"
        );
        let e = err(&[r#"{"messages": [{"role": "user", "content": "a"}]}"#]);
        assert!(e.contains("no assistant message"), "{e}");
        let e = err(&[r#"{"messages": [{"role": "bot", "content": "a"}]}"#]);
        assert!(e.contains("role `bot`"), "{e}");
        let e = err(&[r#"{"prompt": "a", "completion": 3}"#]);
        assert!(e.contains("`completion` must be a string"), "{e}");
        assert!(err(&[""]).contains("no examples"));
        // Cut so short that nothing is left to learn.
        let file = write(&[r#"{"prompt": "a long prompt here", "completion": "b"}"#]);
        let e = Dataset::read(file.path(), &tok, 2).unwrap_err().to_string();
        assert!(e.contains("raise --max-tokens"), "{e}");
    }

    #[test]
    fn the_split_is_fixed_by_the_seed_and_keeps_a_training_set() {
        let examples: Vec<Example> = (0..20)
            .map(|line| Example {
                tokens: vec![1, 2],
                learn: vec![false, true],
                line,
            })
            .collect();
        let (train, test) = split(examples.clone(), 0.1, 7);
        assert_eq!((train.len(), test.len()), (18, 2));
        let (train2, test2) = split(examples.clone(), 0.1, 7);
        assert_eq!((train, test), (train2, test2));
        let (_, other) = split(examples.clone(), 0.1, 8);
        assert_ne!(other, split(examples.clone(), 0.1, 7).1);
        assert_eq!(split(examples[..1].to_vec(), 0.5, 1).1.len(), 0);
        assert_eq!(split(examples[..2].to_vec(), 0.9, 1).0.len(), 1);
    }

    /// The gradient autodiff gives `B` matches a finite difference of the
    /// loss: the training graph is wired to the served forward pass.
    #[test]
    fn gradients_match_finite_differences() {
        let (weights, tok) = open_weights(&test_smollm2()).unwrap();
        let device = DeviceChoice::Cpu.device().unwrap();
        let model = Llama::load(weights.as_ref(), &device).unwrap();
        let file = write(&[r#"{"prompt": "The capital of France is", "completion": " Paris."}"#]);
        let data = Dataset::read(file.path(), &tok, 64).unwrap();
        let options = AdaptOptions {
            rank: 2,
            targets: vec![Target::V],
            ..AdaptOptions::default()
        };
        let mut trainer = Trainer::new(&model, options).unwrap();
        // Move B off zero so that A's gradient is not zero either.
        for p in &mut trainer.params {
            for (i, w) in p.b.iter_mut().enumerate() {
                *w = ((i % 7) as f32 - 3.0) * 0.01;
            }
        }
        let batch: Vec<&Example> = data.examples.iter().collect();
        let autodiff = device.clone().autodiff();
        let (adapter, handles) = trainer.adapter(&autodiff, true);
        let (loss, _, _) = batch_loss(&model, &batch, Some(&adapter));
        let grads = loss.backward();
        let last = trainer.params.len() - 1;
        let grad_b: Vec<f32> = handles[last][1]
            .grad(&grads)
            .unwrap()
            .into_data()
            .try_into_vec()
            .unwrap();
        let grad_a: Vec<f32> = handles[0][0]
            .grad(&grads)
            .unwrap()
            .into_data()
            .try_into_vec()
            .unwrap();
        let eval = |t: &Trainer<'_>| {
            let adapter = t.current();
            let (loss, _, _) = batch_loss(&model, &batch, Some(&adapter));
            f64::from(loss.into_scalar::<f32>())
        };
        let h = 1e-2f32;
        let mut checks = 0;
        for (which, index, analytic) in [
            (
                1,
                grad_b
                    .iter()
                    .enumerate()
                    .max_by(|x, y| x.1.abs().total_cmp(&y.1.abs()))
                    .unwrap()
                    .0,
                &grad_b,
            ),
            (
                0,
                grad_a
                    .iter()
                    .enumerate()
                    .max_by(|x, y| x.1.abs().total_cmp(&y.1.abs()))
                    .unwrap()
                    .0,
                &grad_a,
            ),
        ] {
            let p = if which == 1 { last } else { 0 };
            let nudge = |t: &mut Trainer<'_>, by: f32| {
                let w = if which == 1 {
                    &mut t.params[p].b
                } else {
                    &mut t.params[p].a
                };
                w[index] += by;
            };
            nudge(&mut trainer, h);
            let up = eval(&trainer);
            nudge(&mut trainer, -2.0 * h);
            let down = eval(&trainer);
            nudge(&mut trainer, h);
            let numeric = (up - down) / (2.0 * f64::from(h));
            let analytic = f64::from(analytic[index]);
            assert!(
                analytic.abs() > 1e-4,
                "gradient {analytic} too small to check"
            );
            assert!(
                (numeric - analytic).abs() <= 0.05 * analytic.abs() + 1e-4,
                "{} gradient: autodiff {analytic}, finite difference {numeric}",
                if which == 1 { "B" } else { "A" }
            );
            checks += 1;
        }
        assert_eq!(checks, 2);
    }
}
