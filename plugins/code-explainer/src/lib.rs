//! Code explainer: finds the code in the question (a fenced block, or the
//! text after the first colon), names its language when it can tell, and
//! asks the model to explain it. Streams the explanation. A question with
//! nothing that looks like code is refused (`invalid-input`), so that the
//! router's next candidate or the base model answers it.

use tessera_sdk::prelude::*;

struct CodeExplainer;

impl Expert for CodeExplainer {
    fn handle(req: Request) -> Result<Response, Error> {
        let question = req.require_user_message()?;
        if !has_code(question) {
            // Another expert, or the base model, answers instead.
            return Err(Error::invalid_input(
                "no code found: paste the code after a colon or in a ``` block",
            ));
        }
        let code = extract_code(question);
        let language = guess_language(code);
        let mut system = String::from(
            "You are a senior programmer. Explain what the code does in plain words: its purpose first, then the important steps. Mention a likely bug if you see one. Be brief.",
        );
        if let Some(language) = language {
            system.push_str(&format!(" The code is {language}."));
        }
        let messages = [Message::system(system), Message::user(question)];
        let sampling = req
            .sampling
            .clone()
            .max_tokens(req.sampling.max_tokens.unwrap_or(200).min(512));
        let answer = model::stream_answer(&messages, &sampling)?;
        let mut response = Response::from_completion(answer);
        if let Some(language) = language {
            response = response.with_metadata("language", language);
        }
        Ok(response)
    }
}

/// The code of a question: the first fenced block, else what follows the
/// first colon, else the whole question.
pub fn extract_code(question: &str) -> &str {
    if let Some(start) = question.find("```") {
        let body = &question[start + 3..];
        // Skip the info string ("```python").
        let body = body.split_once('\n').map_or(body, |(_, rest)| rest);
        return body.split("```").next().unwrap_or(body).trim();
    }
    match question.split_once(':') {
        Some((_, rest)) if !rest.trim().is_empty() => rest.trim(),
        _ => question.trim(),
    }
}

/// Whether `question` holds something that looks like code: a fenced
/// block, a language's telltale tokens, or code punctuation.
pub fn has_code(question: &str) -> bool {
    question.contains("```")
        || guess_language(question).is_some()
        || question.contains([
            '(', ')', '{', '}', '=', ';', '[', ']', '<', '>', '`', '$', '|', '_',
        ])
}

/// A guess at the language from telltale tokens.
pub fn guess_language(code: &str) -> Option<&'static str> {
    let has = |needles: &[&str]| needles.iter().any(|n| code.contains(n));
    let upper = code.to_uppercase();
    if has(&["fn ", "let mut ", "impl ", "::<", "println!"]) {
        Some("Rust")
    } else if has(&["def ", "import ", "elif ", "print("]) && !has(&[";\n", "{"]) {
        Some("Python")
    } else if has(&["function ", "const ", "=> ", "console.log"]) {
        Some("JavaScript")
    } else if upper.contains("SELECT ") && upper.contains(" FROM ") {
        Some("SQL")
    } else if has(&["#include", "printf(", "int main("]) {
        Some("C")
    } else if has(&["public static void", "System.out"]) {
        Some("Java")
    } else if has(&["#!/bin/", "| grep", "find . ", "echo $", "sudo "]) {
        Some("shell")
    } else {
        None
    }
}

export_expert!(CodeExplainer);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_is_found_and_its_language_guessed() {
        let q = "What does this do?\n```python\ndef f(x):\n    return x * 2\n```\nthanks";
        assert_eq!(extract_code(q), "def f(x):\n    return x * 2");
        assert_eq!(guess_language(extract_code(q)), Some("Python"));
        let q = "Explain: SELECT name FROM users WHERE id = 1";
        assert_eq!(guess_language(extract_code(q)), Some("SQL"));
        assert_eq!(
            guess_language("fn main() { println!(\"hi\"); }"),
            Some("Rust")
        );
        assert_eq!(guess_language("hello world"), None);
    }

    #[test]
    fn prose_without_code_is_not_taken() {
        assert!(!has_code("Iron has which element symbol?"));
        assert!(!has_code("What is a closure in programming?"));
        assert!(has_code("What does x = [i * 2 for i in range(3)] give?"));
        assert!(has_code("Explain: SELECT name FROM users"));
        assert!(has_code("What does `ls -la` print?"));
    }
}
