//! Finding the JavaScript in a question.

/// Longest snippet accepted (bytes).
pub const MAX_CODE: usize = 32 * 1024;

/// The code in `question`: a fenced block, else what follows the first
/// line, else what follows the first colon, else an inline
/// `console.log(...)` call. Refused when there is none, when it is too
/// long, or when it is another language.
pub fn javascript(question: &str) -> Result<String, String> {
    let code = fenced(question)
        .or_else(|| {
            question
                .split_once('\n')
                .map(|(_, rest)| rest.trim().to_string())
        })
        .or_else(|| {
            question
                .split_once(':')
                .map(|(_, rest)| rest.trim().to_string())
        })
        .or_else(|| inline_call(question))
        .filter(|c| !c.is_empty())
        .ok_or(
            "no code found: put the snippet after the question, on its own lines or in a ``` block",
        )?;
    if code.len() > MAX_CODE {
        return Err(format!(
            "the snippet is {} bytes; at most {MAX_CODE}",
            code.len()
        ));
    }
    let lower = question.to_lowercase();
    let says_js = ["javascript", "node", " js ", " js?", "typescript"]
        .iter()
        .any(|w| lower.contains(w));
    let says_other = [
        "python", "rust", "java ", "java?", "c++", "ruby", "bash", "sql",
    ]
    .iter()
    .any(|w| lower.contains(w));
    if says_other && !says_js {
        return Err("this is not JavaScript; this expert runs JavaScript only".into());
    }
    if !says_js && looks_like_python(&code) {
        return Err("this looks like Python; this expert runs JavaScript only".into());
    }
    if !says_js && !looks_like_javascript(&code) {
        return Err("this does not look like JavaScript (no console.log, let, const, var, function or =>); say \"JavaScript\" in the question to run it anyway".into());
    }
    Ok(code)
}

fn fenced(text: &str) -> Option<String> {
    let start = text.find("```")? + 3;
    let rest = &text[start..];
    let end = rest.find("```")?;
    let block = &rest[..end];
    // Drop the language tag on the opening line.
    let block = match block.split_once('\n') {
        Some((tag, body)) if !tag.contains(['(', ';', '=', ' ']) => body,
        _ => block,
    };
    Some(block.trim().to_string())
}

fn inline_call(text: &str) -> Option<String> {
    let start = text.find("console.")?;
    let tail = &text[start..];
    let mut depth = 0;
    for (i, c) in tail.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(tail[..=i].to_string());
                }
            }
            _ => {}
        }
    }
    None
}

fn looks_like_javascript(code: &str) -> bool {
    [
        "console.", "let ", "const ", "var ", "function", "=>", "};", "===", "Math.",
    ]
    .iter()
    .any(|w| code.contains(w))
}

fn looks_like_python(code: &str) -> bool {
    if code.contains("console.") {
        return false;
    }
    code.lines().any(|line| {
        let line = line.trim_start();
        line.starts_with("print(")
            || line.starts_with("def ")
            || line.starts_with("import ")
            || line.starts_with("elif ")
            || line.starts_with("from ")
            || (line.starts_with("for ") && line.contains(" in ") && line.ends_with(':'))
            || (line.starts_with("if ") && line.ends_with(':'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_code() {
        assert_eq!(
            javascript("What does this JavaScript log?\nconsole.log(7 % 3);").unwrap(),
            "console.log(7 % 3);"
        );
        assert_eq!(
            javascript("What is logged?\n```js\nconsole.log(1)\n```").unwrap(),
            "console.log(1)"
        );
        assert_eq!(
            javascript("What does console.log(typeof null) print?").unwrap(),
            "console.log(typeof null)"
        );
    }

    #[test]
    fn refuses_what_it_cannot_run() {
        assert!(javascript("What does this Python code print?\nprint(1)").is_err());
        assert!(javascript("What does this print?\nx = 3\nprint(x)").is_err());
        assert!(javascript("What is the capital of France?").is_err());
        assert!(javascript(&format!("Run this JavaScript:\n{}", "1;".repeat(MAX_CODE))).is_err());
    }
}
