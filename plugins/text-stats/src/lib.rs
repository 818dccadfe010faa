//! Text statistics: counts and transformations of a given text, exact and
//! with no model call. Small models cannot count letters (they see tokens,
//! not characters); this expert can.
//!
//! Understood: words, letters, characters, vowels, consonants, sentences and
//! lines in a text; how often a letter or a word occurs; a text backwards,
//! in upper or lower case. The text is the quoted part of the question
//! (`"..."`, `“...”`, `'...'`), else what follows "the word"/"the sentence",
//! else what follows a colon. A question it does not understand is
//! refused with `invalid-input`, so that `tessera/auto` falls back to the
//! next candidate.

mod parse;

use tessera_sdk::prelude::*;

use parse::Task;

/// Longest text accepted (bytes): counting is cheap, but the answer may
/// echo the text.
pub const MAX_TEXT: usize = 64 * 1024;

struct TextStats;

impl Expert for TextStats {
    fn handle(req: Request) -> Result<Response, Error> {
        let question = req.require_user_message()?;
        let (task, text) = parse::question(question).map_err(Error::invalid_input)?;
        if text.len() > MAX_TEXT {
            return Err(Error::invalid_input(format!(
                "the text is {} bytes; at most {MAX_TEXT}",
                text.len()
            )));
        }
        let answer = answer(&task, &text);
        log::with_fields(
            log::Level::Info,
            "answered",
            &[("task", &format!("{task:?}")), ("answer", &answer)],
        );
        Ok(Response::new(answer)
            .with_confidence(1.0)
            .with_metadata("task", format!("{task:?}")))
    }
}

/// The answer, as one sentence.
pub fn answer(task: &Task, text: &str) -> String {
    let quoted = format!("\"{text}\"");
    let n = |count: usize, one: &str, many: &str| {
        format!("{count} {}", if count == 1 { one } else { many })
    };
    match task {
        Task::Words => format!("{quoted} has {}.", n(words(text).count(), "word", "words")),
        Task::Letters => format!(
            "{quoted} has {}.",
            n(
                text.chars().filter(|c| c.is_alphabetic()).count(),
                "letter",
                "letters"
            )
        ),
        Task::Characters => format!(
            "{quoted} has {} (counting spaces and punctuation; {} without spaces).",
            n(text.chars().count(), "character", "characters"),
            text.chars().filter(|c| !c.is_whitespace()).count()
        ),
        Task::Vowels => format!(
            "{quoted} has {}.",
            n(
                text.chars().filter(|c| is_vowel(*c)).count(),
                "vowel",
                "vowels"
            )
        ),
        Task::Consonants => format!(
            "{quoted} has {}.",
            n(
                text.chars()
                    .filter(|c| c.is_alphabetic() && !is_vowel(*c))
                    .count(),
                "consonant",
                "consonants"
            )
        ),
        Task::Sentences => format!(
            "{quoted} has {}.",
            n(sentences(text), "sentence", "sentences")
        ),
        Task::Lines => format!("The text has {}.", n(text.lines().count(), "line", "lines")),
        Task::Occurrences(target) => {
            let count = occurrences(text, target);
            let what = if target.chars().count() == 1 {
                format!("the letter \"{target}\"")
            } else {
                format!("\"{target}\"")
            };
            format!("{what} appears {} in {quoted}.", n(count, "time", "times"))
        }
        Task::Reverse => {
            let reversed: String = text.chars().rev().collect();
            format!("{quoted} backwards is \"{reversed}\".")
        }
        Task::Upper => format!("\"{}\"", text.to_uppercase()),
        Task::Lower => format!("\"{}\"", text.to_lowercase()),
    }
}

/// Words: runs of characters with at least one letter or digit
/// ("don't" and "e-mail" are one word each; a lone "-" is none).
fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split_whitespace()
        .filter(|w| w.chars().any(char::is_alphanumeric))
}

fn is_vowel(c: char) -> bool {
    matches!(c.to_ascii_lowercase(), 'a' | 'e' | 'i' | 'o' | 'u')
}

fn sentences(text: &str) -> usize {
    text.split(['.', '!', '?'])
        .filter(|s| s.chars().any(char::is_alphanumeric))
        .count()
}

/// Case-insensitive count: of a letter among characters, of a word among
/// words, of a longer string as non-overlapping substrings otherwise.
fn occurrences(text: &str, target: &str) -> usize {
    let text = text.to_lowercase();
    let target = target.to_lowercase();
    if target.chars().count() == 1 {
        let c = target.chars().next().unwrap_or_default();
        return text.chars().filter(|t| *t == c).count();
    }
    if target.chars().all(char::is_alphanumeric) {
        return text
            .split(|c: char| !c.is_alphanumeric() && c != '\'')
            .filter(|w| *w == target)
            .count();
    }
    text.matches(target.as_str()).count()
}

export_expert!(TextStats);

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(q: &str) -> String {
        let (task, text) = parse::question(q).unwrap_or_else(|e| panic!("{q}: {e}"));
        answer(&task, &text)
    }

    // Expected counts are by hand (and by Python's len/str.count).
    #[test]
    fn counts() {
        assert!(ask("Count the words in: \"the cat sat on the mat\"").contains("6 words"));
        assert!(
            ask("How many words are in this sentence: I can't find my e-mail - again.")
                .contains("6 words")
        );
        assert!(ask("Count the letters of \"raspberry\".").contains("9 letters"));
        assert!(ask("How long is the word banana in letters?").contains("6 letters"));
        assert!(ask("How many characters are in \"hi there!\"?").contains("9 characters"));
        assert!(ask("How many vowels are in \"education\"?").contains("5 vowels"));
        assert!(
            ask("How many sentences are in: \"It rained. We stayed in! Why?\"")
                .contains("3 sentences")
        );
    }

    #[test]
    fn occurrences_of_a_letter_or_word() {
        assert!(
            ask("How many times does the letter r appear in \"strawberry\"?").contains("3 times")
        );
        assert!(ask("Count the letter \"s\" in \"Mississippi\".").contains("4 times"));
        assert!(ask("How many r's are in strawberry?").contains("3 times"));
        assert!(
            ask("How often does the word \"the\" occur in \"The dog saw the other dog\"?")
                .contains("2 times")
        );
    }

    #[test]
    fn transformations() {
        assert!(ask("Write \"stressed\" backwards.").contains("\"desserts\""));
        assert!(ask("Reverse the word stops").contains("\"spots\""));
        assert_eq!(
            ask("Convert \"Hello World\" to uppercase."),
            "\"HELLO WORLD\""
        );
    }

    #[test]
    fn what_it_does_not_understand_is_refused() {
        for q in [
            "What is the capital of France?",
            "Count the words.",
            "Tell me a story about \"dragons\".",
        ] {
            assert!(parse::question(q).is_err(), "{q}");
        }
    }
}
