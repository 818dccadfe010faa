//! The language model's tokenizer and chat template, built from GGUF
//! metadata: byte-level BPE with the `tokenizers` crate, the model's own
//! Jinja chat template rendered with `minijinja`.

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer};

use super::gguf::{GgufFile, Value};
use super::{ChatMessage, ChatRole};

/// GGUF's token type for control (special) tokens.
const TOKEN_TYPE_CONTROL: u64 = 3;

/// Why a tokenizer cannot be built or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenizerError {
    /// The GGUF metadata lacks something the tokenizer needs.
    #[error("GGUF metadata: {0}")]
    Metadata(String),
    /// The tokenizer model (`tokenizer.ggml.model`) or pre-tokenizer is not
    /// supported.
    #[error("{0}")]
    Unsupported(String),
    /// The `tokenizers` crate failed.
    #[error("tokenizer: {0}")]
    Tokenizers(String),
    /// The chat template does not parse or render.
    #[error("chat template: {0}")]
    Template(String),
}

/// Tokenizer, special tokens and chat template of a language model.
pub struct TextTokenizer {
    inner: Tokenizer,
    /// The same tokenizer with special tokens encoded as plain text: for
    /// what users and experts write, so that typing `<|im_start|>` in a
    /// message cannot open a turn of the chat template.
    plain: Tokenizer,
    /// Bytes of the longest token's text: no token covers more input.
    max_token_bytes: usize,
    bos: u32,
    eos: u32,
    add_bos: bool,
    template: Option<String>,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("vocab", &self.inner.get_vocab_size(true))
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish_non_exhaustive()
    }
}

fn strings<'a>(g: &'a GgufFile, key: &str) -> Result<Vec<&'a str>, TokenizerError> {
    g.get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| TokenizerError::Metadata(format!("`{key}` is missing or not an array")))?
        .iter()
        .map(|v| {
            v.as_str()
                .ok_or_else(|| TokenizerError::Metadata(format!("`{key}` holds a non-string")))
        })
        .collect()
}

/// `inner` with special tokens treated as text.
fn plain(inner: &Tokenizer) -> Tokenizer {
    let mut plain = inner.clone();
    plain.set_encode_special_tokens(true);
    plain
}

/// The longest token's text, in bytes. A byte-level token's text holds a
/// character (of one or two UTF-8 bytes) per input byte, so this bounds the
/// input bytes one token can stand for.
fn max_token_bytes(inner: &Tokenizer) -> usize {
    inner
        .get_vocab(true)
        .keys()
        .map(String::len)
        .max()
        .unwrap_or(1)
}

/// Marks a message's place in the rendered chat template: private-use
/// characters around a per-call nonce, which no template produces and no
/// message can predict.
fn sentinel(nonce: u64, index: usize) -> String {
    format!("\u{F8FF}{nonce:016x}:{index}\u{F8FE}")
}

impl TextTokenizer {
    /// Build the tokenizer a GGUF file describes. Supports byte-level BPE
    /// (`tokenizer.ggml.model = "gpt2"`), the Llama-family tokenizers of
    /// SmolLM, Qwen2 and Llama 3.
    pub fn from_gguf(g: &GgufFile) -> Result<TextTokenizer, TokenizerError> {
        let model = g
            .get("tokenizer.ggml.model")
            .and_then(Value::as_str)
            .unwrap_or("");
        if model != "gpt2" {
            return Err(TokenizerError::Unsupported(format!(
                "tokenizer model `{model}` is not supported (only byte-level BPE, `gpt2`)"
            )));
        }
        let tokens = strings(g, "tokenizer.ggml.tokens")?;
        let merges = strings(g, "tokenizer.ggml.merges")?;
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(id, t)| (t.to_string(), id as u32))
            .collect();
        let merges: Vec<(String, String)> = merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| TokenizerError::Metadata(format!("merge {m:?} has no space")))
            })
            .collect::<Result<_, _>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| TokenizerError::Tokenizers(e.to_string()))?;

        let mut inner = Tokenizer::new(bpe);
        // SmolLM's pre-tokenizer splits digits one by one before the GPT-2
        // byte-level split; `llama-bpe` and `qwen2` split digit runs of up
        // to three, which the byte-level regex already does.
        let pre = g
            .get("tokenizer.ggml.pre")
            .and_then(Value::as_str)
            .unwrap_or("default");
        let byte_level = ByteLevel::new(false, true, true);
        match pre {
            "smollm" => {
                inner.with_pre_tokenizer(Some(Sequence::new(vec![
                    Digits::new(true).into(),
                    byte_level.into(),
                ])));
            }
            "default" | "gpt2" | "llama-bpe" | "qwen2" => {
                inner.with_pre_tokenizer(Some(byte_level));
            }
            other => {
                return Err(TokenizerError::Unsupported(format!(
                    "pre-tokenizer `{other}` is not supported (known: smollm, gpt2, llama-bpe, qwen2)"
                )));
            }
        }
        inner.with_decoder(Some(ByteLevelDecoder::default()));

        // Control tokens are matched whole, before BPE.
        if let Some(types) = g.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
            let special: Vec<AddedToken> = types
                .iter()
                .zip(&tokens)
                .filter(|(ty, _)| ty.as_u64() == Some(TOKEN_TYPE_CONTROL))
                .map(|(_, t)| AddedToken::from(t.to_string(), true))
                .collect();
            inner.add_special_tokens(&special);
        }

        let id = |key: &str| -> Result<u32, TokenizerError> {
            g.get(key)
                .and_then(Value::as_u64)
                .and_then(|v| u32::try_from(v).ok())
                .ok_or_else(|| TokenizerError::Metadata(format!("`{key}` is missing")))
        };
        Ok(TextTokenizer {
            plain: plain(&inner),
            max_token_bytes: max_token_bytes(&inner),
            inner,
            bos: id("tokenizer.ggml.bos_token_id")?,
            eos: id("tokenizer.ggml.eos_token_id")?,
            add_bos: matches!(
                g.get("tokenizer.ggml.add_bos_token"),
                Some(Value::Bool(true))
            ),
            template: g
                .get("tokenizer.chat_template")
                .and_then(Value::as_str)
                .map(str::to_string),
        })
    }

    /// Load a Hugging Face tokenizer directory: `tokenizer.json`, and from
    /// `tokenizer_config.json` (when present) the chat template, the BOS
    /// and EOS tokens and whether BOS is added.
    pub fn from_hf_dir(dir: &std::path::Path) -> Result<TextTokenizer, TokenizerError> {
        let inner = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| TokenizerError::Tokenizers(format!("tokenizer.json: {e}")))?;
        let config: serde_json::Value =
            match std::fs::read_to_string(dir.join("tokenizer_config.json")) {
                Ok(text) => serde_json::from_str(&text)
                    .map_err(|e| TokenizerError::Metadata(format!("tokenizer_config.json: {e}")))?,
                Err(_) => serde_json::Value::Null,
            };
        // A special token is a string or `{"content": ...}`.
        let token = |key: &str| {
            let v = &config[key];
            v.as_str()
                .or_else(|| v["content"].as_str())
                .and_then(|t| inner.token_to_id(t))
        };
        let eos = token("eos_token").ok_or_else(|| {
            TokenizerError::Metadata(
                "tokenizer_config.json: `eos_token` is missing or unknown".into(),
            )
        })?;
        let bos = token("bos_token").unwrap_or(eos);
        Ok(TextTokenizer {
            add_bos: config["add_bos_token"].as_bool().unwrap_or(false),
            template: config["chat_template"].as_str().map(str::to_string),
            plain: plain(&inner),
            max_token_bytes: max_token_bytes(&inner),
            inner,
            bos,
            eos,
        })
    }

    /// Write this tokenizer as a Hugging Face tokenizer directory
    /// (`tokenizer.json`, `tokenizer_config.json`), the form
    /// [`TextTokenizer::from_hf_dir`] reads.
    pub fn save_hf_dir(&self, dir: &std::path::Path) -> Result<(), TokenizerError> {
        let io = |e: std::io::Error| TokenizerError::Tokenizers(e.to_string());
        let json = self
            .inner
            .to_string(false)
            .map_err(|e| TokenizerError::Tokenizers(e.to_string()))?;
        std::fs::write(dir.join("tokenizer.json"), json).map_err(io)?;
        let config = serde_json::json!({
            "bos_token": self.token(self.bos),
            "eos_token": self.token(self.eos),
            "add_bos_token": self.add_bos,
            "chat_template": self.template,
        });
        std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).map_err(io)
    }

    /// Token ids of `text`; special tokens written in the text (such as
    /// `<|im_start|>`) become their ids. No BOS is added. For raw prompts
    /// whose author writes the markup; see [`encode_text`](Self::encode_text)
    /// for text from users.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        self.inner
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| TokenizerError::Tokenizers(e.to_string()))
    }

    /// Token ids of `text` with special-token strings treated as plain
    /// text: `<|im_start|>` typed by a user is the characters, not the
    /// control token. No BOS is added.
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        self.plain
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| TokenizerError::Tokenizers(e.to_string()))
    }

    /// Token ids of a conversation rendered with the chat template (BOS
    /// first when the model wants it). The template's own markup becomes
    /// control tokens; the messages' text never does, whatever it holds.
    pub fn encode_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>, TokenizerError> {
        use std::hash::{BuildHasher, Hasher};
        let nonce = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let marked: Vec<ChatMessage> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| ChatMessage {
                role: m.role,
                content: sentinel(nonce, i),
            })
            .collect();
        let rendered = self.apply_chat_template(&marked, add_generation_prompt)?;
        let mut ids = Vec::new();
        if self.add_bos {
            ids.push(self.bos);
        }
        let mut rest = rendered.as_str();
        for (i, message) in messages.iter().enumerate() {
            let mark = sentinel(nonce, i);
            let Some((markup, after)) = rest.split_once(&mark) else {
                // A template that transforms or drops the content: render
                // it as is, with its special tokens defused.
                return self.encode_chat_defused(messages, add_generation_prompt);
            };
            ids.extend(self.encode(markup)?);
            ids.extend(self.encode_text(&message.content)?);
            rest = after;
        }
        if rest.contains('\u{F8FF}') && rest.contains(&format!("{nonce:016x}")) {
            // A sentinel appeared twice: the template repeats content.
            return self.encode_chat_defused(messages, add_generation_prompt);
        }
        ids.extend(self.encode(rest)?);
        Ok(ids)
    }

    /// The fallback of [`encode_chat`](Self::encode_chat) for templates
    /// that do not copy each message once, verbatim: every special token's
    /// text in the messages is broken with a zero-width space, then the
    /// whole rendering is tokenized.
    fn encode_chat_defused(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>, TokenizerError> {
        let specials: Vec<String> = self
            .inner
            .get_added_tokens_decoder()
            .values()
            .filter(|t| t.special && t.content.chars().count() > 1)
            .map(|t| t.content.clone())
            .collect();
        let defused: Vec<ChatMessage> = messages
            .iter()
            .map(|m| {
                let mut content = m.content.clone();
                for special in &specials {
                    let mut chars = special.chars();
                    let first = chars.next().expect("more than one char");
                    let broken = format!("{first}\u{200B}{}", chars.as_str());
                    content = content.replace(special.as_str(), &broken);
                }
                ChatMessage {
                    role: m.role,
                    content,
                }
            })
            .collect();
        let text = self.apply_chat_template(&defused, add_generation_prompt)?;
        self.encode_prompt(&text)
    }

    /// Token ids of a prompt: BOS first when the model wants it.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let mut ids = Vec::new();
        if self.add_bos {
            ids.push(self.bos);
        }
        ids.extend(self.encode(text)?);
        Ok(ids)
    }

    /// The text of `ids`; special tokens are kept when `keep_special`.
    pub fn decode(&self, ids: &[u32], keep_special: bool) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, !keep_special)
            .map_err(|e| TokenizerError::Tokenizers(e.to_string()))
    }

    /// The text of one token id (special tokens included).
    pub fn token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id of a token's text, if it is one token.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Bytes of the longest token's text: an upper bound on the input
    /// bytes one token stands for.
    pub fn max_token_bytes(&self) -> usize {
        self.max_token_bytes
    }

    /// Beginning-of-sequence id.
    pub fn bos(&self) -> u32 {
        self.bos
    }

    /// End-of-sequence (end of turn) id.
    pub fn eos(&self) -> u32 {
        self.eos
    }

    /// Vocabulary size, special tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Render `messages` with the model's chat template, ending with the
    /// assistant's turn opened when `add_generation_prompt`.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let template = self.template.as_deref().ok_or_else(|| {
            TokenizerError::Template(
                "the model has no chat template (tokenizer.chat_template)".into(),
            )
        })?;
        let mut env = minijinja::Environment::new();
        env.add_template("chat", template)
            .map_err(|e| TokenizerError::Template(e.to_string()))?;
        let messages: Vec<_> = messages
            .iter()
            .map(|m| {
                minijinja::context! {
                    role => match m.role {
                        ChatRole::System => "system",
                        ChatRole::User => "user",
                        ChatRole::Assistant => "assistant",
                        ChatRole::Tool => "tool",
                    },
                    content => m.content,
                }
            })
            .collect();
        let bos = self.token(self.bos).unwrap_or_default();
        let eos = self.token(self.eos).unwrap_or_default();
        env.get_template("chat")
            .and_then(|t| {
                t.render(minijinja::context! {
                    messages => messages,
                    add_generation_prompt => add_generation_prompt,
                    bos_token => bos,
                    eos_token => eos,
                })
            })
            .map_err(|e| TokenizerError::Template(e.to_string()))
    }
}
