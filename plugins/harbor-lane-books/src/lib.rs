//! Harbor Lane Books: a LoRA fine-tune of SmolLM2 that knows a made-up
//! bookshop's facts (hours, address, policies), trained by `train.sh` with
//! `tessera adapt` on `data/train.jsonl`.
//!
//! This component is the adapter's optional hook: every conversation in the
//! training data starts with the same system prompt, so `pre_request` puts
//! it in front of requests that bring none (or replaces theirs) and asks
//! for greedy decoding unless the caller chose a temperature; facts should
//! not be sampled. It also adds to that prompt the shop's facts the
//! question is about (at most [`MAX_FACTS`], chosen by keywords): the
//! fine-tune learnt the shop's voice and facts, but a 135M model recalls
//! a fact it can read far more reliably than one it memorised (on the
//! development set the bare fine-tune mixed up days, prices and numbers).
//! `post_response` trims the answer.

use tessera_sdk::prelude::*;

/// The system prompt every training conversation starts with.
pub const SYSTEM_PROMPT: &str = "You are the assistant of Harbor Lane Books, an independent bookshop in Port Alder. Answer in one or two sentences.";

/// Most facts put into the system prompt.
pub const MAX_FACTS: usize = 2;

/// The shop's facts (the answers of `data/train.jsonl`), each with the
/// words that ask about it. A keyword of four letters or more matches any
/// word it begins ("tuesday" matches "Tuesdays"); shorter ones match whole
/// words.
pub const FACTS: &[(&[&str], &str)] = &[
    (
        &[
            "open",
            "hour",
            "close",
            "closed",
            "when",
            "time",
            "weekday",
            "weekend",
            "monday",
            "tuesday",
            "wednesday",
            "friday",
            "saturday",
            "sunday",
            "visit",
            "welcome",
        ],
        "Harbor Lane Books is open Tuesday to Sunday, 9 am to 6 pm. It is closed on Mondays.",
    ),
    (
        &[
            "where",
            "address",
            "street",
            "located",
            "location",
            "find",
            "town",
            "city",
            "ferry",
            "directions",
        ],
        "Harbor Lane Books is at 14 Harbor Lane, Port Alder, next to the ferry terminal.",
    ),
    (
        &[
            "phone",
            "call",
            "ring",
            "telephone",
            "contact",
            "reach",
            "number",
        ],
        "You can call Harbor Lane Books on 555-0142.",
    ),
    (
        &[
            "founded", "founder", "owner", "owns", "own", "runs", "who", "old", "since", "started",
            "history", "trading", "year",
        ],
        "Harbor Lane Books was founded in 1987 by Mira Okafor, who still runs it.",
    ),
    (
        &["return", "refund", "exchange", "back", "receipt"],
        "Harbor Lane Books takes returns within 30 days with the receipt, for store credit.",
    ),
    (
        &[
            "loyalty", "stamp", "discount", "reward", "lantern", "points",
        ],
        "The Lantern Card of Harbor Lane Books gives you one stamp per book, and your tenth book is free.",
    ),
    (
        &[
            "poetry", "poem", "reading", "readings", "event", "events", "night", "thursday",
            "evening",
        ],
        "Harbor Lane Books holds a poetry night every Thursday at 7 pm.",
    ),
    (
        &[
            "cafe", "café", "coffee", "tea", "cake", "eat", "food", "drink", "snack", "inkwell",
            "hungry", "lunch",
        ],
        "The Inkwell Cafe upstairs at Harbor Lane Books serves coffee, tea and cakes.",
    ),
    (
        &[
            "deliver", "delivery", "shipping", "ship", "post", "mail", "send", "minimum",
        ],
        "Harbor Lane Books delivers free in Port Alder for orders over $25.",
    ),
    (
        &["order", "special", "stock", "request", "print", "arrive"],
        "Harbor Lane Books can order any book in print; special orders arrive in 3 to 5 days.",
    ),
    (
        &["gift", "voucher", "present", "values"],
        "Harbor Lane Books sells gift cards from $10 to $200.",
    ),
    (
        &[
            "pet", "pets", "dog", "dogs", "cat", "cats", "animal", "ledger",
        ],
        "Dogs are welcome at Harbor Lane Books, and the shop cat is called Ledger.",
    ),
    (
        &["park", "parking", "car", "drive", "driving"],
        "Harbor Lane Books has free parking behind the shop.",
    ),
    (
        &[
            "used",
            "second",
            "secondhand",
            "second-hand",
            "sell",
            "buy",
            "buys",
            "purchase",
        ],
        "Harbor Lane Books buys used books on Saturdays, for cash or store credit.",
    ),
];

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
    let mut scored: Vec<(usize, usize)> = FACTS
        .iter()
        .enumerate()
        .map(|(i, (keys, _))| (keys.iter().filter(|k| matches(k)).count(), i))
        .filter(|&(n, _)| n > 0)
        .collect();
    // Most matches first; among equals, the order of FACTS.
    scored.sort_by_key(|&(n, i)| (std::cmp::Reverse(n), i));
    scored
        .iter()
        .take(MAX_FACTS)
        .map(|&(_, i)| FACTS[i].1)
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
}
