//! Keyword router: an example of the `router` world. A candidate scores one
//! point for each of its tags (or name words) found among the words of
//! the last user message, directly or through a small synonym table; the
//! candidates that score are returned best first, scores scaled to 0..1.
//! No match returns an empty list, and the base model answers.

use tessera_sdk::prelude::*;

/// Request words that stand for a tag.
const SYNONYMS: &[(&str, &str)] = &[
    ("convert", "units"),
    ("conversion", "units"),
    ("miles", "units"),
    ("km", "units"),
    ("celsius", "units"),
    ("fahrenheit", "units"),
    ("pounds", "units"),
    ("kg", "units"),
    ("summarize", "summary"),
    ("summarise", "summary"),
    ("tl;dr", "summary"),
    ("tldr", "summary"),
    ("json", "json"),
    ("extract", "json"),
    ("fields", "json"),
    ("code", "code"),
    ("function", "code"),
    ("python", "code"),
    ("rust", "code"),
    ("sql", "code"),
    ("javascript", "code"),
    ("compute", "math"),
    ("calculate", "math"),
    ("plus", "math"),
    ("times", "math"),
    ("divided", "math"),
];

struct KeywordRouter;

impl Router for KeywordRouter {
    fn route(req: Request, candidates: Vec<ExpertInfo>) -> Result<Vec<RouteChoice>, Error> {
        let question = req.require_user_message()?;
        Ok(rank(question, &candidates))
    }
}

/// The words of `text`, lowercased.
fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !(c.is_alphanumeric() || c == ';' || c == '-'))
        .filter(|w| !w.is_empty())
        .map(String::from)
        .collect()
}

/// Candidates that match `question`, best first.
pub fn rank(question: &str, candidates: &[ExpertInfo]) -> Vec<RouteChoice> {
    let words = words(question);
    let mut tags_asked: Vec<&str> = words.iter().map(String::as_str).collect();
    for (word, tag) in SYNONYMS {
        if words.iter().any(|w| w == word) {
            tags_asked.push(tag);
        }
    }
    // Arithmetic written with symbols ("12 * 7") asks for math.
    if question.chars().any(|c| "+*/^".contains(c)) && question.chars().any(|c| c.is_ascii_digit())
    {
        tags_asked.push("math");
    }
    let mut choices: Vec<RouteChoice> = candidates
        .iter()
        .filter_map(|c| {
            let labels = c
                .tags
                .iter()
                .map(|t| t.to_lowercase())
                .chain(c.name.split('-').map(String::from));
            let hits = labels
                .filter(|label| tags_asked.iter().any(|t| t == label))
                .count();
            (hits > 0).then(|| RouteChoice::new(c.name.clone(), hits as f32 / (hits as f32 + 1.0)))
        })
        .collect();
    choices.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| a.name.cmp(&b.name))
    });
    choices
}

export_router!(KeywordRouter);

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, tags: &[&str]) -> ExpertInfo {
        let mut info = ExpertInfo::new(name, "");
        for t in tags {
            info = info.tag(*t);
        }
        info
    }

    #[test]
    fn keywords_pick_the_expert_with_the_matching_tag() {
        let candidates = [
            info("unit-converter", &["units"]),
            info("calculator", &["math"]),
            info("summariser", &["summary"]),
        ];
        let top = |q: &str| rank(q, &candidates).first().map(|c| c.name.clone());
        assert_eq!(
            top("Convert 5 km to miles").as_deref(),
            Some("unit-converter")
        );
        assert_eq!(top("What is 12 * 7?").as_deref(), Some("calculator"));
        assert_eq!(top("tl;dr of this please").as_deref(), Some("summariser"));
        assert_eq!(top("Tell me a story"), None);
    }
}
