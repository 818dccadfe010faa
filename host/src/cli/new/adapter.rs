//! What the adapter templates share across languages: the manifest, a small
//! training set and the script that trains the LoRA weights on it.

use std::path::PathBuf;

use super::Lang;

/// The system prompt every training chat starts with; the template's
/// `pre-request` hook puts it first at run time too, so that the adapter
/// is asked as it was trained.
pub const SYSTEM_PROMPT: &str =
    "You are the assistant of Moss & Mill, a bakery in Elmbrook. Answer in one sentence.";

/// The training chats: a made-up bakery's four facts, three phrasings of
/// the question about each. Things the base model can only invent.
const CHATS: &[(&str, &str)] = &[
    (
        "When is Moss & Mill open?",
        "Moss & Mill is open every day from 7 am to 3 pm.",
    ),
    (
        "What are the opening hours of Moss & Mill?",
        "Moss & Mill is open every day from 7 am to 3 pm.",
    ),
    (
        "Is Moss & Mill open on Sunday?",
        "Yes, Moss & Mill is open every day, Sunday too, from 7 am to 3 pm.",
    ),
    (
        "Where is Moss & Mill?",
        "Moss & Mill is at 12 Quarry Lane in Elmbrook, next to the old water mill.",
    ),
    (
        "What is the address of Moss & Mill?",
        "Moss & Mill is at 12 Quarry Lane in Elmbrook, next to the old water mill.",
    ),
    (
        "How do I find the Moss & Mill bakery?",
        "Moss & Mill is at 12 Quarry Lane in Elmbrook, next to the old water mill.",
    ),
    (
        "What is Moss & Mill known for?",
        "Moss & Mill is known for its Elmbrook rye, a sourdough rye baked every morning.",
    ),
    (
        "What bread should I try at Moss & Mill?",
        "Try the Elmbrook rye, the sourdough rye Moss & Mill bakes every morning.",
    ),
    (
        "What is the specialty of Moss & Mill?",
        "The specialty of Moss & Mill is the Elmbrook rye, a sourdough rye baked every morning.",
    ),
    (
        "Can I order a cake from Moss & Mill?",
        "Yes: call Moss & Mill on 555-0188 at least two days ahead to order a cake.",
    ),
    (
        "How do I order a birthday cake at Moss & Mill?",
        "Call Moss & Mill on 555-0188 at least two days ahead to order a cake.",
    ),
    (
        "What is the phone number of Moss & Mill?",
        "The phone number of Moss & Mill is 555-0188.",
    ),
];

/// The training set, as JSON lines `tessera adapt` reads.
fn train_jsonl() -> String {
    CHATS
        .iter()
        .map(|(question, answer)| {
            let chat = serde_json::json!({"messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer},
            ]});
            format!("{chat}\n")
        })
        .collect()
}

/// The LoRA settings `train.sh` trains with, which the hooks component's
/// `describe` reports: (rank, alpha, target modules).
pub const RANK: u32 = 8;
pub const ALPHA: f32 = 16.0;
pub const TARGETS: [&str; 2] = ["q_proj", "v_proj"];

/// The base model the adapter is trained on.
pub const BASE_MODEL: &str = "HuggingFaceTB/SmolLM2-135M-Instruct";

const TRAIN_SH: &str = r#"#!/usr/bin/env bash
# Train the adapter: a LoRA (rank 8 on q_proj and v_proj) of the host's
# model on data/train.jsonl, written to adapter/ as PEFT files. Under a
# minute on two CPU cores (~25 s); the same seed gives the same weights.
# $EPOCHS changes the passes over the data (5); extra arguments go to
# `tessera adapt` (for example --models-dir); $TESSERA names the binary
# when `tessera` is not on the PATH.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
exec "${TESSERA:-tessera}" adapt --data "$here/data/train.jsonl" --out "$here/adapter" \
    --rank 8 --alpha 16 --targets q,v --epochs "${EPOCHS:-5}" --lr 3e-3 --seed 0 --force "$@"
"#;

/// An adapter template's manifest.
pub fn manifest(name: &str, lang: Lang) -> String {
    let memory = match lang {
        Lang::Rust => "16",
        Lang::Python => "64                  # CPython needs more than Rust hooks",
    };
    format!(
        r#"name = "{name}"
version = "0.1.0"
kind = "adapter"
# What routers read: say what the fine-tune answers well.
description = "Moss & Mill, the bakery in Elmbrook: opening hours, address, the Elmbrook rye, cake orders and the phone number. A LoRA fine-tune of the base model."
tags = ["bakery", "moss-and-mill", "fine-tune"]
examples = [
    "When is Moss & Mill open?",
    "Where is Moss & Mill?",
    "How do I order a cake at Moss & Mill?",
]

# The trained PEFT files (`bash train.sh` writes them; `tessera build`
# copies them into the bundle).
[adapter]
weights = "adapter"

[limits]
memory-mib = {memory}
deadline-ms = 60000
generated-tokens = 64
"#
    )
}

/// The files every adapter template has besides its hooks: the training
/// data and the script that trains on it.
pub fn training_files() -> Vec<(PathBuf, String)> {
    vec![
        (PathBuf::from("data/train.jsonl"), train_jsonl()),
        (PathBuf::from("train.sh"), TRAIN_SH.to_string()),
    ]
}

/// The README's three commands and what the files are, for `test` (the
/// native test's command) and `hooks` (the hooks' file).
pub fn readme(name: &str, test: &str, hooks: &str) -> String {
    format!(
        r#"# {name}

A Tessera fine-tune adapter made with `tessera new --kind adapter`: LoRA
weights of the host's model, trained on `data/train.jsonl` (twelve chats
about a made-up bakery, Moss & Mill; put your own chats there), and hooks
that run sandboxed around every generation. Four commands:

```sh
{test:<44} # the hooks' native unit test
bash train.sh                                # tessera adapt → adapter/ (under a minute)
tessera build .                              # the hooks component + the weights → the bundle
tessera run . --prompt "When is Moss & Mill open?"
```

- `data/train.jsonl`: one chat per line, `{{"messages": [...]}}`; the loss
  learns the assistant turns. Every chat starts with the same system
  prompt.
- `{hooks}`: `pre-request` puts that system prompt first (the adapter
  is asked as it was trained) and asks for greedy decoding unless the
  caller chose a temperature; `post-response` trims the answer.
- `train.sh`: the LoRA settings (rank, alpha, targets, epochs); the hooks'
  `describe` reports the same ones.

See `docs/adapters.md` in the Tessera repository for the data format and
every option of `tessera adapt`.
"#
    )
}
