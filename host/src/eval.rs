//! Labelled evaluation sets and their checkers: what `tessera eval` scores
//! answers with.
//!
//! A set is JSON lines, one prompt each:
//!
//! ```json
//! {"id": "arithmetic-01", "category": "arithmetic", "prompt": "What is 347 + 958?",
//!  "check": {"type": "number", "value": 1305, "tolerance": 0.01}}
//! ```
//!
//! Checkers:
//! - `number`: the first number of the answer that is not copied from the
//!   prompt (thousands separators, decimals, fractions `a/b` and a leading
//!   minus understood) is within `tolerance` of `value` (default: a
//!   millionth of it).
//! - `regex`: the answer matches `pattern` (Rust `regex` syntax).
//! - `json`: the first JSON object in the answer has every field of
//!   `fields`, typed as given: numbers as JSON numbers (equal within 1e-9),
//!   booleans as booleans, strings equal ignoring case and surrounding
//!   space.
//! - `summary`: the answer is at most `max_ratio` (default 1.0) times as
//!   long, in characters, as the passage (the prompt after its first
//!   colon) and mentions each of `mentions`, ignoring case.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Largest evaluation set read.
pub const MAX_SET_BYTES: u64 = 64 << 20;

/// How an answer is checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Check {
    /// A number, within a tolerance.
    Number {
        /// The right value.
        value: f64,
        /// Largest difference accepted.
        #[serde(default)]
        tolerance: Option<f64>,
    },
    /// A regular expression the answer matches.
    Regex {
        /// The pattern.
        pattern: String,
    },
    /// A JSON object with these fields and types.
    Json {
        /// The fields and their values.
        fields: serde_json::Map<String, serde_json::Value>,
    },
    /// A summary: shorter than its passage, mentioning these words.
    Summary {
        /// Longest answer accepted, as a fraction of the passage.
        #[serde(default = "one")]
        max_ratio: f64,
        /// Words the answer must mention.
        #[serde(default)]
        mentions: Vec<String>,
    },
}

fn one() -> f64 {
    1.0
}

/// One labelled prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Item {
    /// Unique id.
    pub id: String,
    /// Category, for the per-category table.
    pub category: String,
    /// The user message sent.
    pub prompt: String,
    /// How its answer is checked.
    pub check: Check,
}

/// Why a set cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetError {
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
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// Read the set at `path`: every line an [`Item`], ids unique, regexes
/// valid. Blank lines are skipped.
pub fn read_set(path: &Path) -> Result<Vec<Item>, SetError> {
    let io = |message: String| SetError::Io {
        path: path.to_path_buf(),
        message,
    };
    let bytes = crate::bundle::read_capped(path, MAX_SET_BYTES).map_err(|e| io(e.to_string()))?;
    let text = String::from_utf8(bytes).map_err(|_| io("not UTF-8".into()))?;
    let mut items: Vec<Item> = Vec::new();
    let mut ids = std::collections::HashSet::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fail = |message: String| SetError::Line {
            path: path.to_path_buf(),
            line: i + 1,
            message,
        };
        let item: Item = serde_json::from_str(line).map_err(|e| {
            fail(format!(
                "{e}; each line is {{\"id\", \"category\", \"prompt\", \"check\": {{\"type\": \"number\" | \"regex\" | \"json\" | \"summary\", ...}}}}"
            ))
        })?;
        if let Check::Regex { pattern } = &item.check {
            regex::Regex::new(pattern).map_err(|e| fail(format!("bad pattern: {e}")))?;
        }
        if !ids.insert(item.id.clone()) {
            return Err(fail(format!("id `{}` is used twice", item.id)));
        }
        items.push(item);
    }
    if items.is_empty() {
        return Err(io("no items".into()));
    }
    Ok(items)
}

/// Whether `answer` passes `item`'s check, and why not.
pub fn check(item: &Item, answer: &str) -> Result<(), String> {
    match &item.check {
        Check::Number { value, tolerance } => {
            let tolerance = tolerance.unwrap_or(1e-6 * value.abs().max(1.0));
            let copied = numbers(&item.prompt);
            let first = numbers(answer).into_iter().find(|n| {
                // A number copied from the prompt is not an answer, unless
                // it is the right one.
                (n - value).abs() <= tolerance || !copied.iter().any(|c| (c - n).abs() < 1e-9)
            });
            match first {
                Some(n) if (n - value).abs() <= tolerance => Ok(()),
                Some(n) => Err(format!("answered {n}, expected {value}")),
                None => Err(format!("no number of its own; expected {value}")),
            }
        }
        Check::Regex { pattern } => {
            let re = regex::Regex::new(pattern).map_err(|e| e.to_string())?;
            if re.is_match(answer) {
                Ok(())
            } else {
                Err(format!("does not match `{pattern}`"))
            }
        }
        Check::Json { fields } => {
            let object = first_object(answer).ok_or("no JSON object in the answer")?;
            for (key, want) in fields {
                let got = object
                    .get(key)
                    .ok_or_else(|| format!("field `{key}` is missing"))?;
                let same = match (want, got) {
                    (serde_json::Value::Number(a), serde_json::Value::Number(b)) => {
                        match (a.as_f64(), b.as_f64()) {
                            (Some(a), Some(b)) => (a - b).abs() < 1e-9,
                            _ => false,
                        }
                    }
                    (serde_json::Value::String(a), serde_json::Value::String(b)) => {
                        a.trim().eq_ignore_ascii_case(b.trim())
                    }
                    (a, b) => a == b,
                };
                if !same {
                    return Err(format!("field `{key}` is {got}, expected {want}"));
                }
            }
            Ok(())
        }
        Check::Summary {
            max_ratio,
            mentions,
        } => {
            let passage = item
                .prompt
                .split_once(':')
                .map_or(item.prompt.as_str(), |(_, p)| p)
                .trim();
            let answer = answer.trim();
            let (len, limit) = (
                answer.chars().count(),
                passage.chars().count() as f64 * max_ratio,
            );
            if answer.is_empty() {
                return Err("empty".into());
            }
            if len as f64 > limit {
                return Err(format!(
                    "{len} characters; at most {limit:.0} ({max_ratio} of the passage)"
                ));
            }
            let lower = answer.to_lowercase();
            match mentions.iter().find(|m| !lower.contains(&m.to_lowercase())) {
                Some(m) => Err(format!("does not mention `{m}`")),
                None => Ok(()),
            }
        }
    }
}

/// The numbers written in `text`, in order: `1,305`, `-3.5`, `3/4`.
pub fn numbers(text: &str) -> Vec<f64> {
    static NUMBER: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"([-−]?)(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?:\s*/\s*(\d+)(?:\.\d+)?)?")
            .expect("valid")
    });
    NUMBER
        .captures_iter(text)
        .filter_map(|c| {
            let sign = if c[1].is_empty() { 1.0 } else { -1.0 };
            let whole = c[2].replace(',', "");
            let frac = c.get(3).map_or("", |m| m.as_str());
            let mut value: f64 = format!("{whole}{frac}").parse().ok()?;
            if let Some(d) = c.get(4) {
                let d: f64 = d.as_str().parse().ok()?;
                if d != 0.0 {
                    value /= d;
                }
            }
            Some(sign * value)
        })
        .collect()
}

/// The first JSON object written in `text` (in a code fence or not).
fn first_object(text: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    text.match_indices('{').find_map(|(i, _)| {
        let mut stream =
            serde_json::Deserializer::from_str(&text[i..]).into_iter::<serde_json::Value>();
        match stream.next() {
            Some(Ok(serde_json::Value::Object(map))) => Some(map),
            _ => None,
        }
    })
}

/// One answer as `tessera eval` saw it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    /// The item's id.
    pub id: String,
    /// Its category.
    pub category: String,
    /// The model asked.
    pub model: String,
    /// The answer, or the error's message.
    pub answer: String,
    /// HTTP status (0: no response).
    pub status: u16,
    /// Whether the check passed.
    pub correct: bool,
    /// Why it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// Milliseconds until the whole answer.
    pub latency_ms: u64,
    /// Prompt and completion tokens.
    pub tokens: u64,
    /// Who answered, for `tessera/auto` (its `tessera.answered_by`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answered_by: Option<String>,
    /// Experts that failed or refused before the answer (its
    /// `tessera.fallbacks`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallbacks: Vec<String>,
    /// How `tessera/auto:moa` chose the answer (its
    /// `tessera.selection.by`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selected_by: Option<String>,
}

/// Counts for one model (and one category, or all).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Tally {
    /// Items asked.
    pub total: usize,
    /// Answers that passed.
    pub correct: usize,
    /// Requests that got no answer (HTTP errors, timeouts).
    pub errors: usize,
    /// Sum of latencies, ms.
    pub latency_ms: u64,
    /// Sum of tokens.
    pub tokens: u64,
}

impl Tally {
    fn add(&mut self, o: &Outcome) {
        self.total += 1;
        self.correct += usize::from(o.correct);
        self.errors += usize::from(o.status != 200);
        self.latency_ms += o.latency_ms;
        self.tokens += o.tokens;
    }

    /// Fraction correct.
    pub fn accuracy(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.correct as f64 / self.total as f64
        }
    }

    /// Mean latency, seconds.
    pub fn mean_latency_s(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.latency_ms as f64 / 1000.0 / self.total as f64
        }
    }
}

/// Per model: the overall tally and one per category.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// In the order the models were given.
    pub models: Vec<ModelSummary>,
}

/// One model's tallies.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ModelSummary {
    /// The model.
    pub model: String,
    /// Over every item.
    pub all: Tally,
    /// Per category.
    pub categories: BTreeMap<String, Tally>,
}

/// Tally `outcomes` per model (in `models` order) and category.
pub fn summarize(models: &[String], outcomes: &[Outcome]) -> Summary {
    Summary {
        models: models
            .iter()
            .map(|m| {
                let mut s = ModelSummary {
                    model: m.clone(),
                    ..ModelSummary::default()
                };
                for o in outcomes.iter().filter(|o| &o.model == m) {
                    s.all.add(o);
                    s.categories.entry(o.category.clone()).or_default().add(o);
                }
                s
            })
            .collect(),
    }
}

/// The summary as two text tables: per model, then accuracy per category.
pub fn render(summary: &Summary) -> String {
    use std::fmt::Write;
    let width = summary
        .models
        .iter()
        .map(|m| m.model.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:width$}  {:>14}  {:>6}  {:>12}  {:>8}",
        "model", "correct", "errors", "mean latency", "tokens"
    );
    for m in &summary.models {
        let a = &m.all;
        let _ = writeln!(
            out,
            "{:width$}  {:>14}  {:>6}  {:>10.2} s  {:>8}",
            m.model,
            format!("{:.1}% ({}/{})", 100.0 * a.accuracy(), a.correct, a.total),
            a.errors,
            a.mean_latency_s(),
            a.tokens
        );
    }
    let categories: std::collections::BTreeSet<&String> = summary
        .models
        .iter()
        .flat_map(|m| m.categories.keys())
        .collect();
    let _ = writeln!(out);
    let cw = categories.iter().map(|c| c.len()).max().unwrap_or(8).max(8);
    let _ = write!(out, "{:cw$}", "category");
    for m in &summary.models {
        let _ = write!(out, "  {:>w$}", m.model, w = m.model.len().max(7));
    }
    let _ = writeln!(out);
    for c in categories {
        let _ = write!(out, "{c:cw$}");
        for m in &summary.models {
            let w = m.model.len().max(7);
            let cell = m.categories.get(c).map_or("-".to_string(), |t| {
                format!("{:.0}% {}/{}", 100.0 * t.accuracy(), t.correct, t.total)
            });
            let _ = write!(out, "  {cell:>w$}");
        }
        let _ = writeln!(out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(prompt: &str, check: Check) -> Item {
        Item {
            id: "x".into(),
            category: "c".into(),
            prompt: prompt.into(),
            check,
        }
    }

    #[test]
    fn numbers_are_read_as_people_write_them() {
        assert_eq!(
            numbers("1,305 and -3.5, then 3/4 or 12 345."),
            [1305.0, -3.5, 0.75, 12.0, 345.0]
        );
        assert_eq!(numbers("1,4,9"), [1.0, 4.0, 9.0]);
    }

    #[test]
    fn number_checks_skip_what_the_prompt_said() {
        let sum = item(
            "What is 347 + 958?",
            Check::Number {
                value: 1305.0,
                tolerance: None,
            },
        );
        assert!(check(&sum, "347 + 958 = 1,305").is_ok());
        assert!(check(&sum, "The answer is 1305.").is_ok());
        let err = check(&sum, "347 + 958 = 1205").unwrap_err();
        assert!(err.contains("answered 1205"), "{err}");
        assert!(
            check(&sum, "347 plus 958")
                .unwrap_err()
                .contains("no number")
        );
        let miles = item(
            "How many miles is 42 kilometers?",
            Check::Number {
                value: 26.0976,
                tolerance: Some(0.05),
            },
        );
        assert!(check(&miles, "42 km is about 26.1 miles").is_ok());
        assert!(check(&miles, "42 km is about 26.2 miles").is_err());
    }

    #[test]
    fn json_checks_want_typed_fields() {
        let mut fields = serde_json::Map::new();
        fields.insert("name".into(), "Maria Lopez".into());
        fields.insert("age".into(), 29.into());
        let it = item("...", Check::Json { fields });
        assert!(
            check(
                &it,
                "```json\n{\"name\": \"maria lopez \", \"age\": 29}\n```"
            )
            .is_ok()
        );
        let err = check(&it, r#"{"name": "Maria Lopez", "age": "29"}"#).unwrap_err();
        assert!(err.contains("field `age`"), "{err}");
        assert!(
            check(&it, r#"{"name": "Maria Lopez"}"#)
                .unwrap_err()
                .contains("`age` is missing")
        );
        assert!(check(&it, "Maria is 29.").is_err());
    }

    #[test]
    fn summaries_are_short_and_on_topic() {
        let it = item(
            "Summarize: The council voted to build bike lanes on Main Street next spring after a long debate.",
            Check::Summary {
                max_ratio: 0.8,
                mentions: vec!["bike".into(), "Main Street".into()],
            },
        );
        assert!(check(&it, "Bike lanes are coming to Main Street.").is_ok());
        assert!(
            check(&it, "Lanes are coming to Main Street.")
                .unwrap_err()
                .contains("`bike`")
        );
        let long = "The council voted to build bike lanes on Main Street next spring after a long debate, they said.";
        assert!(check(&it, long).unwrap_err().contains("characters"));
    }

    #[test]
    fn sets_name_their_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("set.jsonl");
        let good = r#"{"id": "a", "category": "c", "prompt": "p", "check": {"type": "regex", "pattern": "x"}}"#;
        std::fs::write(&path, format!("{good}\n{good}\n")).unwrap();
        let err = read_set(&path).unwrap_err().to_string();
        assert!(err.contains(":2: id `a` is used twice"), "{err}");
        std::fs::write(&path, r#"{"id": "a", "category": "c", "prompt": "p", "check": {"type": "regex", "pattern": "("}}"#).unwrap();
        assert!(
            read_set(&path)
                .unwrap_err()
                .to_string()
                .contains(":1: bad pattern")
        );
        std::fs::write(
            &path,
            r#"{"id": "a", "category": "c", "prompt": "p", "check": {"type": "vibes"}}"#,
        )
        .unwrap();
        assert!(read_set(&path).unwrap_err().to_string().contains(":1: "));
    }

    /// The committed sets parse, the test set is as large and as broad as
    /// promised, and the two share no id.
    #[test]
    fn the_committed_sets_read() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/eval");
        let test = read_set(&dir.join("test.jsonl")).unwrap();
        assert!(test.len() >= 150);
        let categories: std::collections::BTreeSet<_> =
            test.iter().map(|i| i.category.as_str()).collect();
        assert!(categories.len() >= 8, "{categories:?}");
        let dev = read_set(&dir.join("dev.jsonl")).unwrap();
        assert!(
            dev.iter()
                .all(|d| test.iter().all(|t| t.id != d.id && t.prompt != d.prompt))
        );
    }
}
