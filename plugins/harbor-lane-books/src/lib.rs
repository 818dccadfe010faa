//! Harbor Lane Books: a LoRA fine-tune of SmolLM2 that knows a made-up
//! bookshop's facts (hours, address, policies), trained by `train.sh` with
//! `tessera adapt` on `data/train.jsonl`.
//!
//! This component is the adapter's optional hook. Every conversation in
//! the training data starts with the same system prompt followed by the
//! shop's facts the question is about (at most [`MAX_FACTS`], chosen by
//! keywords; `make_train.py` writes them with the rules of
//! [`relevant_facts`]), so `pre_request` builds that prompt in front of
//! every request (replacing the caller's) and asks for greedy decoding
//! unless the caller chose a temperature; facts should not be sampled. A
//! 135M model recalls a fact it reads far more reliably than one it
//! memorised: on the development set the fine-tune trained without facts
//! mixed up days, prices and numbers. `post_response` trims the answer.

use tessera_sdk::prelude::*;

/// The system prompt every training conversation starts with.
pub const SYSTEM_PROMPT: &str = "You are the assistant of Harbor Lane Books, an independent bookshop in Port Alder. Answer in one or two sentences.";

/// Most facts put into the system prompt.
pub const MAX_FACTS: usize = 3;

/// The shop's facts with the words that ask about each: `data/facts.txt`,
/// which `make_train.py` also reads, so that the facts in the training
/// prompts are the ones given at run time.
const FACTS_FILE: &str = include_str!("../data/facts.txt");

/// Each fact of [`FACTS_FILE`] with its keywords, in file order. A
/// keyword of four letters or more matches any word it begins
/// ("tuesday" matches "Tuesdays"); shorter ones match whole words.
pub fn facts() -> impl Iterator<Item = (Vec<&'static str>, &'static str)> {
    FACTS_FILE
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(" | "))
        .map(|(keys, fact)| (keys.split_whitespace().collect(), fact.trim()))
}

/// The facts `question` asks about, most matched keywords first (at most
/// [`MAX_FACTS`]; none when no keyword matches).
pub fn relevant_facts(question: &str) -> Vec<&'static str> {
    let lower = question.to_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !(c.is_alphanumeric() || c == '-'))
        .filter(|w| !w.is_empty())
        .collect();
    let matches = |k: &str| {
        words.iter().any(|w| {
            if k.chars().count() >= 4 {
                w.starts_with(k)
            } else {
                *w == k
            }
        })
    };
    let mut scored: Vec<(usize, usize, &'static str)> = facts()
        .enumerate()
        .map(|(i, (keys, fact))| (keys.iter().filter(|k| matches(k)).count(), i, fact))
        .filter(|&(n, _, _)| n > 0)
        .collect();
    // Most matches first; among equals, the order of the file.
    scored.sort_by_key(|&(n, i, _)| (std::cmp::Reverse(n), i));
    scored
        .iter()
        .take(MAX_FACTS)
        .map(|&(_, _, fact)| fact)
        .collect()
}

struct HarborLaneBooks;

impl Adapter for HarborLaneBooks {
    fn describe() -> AdapterInfo {
        AdapterInfo::new(
            "harbor-lane-books",
            "HuggingFaceTB/SmolLM2-135M-Instruct",
            8,
            16.0,
        )
        .target("q_proj")
        .target("v_proj")
    }

    fn pre_request(req: Request) -> Result<Request, Error> {
        Ok(with_training_prompt(req))
    }

    fn post_response(mut resp: Response) -> Result<Response, Error> {
        resp.content = resp.content.trim().to_string();
        Ok(resp)
    }
}

/// `req` as the adapter was trained to see it: the training system prompt
/// first (any other system message dropped), followed by the facts the
/// last user message asks about; greedy unless asked otherwise.
fn with_training_prompt(mut req: Request) -> Request {
    req.messages.retain(|m| m.role != Role::System);
    let question = req
        .messages
        .iter()
        .rev()
        .find(|m| m.role == Role::User)
        .map_or("", |m| m.content.as_str());
    let mut system = SYSTEM_PROMPT.to_string();
    let facts = relevant_facts(question);
    if !facts.is_empty() {
        system.push_str(" Facts: ");
        system.push_str(&facts.join(" "));
    }
    req.messages.insert(
        0,
        Message {
            role: Role::System,
            content: system,
        },
    );
    req.sampling.temperature.get_or_insert(0.0);
    req
}

export_adapter!(HarborLaneBooks);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_training_system_prompt_comes_first_and_decoding_is_greedy() {
        let mut req = Request::new(vec![
            Message {
                role: Role::System,
                content: "Answer in French.".into(),
            },
            Message::user("When is Harbor Lane Books open?"),
        ]);
        let out = with_training_prompt(req.clone());
        assert_eq!(out.messages.len(), 2);
        assert!(out.messages[0].content.starts_with(SYSTEM_PROMPT));
        assert!(out.messages[0].content.contains("Tuesday to Sunday"));
        assert_eq!(out.messages[1].role, Role::User);
        assert_eq!(out.sampling.temperature, Some(0.0));
        // A caller's temperature stands.
        req.sampling.temperature = Some(0.9);
        assert_eq!(with_training_prompt(req).sampling.temperature, Some(0.9));
    }

    #[test]
    fn the_facts_asked_about_are_found_by_keyword() {
        let first = |q: &str| relevant_facts(q).first().copied().unwrap_or("");
        assert!(first("Is the shop open on Mondays?").contains("closed on Mondays"));
        assert!(first("What number do I ring?").contains("555-0142"));
        assert!(first("Can I bring my dog?").contains("Ledger"));
        assert!(first("Where do I park my car?").contains("parking"));
        assert!(relevant_facts("What's the weather like?").is_empty());
        assert!(relevant_facts("open hours, phone, dogs, parking, cafe").len() <= MAX_FACTS);
    }

    #[test]
    fn the_training_prompts_are_the_ones_the_hook_builds() {
        // data/train.jsonl is written by make_train.py; a prompt the hook
        // would build differently means the adapter is trained on one
        // prompt and asked with another.
        let data = include_str!("../data/train.jsonl");
        let mut chats = 0;
        for line in data.lines().filter(|l| !l.trim().is_empty()) {
            let chat: serde_json::Value = serde_json::from_str(line).unwrap();
            let messages = chat["messages"].as_array().unwrap();
            let text = |role: &str| {
                messages
                    .iter()
                    .find(|m| m["role"] == role)
                    .and_then(|m| m["content"].as_str())
                    .unwrap()
                    .to_string()
            };
            let built = with_training_prompt(Request::new(vec![Message::user(text("user"))]));
            assert_eq!(
                built.messages[0].content,
                text("system"),
                "rerun `python3 make_train.py` and `bash train.sh`"
            );
            chats += 1;
        }
        assert_eq!(chats, 57);
    }
}
