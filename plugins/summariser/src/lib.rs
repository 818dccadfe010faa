//! Summariser: a summary that keeps a length budget and never runs longer
//! than the passage.
//!
//! The budget is in words: at most [`RATIO`] of the passage and at most
//! [`WORDS_PER_SENTENCE`] per sentence asked for (metadata `sentences`,
//! default [`DEFAULT_SENTENCES`]). The model writes the summary; it is
//! checked before it is returned: preambles ("Here's a summary:") are cut,
//! and a summary over budget, mostly made of words not in the passage, or
//! empty is replaced by the passage's leading sentences cut to the budget
//! (an extractive summary, reported in the metadata `method`).

use tessera_sdk::prelude::*;

/// Sentences when the caller does not say.
const DEFAULT_SENTENCES: u32 = 2;
/// Most sentences a caller may ask for.
const MAX_SENTENCES: u32 = 10;
/// A summary has at most this share of the passage's words.
pub const RATIO: f32 = 0.6;
/// Words allowed per sentence asked for.
pub const WORDS_PER_SENTENCE: usize = 20;
/// Shortest budget (a passage of a few words is summarised by itself).
const MIN_WORDS: usize = 6;
/// Share of a summary's content words that must come from the passage.
const GROUNDED: f32 = 0.6;

struct Summariser;

impl Expert for Summariser {
    fn handle(req: Request) -> Result<Response, Error> {
        let question = req.require_user_message()?;
        let sentences = match req.metadata("sentences") {
            None => DEFAULT_SENTENCES,
            Some(n) => n
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=MAX_SENTENCES).contains(n))
                .ok_or_else(|| {
                    Error::invalid_input(format!(
                        "metadata `sentences` must be a number from 1 to {MAX_SENTENCES}, not \"{n}\""
                    ))
                })?,
        };
        let (instruction, passage) = split(question);
        let asked = asked_length(instruction);
        let sentences = match (req.metadata("sentences"), asked.sentences) {
            (None, Some(n)) => n.min(MAX_SENTENCES),
            _ => sentences,
        };
        if passage.split_whitespace().count() < 3 {
            return Err(Error::invalid_input(
                "nothing to summarise: put the text after the request, e.g. \"Summarise this: ...\"",
            ));
        }
        let budget = budget(passage, sentences).min(asked.words.unwrap_or(usize::MAX).max(1));
        let messages = [
            Message::system(format!(
                "You summarise text in at most {budget} words. Keep only the main point. Use words from the text. Do not add anything, do not introduce your answer."
            )),
            Message::user(format!("Summarise in at most {budget} words:\n\n{passage}")),
        ];
        let sampling = req
            .sampling
            .clone()
            .max_tokens((budget as u32 * 2 + 8).min(256));
        let (written, usage) = match model::chat(&messages, &sampling) {
            Ok(c) => (c.text, c.usage),
            Err(e) => {
                log::warn(&format!(
                    "no summary from the model ({}); extracting",
                    e.message()
                ));
                (String::new(), Usage::default())
            }
        };
        let (summary, method) = match accept(&written, passage, budget) {
            Ok(summary) => (summary, "model"),
            Err(why) => {
                log::with_fields(
                    log::Level::Info,
                    "the model's summary was not kept; extracting",
                    &[("why", why), ("summary", &written)],
                );
                (extract(passage, budget), "extractive")
            }
        };
        Ok(Response::new(summary)
            .with_usage(usage)
            .with_metadata("sentences", sentences.to_string())
            .with_metadata("budget_words", budget.to_string())
            .with_metadata("method", method))
    }
}

/// The passage: what follows the instruction ("Summarise this: ..."), or
/// the whole message when there is no instruction line.
pub fn passage(question: &str) -> &str {
    split(question).1
}

/// The instruction ("Summarise in one sentence") and the passage after it;
/// no instruction when the message has no instruction line.
pub fn split(question: &str) -> (&str, &str) {
    let head_end = question.find([':', '\n', '?']).filter(|&i| {
        let head = question[..i].to_lowercase();
        [
            "summar",
            "tl;dr",
            "tldr",
            "condense",
            "shorten",
            "sum up",
            "key points",
            "abstract",
            "gist",
            "main point",
            "what does this say",
            "in short",
            "recap",
        ]
        .iter()
        .any(|w| head.contains(w))
    });
    match head_end {
        Some(i) => (&question[..i], question[i + 1..].trim()),
        None => ("", question.trim()),
    }
}

/// The length an instruction asks for ("in under 15 words", "in one
/// sentence", "a one-line summary", "in 3 sentences").
#[derive(Debug, Default, PartialEq)]
pub struct Asked {
    /// Most words.
    pub words: Option<usize>,
    /// Sentences.
    pub sentences: Option<u32>,
}

/// Read the length asked for from the instruction before the passage.
pub fn asked_length(instruction: &str) -> Asked {
    let lower = instruction.to_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !(c.is_alphanumeric() || c == '-'))
        .filter(|w| !w.is_empty())
        .collect();
    let number = |w: &str| -> Option<usize> {
        w.parse().ok().or_else(|| {
            [
                "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
            ]
            .iter()
            .position(|n| *n == w)
            .map(|i| i + 1)
        })
    };
    let mut asked = Asked::default();
    for (i, w) in words.iter().enumerate() {
        let Some(n) = number(w) else {
            if matches!(*w, "one-line" | "one-sentence") {
                asked.sentences = Some(1);
            }
            continue;
        };
        let before = i.checked_sub(1).map(|j| words[j]);
        let strict = matches!(before, Some("under" | "fewer" | "less" | "below"))
            || (i >= 2 && matches!(words[i - 2], "fewer" | "less") && before == Some("than"));
        match words.get(i + 1).copied() {
            Some("words" | "word") => {
                asked.words = Some(if strict { n.saturating_sub(1) } else { n }.max(1));
            }
            Some("sentences" | "sentence" | "lines" | "line") => {
                asked.sentences = Some(n.clamp(1, 10) as u32);
            }
            _ => {}
        }
    }
    if asked.sentences.is_none()
        && (lower.contains("a sentence")
            || lower.contains("a single sentence")
            || lower.contains("a line"))
    {
        asked.sentences = Some(1);
    }
    asked
}

/// Words a summary of `passage` may have.
pub fn budget(passage: &str, sentences: u32) -> usize {
    let words = passage.split_whitespace().count();
    let by_ratio = (words as f32 * RATIO).floor() as usize;
    by_ratio
        .min(sentences as usize * WORDS_PER_SENTENCE)
        .max(MIN_WORDS.min(words.saturating_sub(1)).max(1))
}

/// The model's summary, cleaned, if it keeps the rules; else why not.
pub fn accept(written: &str, passage: &str, budget: usize) -> Result<String, &'static str> {
    let mut text = written.trim();
    // Drop an introduction line ("Here's a summary:", "Summary:").
    if let Some((head, rest)) = text.split_once(':') {
        let head = head.to_lowercase();
        if head.len() < 60
            && ["summary", "here", "sure", "rewritten", "tl;dr", "in short"]
                .iter()
                .any(|w| head.contains(w))
        {
            text = rest.trim();
        }
    }
    let text = text.trim_matches(|c: char| c == '"' || c.is_whitespace());
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.is_empty() {
        return Err("empty");
    }
    if words.len() > budget {
        return Err("over budget");
    }
    let lower = text.to_lowercase();
    if [
        "here's",
        "here is",
        "rewritten",
        "i can",
        "i'm sorry",
        "as an ai",
    ]
    .iter()
    .any(|w| lower.starts_with(w))
    {
        return Err("not a summary");
    }
    let source: Vec<String> = content_words(passage);
    let own = content_words(text);
    if own.is_empty() {
        return Err("no content words");
    }
    let grounded = own.iter().filter(|w| source.contains(w)).count() as f32 / own.len() as f32;
    if grounded < GROUNDED {
        return Err("mostly words the passage does not have");
    }
    Ok(text.to_string())
}

/// Lower-cased words of four letters or more, with common endings
/// dropped, for a rough overlap check.
fn content_words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() >= 4)
        .map(|w| {
            let w = w.to_lowercase();
            let stem = w
                .strip_suffix("ing")
                .or_else(|| w.strip_suffix("ed"))
                .or_else(|| w.strip_suffix('s'))
                .unwrap_or(&w);
            stem.to_string()
        })
        .collect()
}

/// The passage's leading sentences that fit the budget; the first one
/// cut at the budget when even it does not.
pub fn extract(passage: &str, budget: usize) -> String {
    let mut out = String::new();
    let mut used = 0;
    for sentence in sentences(passage) {
        let n = sentence.split_whitespace().count();
        if used + n > budget {
            break;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(sentence);
        used += n;
    }
    if out.is_empty() {
        let words: Vec<&str> = passage.split_whitespace().take(budget).collect();
        out = format!(
            "{}…",
            words.join(" ").trim_end_matches([',', ';', ':', '.'])
        );
    }
    out
}

fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if matches!(c, '.' | '!' | '?')
            && text[i + 1..].chars().next().is_none_or(char::is_whitespace)
        {
            out.push(text[start..=i].trim());
            start = i + 1;
        }
    }
    if !text[start..].trim().is_empty() {
        out.push(text[start..].trim());
    }
    out
}

export_expert!(Summariser);

#[cfg(test)]
mod tests {
    use super::*;

    const PASSAGE: &str = "The library will close for two weeks in August while the roof is repaired. Books can be returned at the town hall during that time. The reading room reopens on September 1.";

    #[test]
    fn the_budget_is_below_the_passage() {
        let words = PASSAGE.split_whitespace().count();
        assert_eq!(words, 32);
        assert_eq!(budget(PASSAGE, 2), 19);
        assert_eq!(budget(PASSAGE, 1), 19);
        assert_eq!(budget("Short text here now.", 2), 3);
    }

    #[test]
    fn summaries_over_budget_or_ungrounded_are_refused() {
        let b = budget(PASSAGE, 2);
        assert_eq!(
            accept(
                "Summary: The library closes in August for roof repairs.",
                PASSAGE,
                b
            )
            .unwrap(),
            "The library closes in August for roof repairs."
        );
        assert!(accept(PASSAGE, PASSAGE, b).is_err());
        assert!(
            accept(
                "Here's a rewritten version of the text with improvements.",
                PASSAGE,
                b
            )
            .is_err()
        );
        assert!(accept("Penguins enjoy swimming in cold oceans daily.", PASSAGE, b).is_err());
    }

    #[test]
    fn extraction_keeps_the_budget() {
        let b = budget(PASSAGE, 2);
        let summary = extract(PASSAGE, b);
        assert_eq!(
            summary,
            "The library will close for two weeks in August while the roof is repaired."
        );
        assert!(summary.split_whitespace().count() <= b);
        let cut = extract(PASSAGE, 5);
        assert_eq!(cut, "The library will close for…");
    }

    #[test]
    fn the_length_asked_for_is_read_from_the_instruction() {
        let asked = asked_length("Summarize in under 15 words:");
        assert_eq!(asked.words, Some(14));
        assert_eq!(
            asked_length("Summarise in 20 words or fewer:").words,
            Some(20)
        );
        assert_eq!(
            asked_length("Sum it up in fewer than ten words:").words,
            Some(9)
        );
        assert_eq!(
            asked_length("Write a one-line summary of this email:").sentences,
            Some(1)
        );
        assert_eq!(
            asked_length("Give me the gist in one sentence:").sentences,
            Some(1)
        );
        assert_eq!(asked_length("Summarise in 3 sentences:").sentences, Some(3));
        assert_eq!(
            asked_length("Summarise in a sentence or two:").sentences,
            Some(1)
        );
        assert_eq!(asked_length("TL;DR:"), Asked::default());
    }

    #[test]
    fn the_passage_follows_the_instruction() {
        assert_eq!(passage("Summarize briefly: A B C."), "A B C.");
        assert_eq!(passage("Please condense this:\nA B C."), "A B C.");
        assert_eq!(
            passage("In a sentence or two, what does this say? A B C."),
            "A B C."
        );
        assert_eq!(
            passage("The council met: it voted."),
            "The council met: it voted."
        );
    }
}
