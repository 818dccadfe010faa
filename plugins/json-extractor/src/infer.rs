//! Extraction without a schema: the fields named in the question, in any
//! common phrasing, and their values taken as spans of the text.
//!
//! A 135M model asked to "reply with the value" answers with sentences or
//! the field's own name; asked to *rate* candidate spans, it picks the right
//! one far more often. So the values are chosen, not written: the text's
//! numbers, names (capitalised runs) and content words are candidates, and
//! the model's log-likelihood of each after a few worked examples decides.
//! A value is therefore always a span of the text; a number is typed as a
//! JSON number; a boolean field is true unless the text negates it.

use crate::schema::{Field, FieldType, MAX_FIELDS};

/// Markers after which the field list starts, most specific first.
const LIST_MARKERS: [&str; 16] = [
    "with the fields ",
    "with fields ",
    "with the keys ",
    "with keys ",
    "with the properties ",
    "the fields ",
    "fields ",
    "keys ",
    "properties ",
    "extract the ",
    "extract ",
    "pull out the ",
    "containing ",
    "including ",
    // "a JSON object with name, age and …": the list right after "with".
    "object with ",
    "json with ",
];

/// Where the field list ends.
const LIST_ENDS: [&str; 11] = [
    " from",
    " for",
    " as json",
    " as a json",
    " into",
    " out of",
    " in json",
    " in this",
    " of this",
    " of the following",
    " in the",
];

/// Most candidate spans rated per field.
pub const MAX_CANDIDATES: usize = 12;

/// Words that are never a value on their own.
const STOPWORDS: &[&str] = &[
    "a", "an", "the", "is", "are", "was", "were", "be", "been", "has", "have", "had", "do", "does",
    "did", "in", "on", "at", "to", "of", "for", "by", "with", "and", "or", "but", "it", "its",
    "this", "that", "these", "those", "he", "she", "they", "we", "you", "i", "me", "my", "his",
    "her", "their", "our", "your", "from", "as", "not", "no", "yes", "so", "very", "who", "which",
    "what", "there", "here", "will", "would", "can", "could", "should", "i'd", "i'm", "like",
    "also", "just", "about", "into", "than", "then", "only", "all", "some", "any",
];

/// The fields named in `question` and the text to extract from, or
/// `None` when the question names no fields.
pub fn fields_and_text(question: &str) -> Option<(Vec<Field>, String)> {
    let question = &unparenthesise(question);
    let lower = question.to_lowercase();
    // The instruction is what precedes the first colon (the text follows
    // it); without a colon, the whole question.
    let colon = lower.find(':');
    let instruction = &lower[..colon.unwrap_or(lower.len())];
    let start = LIST_MARKERS
        .iter()
        .find_map(|m| instruction.find(m).map(|i| i + m.len()))?;
    let rest = &instruction[start..];
    let end = LIST_ENDS
        .iter()
        .filter_map(|m| rest.find(m))
        .min()
        .unwrap_or(rest.len());
    let fields: Vec<Field> = rest[..end]
        .split([',', '&', ';'])
        .flat_map(|p| p.split(" and "))
        .filter_map(field)
        .take(MAX_FIELDS)
        .collect();
    if fields.is_empty() {
        return None;
    }
    let text = match colon {
        Some(i) => question[i + 1..].trim().to_string(),
        None => LIST_ENDS
            .iter()
            .filter_map(|m| {
                lower[start..]
                    .find(&format!("{m} "))
                    .map(|i| start + i + m.len())
            })
            .min()
            .map(|i| question[i..].trim().to_string())
            .unwrap_or_else(|| question.to_string()),
    };
    (!text.is_empty()).then_some((fields, text))
}

/// "Make JSON (fields: team, wins) out of this: …" as "Make JSON with
/// fields team, wins out of this: …", so that the first colon starts the
/// text again.
fn unparenthesise(question: &str) -> String {
    let lower = question.to_lowercase();
    for marker in ["(fields:", "(keys:", "(fields ", "(keys "] {
        if let Some(i) = lower.find(marker)
            && let Some(j) = lower[i..].find(')')
        {
            let list = question[i + marker.len()..i + j].trim();
            return format!(
                "{} with fields {list}{}",
                question[..i].trim_end(),
                &question[i + j + 1..]
            );
        }
    }
    question.to_string()
}

/// Small whole numbers written as words ("two legs").
fn number_word(t: &str) -> Option<usize> {
    const WORDS: [&str; 21] = [
        "zero",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
        "thirteen",
        "fourteen",
        "fifteen",
        "sixteen",
        "seventeen",
        "eighteen",
        "nineteen",
        "twenty",
    ];
    WORDS.iter().position(|w| t.eq_ignore_ascii_case(w))
}

/// One item of a field list: "age", "the city", "member (a boolean)",
/// "price (number)".
fn field(item: &str) -> Option<Field> {
    let (name, hint) = match item.split_once('(') {
        Some((name, hint)) => (name, Some(hint.trim_end_matches(')').trim())),
        None => (item, None),
    };
    let name = name
        .trim()
        .trim_start_matches("the ")
        .trim_start_matches("a ")
        .trim_start_matches("its ")
        .trim_start_matches("fields ")
        .trim_start_matches("keys ")
        .trim()
        .trim_matches(|c: char| !c.is_alphanumeric());
    let words: Vec<&str> = name.split_whitespace().collect();
    if words.is_empty() || words.len() > 3 || matches!(name, "json" | "data" | "object") {
        return None;
    }
    let kind = match hint.map(|h| h.trim_start_matches("a ").trim_start_matches("an ")) {
        Some(h) if h.starts_with("bool") || h.contains("yes/no") || h.contains("true/false") => {
            FieldType::Boolean
        }
        Some(h) if h.starts_with("int") || h.starts_with("whole") => FieldType::Integer,
        Some(h) if h.starts_with("number") || h.starts_with("numeric") => FieldType::Number,
        _ if words[0] == "is" || words[0] == "has" || words[0] == "can" => FieldType::Boolean,
        _ => FieldType::Scalar,
    };
    Some(Field {
        name: words.join("_"),
        kind,
        description: None,
        required: true,
    })
}

/// A candidate value.
#[derive(Debug, Clone, PartialEq)]
pub enum Span {
    Text(String),
    Number(String),
}

impl Span {
    pub fn text(&self) -> &str {
        match self {
            Span::Text(t) | Span::Number(t) => t,
        }
    }
}

/// Candidate values for `field` in `text`: numbers, capitalised runs
/// ("Dr. Alvarez", "New York"), content words and pairs of them ("large
/// coffee"), in order of appearance, without the field's own name.
pub fn candidates(text: &str, field: &Field) -> Vec<Span> {
    let tokens: Vec<&str> = text
        .split_whitespace()
        .map(|t| {
            t.trim_matches(|c: char| !(c.is_alphanumeric() || c == '.' || c == '-' || c == '\''))
        })
        .map(|t| {
            // "Dr." and "St." keep their point; a sentence's last word loses it.
            let bare = t.trim_end_matches('.');
            let abbreviation =
                bare.len() <= 3 && bare.starts_with(char::is_uppercase) && bare.len() < t.len();
            if abbreviation { t } else { bare }
        })
        .filter(|t| !t.is_empty())
        .collect();
    let numeric_only = matches!(field.kind, FieldType::Number | FieldType::Integer);
    let own_name = |t: &str| {
        let t = t.to_lowercase();
        let name = field.name.replace('_', " ");
        t == name || t.trim_end_matches('s') == name.trim_end_matches('s')
    };
    let mut out: Vec<Span> = Vec::new();
    let push = |span: Span, out: &mut Vec<Span>| {
        if !out.contains(&span) && !own_name(span.text()) {
            out.push(span);
        }
    };
    let is_number = |t: &str| {
        t.chars().any(|c| c.is_ascii_digit()) && t.replace(',', "").parse::<f64>().is_ok()
    };
    let is_content = |t: &str| {
        let lower = t.to_lowercase();
        !STOPWORDS.contains(&lower.as_str()) && t.chars().any(char::is_alphabetic)
    };
    let capitalised = |t: &str| t.chars().next().is_some_and(char::is_uppercase) && is_content(t);
    let mut i = 0;
    while i < tokens.len() {
        let t = tokens[i];
        if is_number(t) {
            push(Span::Number(t.replace(',', "")), &mut out);
        } else if let Some(n) = number_word(t) {
            push(Span::Number(n.to_string()), &mut out);
        } else if !numeric_only && capitalised(t) {
            let mut j = i + 1;
            while j < tokens.len() && capitalised(tokens[j]) {
                j += 1;
            }
            push(Span::Text(tokens[i..j].join(" ")), &mut out);
            if j > i + 1 {
                for t in &tokens[i..j] {
                    push(Span::Text(t.to_string()), &mut out);
                }
            }
            i = j;
            continue;
        } else if !numeric_only && is_content(t) {
            push(Span::Text(t.to_string()), &mut out);
            if let Some(next) = tokens.get(i + 1).filter(|n| is_content(n) && !is_number(n)) {
                push(Span::Text(format!("{t} {next}")), &mut out);
            }
        }
        i += 1;
    }
    out.truncate(MAX_CANDIDATES);
    out
}

/// A boolean field's value: false when the text negates it ("Lena is not
/// a member", "no parking", "isn't open"), true otherwise.
pub fn boolean(text: &str) -> bool {
    let lower = text.to_lowercase();
    !lower
        .split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .any(|w| {
            matches!(
                w,
                "not" | "no" | "never" | "without" | "none" | "false" | "cannot" | "neither"
            ) || w.ends_with("n't")
        })
}

/// The prompt a span is rated after: worked examples, then the text.
pub fn prompt(text: &str, field: &str) -> String {
    let mut prompt = String::from(
        "Copy each value from the text, word for word.\n\n\
         Text: Maria is 31 and works in Lisbon as a nurse.\nname: Maria\nage: 31\ncity: Lisbon\njob: nurse\n\n\
         Text: I want two small red bikes for my sons.\nitem: bikes\ncount: two\nsize: small\ncolour: red\n\n\
         Text: The Odyssey was written by Homer.\nbook: The Odyssey\nauthor: Homer\n\n",
    );
    prompt.push_str(&format!("Text: {text}\n"));
    prompt.push_str(&format!("{}:", field.replace('_', " ")));
    prompt
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(question: &str) -> Vec<String> {
        fields_and_text(question)
            .map(|(f, _)| f.into_iter().map(|f| f.name).collect())
            .unwrap_or_default()
    }

    #[test]
    fn fields_are_read_from_any_phrasing() {
        assert_eq!(
            names(
                "Extract the name, age and city from this text as JSON: John Smith, 42, lives in Boston."
            ),
            ["name", "age", "city"]
        );
        assert_eq!(
            names("Pull out JSON with fields name and city: Jonas lives in Hamburg."),
            ["name", "city"]
        );
        assert_eq!(
            names("Give a JSON object with keys drink and size: I'd like a large coffee."),
            ["drink", "size"]
        );
        assert_eq!(
            names("JSON with the fields game and players for: Chess is played by 2 players."),
            ["game", "players"]
        );
        assert_eq!(
            names("Return JSON with fields book and year from: Emma was published in 1815."),
            ["book", "year"]
        );
        assert_eq!(
            names(
                "Fill a JSON object with title, year and sequel (a boolean): Dune came out in 1965."
            ),
            ["title", "year", "sequel"]
        );
        assert!(names("Tell me a joke").is_empty());
        let (fields, text) = fields_and_text(
            "Extract fields name and member (a boolean) as JSON: Lena is not a member.",
        )
        .unwrap();
        assert_eq!(fields[1].name, "member");
        assert_eq!(fields[1].kind, FieldType::Boolean);
        assert_eq!(text, "Lena is not a member.");
        let (_, text) =
            fields_and_text("Get JSON with keys city and country from Paris is in France").unwrap();
        assert_eq!(text, "Paris is in France");
        // A parenthesised list before the text's colon.
        let (fields, text) = fields_and_text(
            "Make JSON (fields: team, wins) out of this: The Falcons won 12 games.",
        )
        .unwrap();
        let names: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["team", "wins"]);
        assert_eq!(text, "The Falcons won 12 games.");
    }

    #[test]
    fn candidates_are_spans_of_the_text() {
        let (fields, text) = fields_and_text("JSON with fields person and room: The meeting with Dr. Alvarez is on Friday in room 12.").unwrap();
        let spans: Vec<String> = candidates(&text, &fields[0])
            .iter()
            .map(|s| s.text().to_string())
            .collect();
        assert!(spans.contains(&"Dr. Alvarez".to_string()), "{spans:?}");
        assert!(spans.contains(&"12".to_string()), "{spans:?}");
        let numbers = candidates(
            &text,
            &Field {
                kind: FieldType::Integer,
                ..fields[1].clone()
            },
        );
        assert_eq!(numbers, [Span::Number("12".into())]);
        // The field's own name is not a value for it.
        let spans = candidates(
            "Chess is played by 2 players.",
            &Field {
                name: "players".into(),
                kind: FieldType::String,
                description: None,
                required: true,
            },
        );
        assert!(!spans.iter().any(|s| s.text() == "players"), "{spans:?}");
        // Small numbers in words are numbers.
        let spans = candidates(
            "A spider has eight legs.",
            &Field {
                name: "legs".into(),
                kind: FieldType::Integer,
                description: None,
                required: true,
            },
        );
        assert_eq!(spans, [Span::Number("8".into())]);
    }

    #[test]
    fn booleans_follow_negation() {
        assert!(!boolean("Lena is not a member."));
        assert!(!boolean("A penguin has two legs but cannot fly."));
        assert!(!boolean("The shop isn't open on Sundays."));
        assert!(boolean("Tom is a member of the club."));
    }
}
