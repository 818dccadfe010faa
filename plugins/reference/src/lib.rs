//! Reference: facts looked up in published tables instead of generated. A
//! 135M model invents a chemical symbol or a country's language as
//! readily as it recalls one; a table does not.
//!
//! Understood: an element from its symbol ("which element has the symbol
//! K?"), the symbol or atomic number of an element, the element with an
//! atomic number; a country's capital, languages or currency, and
//! the country of a capital. Anything else is refused with
//! `invalid-input`, so that `tessera/auto` falls back to the next
//! candidate. The tables come from `periodictable`, `countryinfo` and
//! `pycountry` (see `make_tables.py`).

mod tables;

use tessera_sdk::prelude::*;

use tables::{Country, Element};

/// Longest question read (bytes).
pub const MAX_QUESTION: usize = 4096;

/// What a question asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ask {
    ElementOfSymbol(Element),
    SymbolOf(Element),
    AtomicNumberOf(Element),
    ElementNumber(Element),
    Capital(Country),
    CountryOfCapital(Country),
    Languages(Country),
    Currency(Country),
}

struct Reference;

impl Expert for Reference {
    fn handle(req: Request) -> Result<Response, Error> {
        let question = req.require_user_message()?;
        if question.len() > MAX_QUESTION {
            return Err(Error::invalid_input(format!(
                "the question is {} bytes; at most {MAX_QUESTION}",
                question.len()
            )));
        }
        let ask = parse(question).ok_or_else(|| {
            Error::invalid_input(
                "not a question these tables answer: ask for an element's symbol, name or \
                 atomic number, or a country's capital, languages or currency",
            )
        })?;
        Ok(Response::new(answer(&ask))
            .with_confidence(1.0)
            .with_metadata("source", source(&ask)))
    }
}

/// What `question` asks, or `None` when the tables cannot answer it.
pub fn parse(question: &str) -> Option<Ask> {
    let lower = question.to_lowercase();
    let has = |w: &str| tables::find_words(&lower, w).is_some();
    let starts = |w: &str| {
        lower
            .split(|c: char| !c.is_alphanumeric())
            .any(|t| t.starts_with(w))
    };
    if has("symbol") {
        // A symbol is written as one: "the symbol K", "symbol Fe".
        let after = &question[lower.find("symbol")? + "symbol".len()..];
        let symbol = after
            .split(|c: char| !c.is_alphanumeric())
            .filter(|t| !t.is_empty())
            .find_map(|t| tables::elements().find(|e| e.symbol == t));
        if let Some(e) = symbol {
            return Some(Ask::ElementOfSymbol(e));
        }
        return tables::element_named(&lower).map(Ask::SymbolOf);
    }
    if has("atomic number") || has("element number") || has("proton") || has("protons") {
        if let Some(e) = tables::element_named(&lower) {
            return Some(Ask::AtomicNumberOf(e));
        }
        let n: u32 = lower
            .split(|c: char| !c.is_ascii_digit())
            .find(|t| !t.is_empty())?
            .parse()
            .ok()?;
        return tables::elements()
            .find(|e| e.number == n)
            .map(Ask::ElementNumber);
    }
    if has("element") && has("periodic table") {
        let n: u32 = lower
            .split(|c: char| !c.is_ascii_digit())
            .find(|t| !t.is_empty())?
            .parse()
            .ok()?;
        return tables::elements()
            .find(|e| e.number == n)
            .map(Ask::ElementNumber);
    }
    if has("capital") {
        if let Some(c) = tables::country_with_capital(&lower)
            && (has("which country") || has("what country") || has("country is"))
        {
            return Some(Ask::CountryOfCapital(c));
        }
        return tables::country_named(&lower).map(Ask::Capital);
    }
    if starts("language") || has("speak") || has("spoken") {
        return tables::country_named(&lower)
            .filter(|c| !c.languages.is_empty())
            .map(Ask::Languages);
    }
    if starts("currenc") || has("money") {
        return tables::country_named(&lower)
            .filter(|c| !c.currencies.is_empty())
            .map(Ask::Currency);
    }
    None
}

/// The answer, as one sentence.
pub fn answer(ask: &Ask) -> String {
    match ask {
        Ask::ElementOfSymbol(e) => format!(
            "{} is the symbol of {} (atomic number {}).",
            e.symbol,
            title(e.name),
            e.number
        ),
        Ask::SymbolOf(e) => format!(
            "The chemical symbol of {} is {} (atomic number {}).",
            e.name, e.symbol, e.number
        ),
        Ask::AtomicNumberOf(e) => format!(
            "The atomic number of {} ({}) is {}.",
            e.name, e.symbol, e.number
        ),
        Ask::ElementNumber(e) => format!("Element {} is {} ({}).", e.number, e.name, e.symbol),
        Ask::Capital(c) => format!("The capital of {} is {}.", c.name, c.capital),
        Ask::CountryOfCapital(c) => format!("{} is the capital of {}.", c.capital, c.name),
        Ask::Languages(c) => format!("People in {} speak {}.", c.name, and_list(&c.languages)),
        Ask::Currency(c) => match c.currencies.as_slice() {
            [one] => format!("The currency of {} is the {one}.", c.name),
            many => format!("{} uses the {}.", c.name, and_list(many)),
        },
    }
}

/// Which table answered.
fn source(ask: &Ask) -> &'static str {
    match ask {
        Ask::ElementOfSymbol(_)
        | Ask::SymbolOf(_)
        | Ask::AtomicNumberOf(_)
        | Ask::ElementNumber(_) => "periodictable",
        Ask::Languages(_) | Ask::Currency(_) => "countryinfo + pycountry",
        Ask::Capital(_) | Ask::CountryOfCapital(_) => "countryinfo",
    }
}

/// "Potassium" from "potassium".
fn title(name: &str) -> String {
    let mut chars = name.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// "a, b and c".
fn and_list(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => one.to_string(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

export_expert!(Reference);

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(q: &str) -> String {
        parse(q).map(|a| answer(&a)).unwrap_or_default()
    }

    #[test]
    fn elements_are_looked_up_by_symbol_name_and_number() {
        assert!(ask("Which element's symbol is Pb?").contains("Lead"));
        assert!(ask("What does the chemical symbol Na stand for?").contains("Sodium"));
        assert!(ask("Give me the chemical symbol of tungsten.").contains(" W "));
        assert!(ask("Tell me the atomic number of mercury.").contains("80"));
        assert!(ask("Which element has 6 protons?").contains("carbon"));
        assert!(ask("Name element 47 of the periodic table.").contains("silver"));
        assert!(ask("What symbol does aluminium have?").contains("Al"));
    }

    #[test]
    fn countries_are_looked_up_by_name_and_capital() {
        assert!(ask("Name the capital of New Zealand.").contains("Wellington"));
        assert!(ask("Nairobi is the capital of what country?").contains("Kenya"));
        assert!(ask("Which languages do people speak in Switzerland?").contains("French"));
        assert!(ask("What money do they use in Japan?").contains("Yen"));
        assert!(ask("Tell me the currency of Mexico.").contains("Mexican Peso"));
        assert!(ask("What language do people in Chile speak?").contains("Spanish"));
        // Country names are whole words, and no ISO code or English word
        // stands for one: "and" is not Andorra, "island" not Iceland.
        assert!(ask("What is the capital of the island nation of Malta?").contains("Valletta"));
        assert!(ask("What currency do Peru and its neighbours use?").contains("Peru"));
    }

    #[test]
    fn questions_the_tables_cannot_answer_are_refused() {
        for q in [
            "How many hearts does an octopus have?",
            "What is the capital letter of the alphabet?",
            "Which language is this code written in?",
            "What is the symbol for infinity?",
            "Which element has atomic number 500?",
        ] {
            assert_eq!(parse(q), None, "{q}");
        }
    }

    #[test]
    fn answers_are_whole_sentences() {
        assert_eq!(
            and_list(&["German", "French", "Italian"]),
            "German, French and Italian"
        );
        assert_eq!(title("potassium"), "Potassium");
    }
}
