//! Reading a question: what to do, and to which text.

/// What a question asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Task {
    Words,
    Letters,
    Characters,
    Vowels,
    Consonants,
    Sentences,
    Lines,
    /// How often this letter, word or string occurs.
    Occurrences(String),
    Reverse,
    Upper,
    Lower,
}

/// A quoted part of the question: byte range of the whole quote (marks
/// included) and its content.
struct Quote {
    start: usize,
    end: usize,
    content: String,
}

/// The task and its text, or why the question is not one this expert
/// answers.
pub fn question(question: &str) -> Result<(Task, String), String> {
    let quotes = quotes(question);
    // What the question says, without the quoted text (whose words must
    // not be read as instructions).
    let mut outside = String::new();
    let mut last = 0;
    for q in &quotes {
        outside.push_str(&question[last..q.start]);
        outside.push_str(" \u{1} ");
        last = q.end;
    }
    outside.push_str(&question[last..]);
    let lower = outside.to_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !(c.is_alphanumeric() || c == '\'' || c == '\u{1}'))
        .filter(|w| !w.is_empty())
        .collect();
    let has = |w: &str| words.iter().any(|x| x.starts_with(w));
    let counting = has("count")
        || lower.contains("how many")
        || lower.contains("number of")
        || lower.contains("how long")
        || has("length")
        || lower.contains("how often");

    let task = if has("backward") || has("reverse") || lower.contains("back to front") {
        Task::Reverse
    } else if has("uppercase") || lower.contains("upper case") || has("capitali") {
        Task::Upper
    } else if has("lowercase") || lower.contains("lower case") {
        Task::Lower
    } else if !counting {
        return Err("not a counting or rewriting question: ask like \"Count the words in: ...\", \"How many letters are in \\\"banana\\\"?\" or \"Write \\\"stressed\\\" backwards\"".into());
    } else if let Some(target) = occurrence_target(&words, &quotes) {
        let text = quotes
            .iter()
            .map(|q| q.content.as_str())
            .find(|c| *c != target)
            .map(str::to_string)
            .or_else(|| unquoted_text(question, &lower))
            .ok_or("which text? Put it in quotes")?;
        return Ok((Task::Occurrences(target), text));
    } else if has("vowel") {
        Task::Vowels
    } else if has("consonant") {
        Task::Consonants
    } else if has("letter") {
        Task::Letters
    } else if has("character") || has("length") || lower.contains("how long") {
        Task::Characters
    } else if has("word") {
        Task::Words
    } else if has("sentence") {
        Task::Sentences
    } else if has("line") {
        Task::Lines
    } else {
        return Err(
            "count what? Ask for words, letters, characters, vowels, sentences, or a letter's occurrences"
                .into(),
        );
    };
    let text = quotes
        .first()
        .map(|q| q.content.clone())
        .or_else(|| unquoted_text(question, &lower))
        .filter(|t| !t.trim().is_empty())
        .ok_or("which text? Put it in quotes, or after a colon")?;
    Ok((task, text))
}

/// The letter, word or string whose occurrences are asked for, if any:
/// "the letter s", "the letter \"s\"", "how many r's", "how often does the
/// word \"the\" occur", "how many times does \"ab\" appear in \"...\"".
fn occurrence_target(words: &[&str], quotes: &[Quote]) -> Option<String> {
    // Index of the n-th quote marker among `words`.
    let quote_at = |i: usize| {
        let n = words[..i].iter().filter(|w| **w == "\u{1}").count();
        quotes.get(n).map(|q| q.content.clone())
    };
    for (i, pair) in words.windows(2).enumerate() {
        let [first, second] = pair else { continue };
        let named = match *first {
            "letter" | "character" | "char" | "symbol" => true,
            "word" => words.iter().any(|w| {
                matches!(
                    *w,
                    "times" | "often" | "occur" | "occurs" | "appear" | "appears"
                )
            }),
            _ => false,
        };
        if named {
            if *second == "\u{1}" {
                return quote_at(i + 1);
            }
            if first.starts_with("letter") && second.chars().count() == 1 {
                return Some(second.to_string());
            }
        }
        // "how many r's", "how many rs"
        if *first == "many" {
            let stem = second
                .strip_suffix("'s")
                .or_else(|| second.strip_suffix('s'));
            if let Some(letter) = stem.filter(|s| s.chars().count() == 1) {
                return Some(letter.to_string());
            }
        }
    }
    let asks_times = words.iter().any(|w| {
        matches!(
            *w,
            "times" | "often" | "occur" | "occurs" | "appear" | "appears"
        )
    });
    (asks_times && quotes.len() == 2).then(|| quotes[0].content.clone())
}

/// Text given without quotes: after "the word"/"the sentence"/"the text",
/// after a colon, between "write"/"reverse"/"spell" and "backwards", or
/// the last word after " in ".
fn unquoted_text(question: &str, lower: &str) -> Option<String> {
    let trim = |s: &str| {
        s.trim()
            .trim_end_matches(['?', '.', '!'])
            .trim()
            .to_string()
    };
    for marker in ["the word ", "the name "] {
        if let Some(i) = lower.find(marker) {
            let rest = &question[i + marker.len()..];
            let word: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '\'' || *c == '-')
                .collect();
            if !word.is_empty() {
                return Some(word);
            }
        }
    }
    if let Some(i) = question.find(':') {
        let rest = trim(&question[i + 1..]);
        if !rest.is_empty() {
            return Some(rest);
        }
    }
    for marker in ["the sentence ", "the text ", "the phrase "] {
        if let Some(i) = lower.find(marker) {
            return Some(trim(&question[i + marker.len()..]));
        }
    }
    if let Some(end) = lower.find(" backwards").or_else(|| lower.find(" backward")) {
        let head = &question[..end];
        let start = ["write ", "spell ", "reverse ", "say "]
            .iter()
            .filter_map(|m| lower[..end].rfind(m).map(|i| i + m.len()))
            .max()?;
        return Some(trim(&head[start..]));
    }
    for marker in ["reverse ", "uppercase ", "lowercase "] {
        if let Some(i) = lower.find(marker) {
            return Some(trim(&question[i + marker.len()..]));
        }
    }
    let i = lower.rfind(" in ")?;
    let tail = trim(&question[i + 4..]);
    (!tail.is_empty() && !tail.contains(' ')).then_some(tail)
}

/// Quoted parts: "...", “...”, and '...' when the quote marks stand at word
/// edges (so that "can't" and "r's" are not quotes).
fn quotes(text: &str) -> Vec<Quote> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let (start, c) = chars[i];
        let close = match c {
            '"' => '"',
            '\u{201c}' => '\u{201d}',
            '\'' if i == 0 || !chars[i - 1].1.is_alphanumeric() => '\'',
            _ => {
                i += 1;
                continue;
            }
        };
        let end = chars[i + 1..].iter().position(|&(j, d)| {
            d == close
                && (close != '\''
                    || text[j + d.len_utf8()..]
                        .chars()
                        .next()
                        .is_none_or(|n| !n.is_alphanumeric()))
        });
        match end {
            Some(k) => {
                let (close_at, close_char) = chars[i + 1 + k];
                found.push(Quote {
                    start,
                    end: close_at + close_char.len_utf8(),
                    content: text[start + c.len_utf8()..close_at].to_string(),
                });
                i += k + 2;
            }
            None => i += 1,
        }
    }
    found
}
