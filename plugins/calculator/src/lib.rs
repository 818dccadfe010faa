//! Calculator: finds the arithmetic in a question, evaluates it exactly
//! with rational numbers inside the sandbox, and asks the model only to word
//! the answer. If the model is unavailable, or its wording drops the exact
//! result, the plain result is returned: the number is never the model's.

mod expr;

use tessera_sdk::prelude::*;

use expr::{evaluate, extract_expression};

struct Calculator;

impl Expert for Calculator {
    fn handle(req: Request) -> Result<Response, Error> {
        let question = req.require_user_message()?;
        let Some(expression) = extract_expression(question) else {
            return Err(Error::invalid_input(
                "no arithmetic found: ask something like \"What is 12 * (3 + 4)?\"",
            ));
        };
        let value = evaluate(&expression)
            .map_err(|e| Error::invalid_input(format!("{expression}: {e}")))?;
        let result = value.to_string();
        let plain = format!("{expression} = {result}");
        log::with_fields(
            log::Level::Info,
            "evaluated",
            &[("expression", &expression), ("result", &result)],
        );

        let wording = model::chat(
            &[
                Message::system(
                    "You state calculation results. Reply with one short sentence that gives the result exactly as written. Do not recompute.",
                ),
                Message::user(format!("Question: {question}\nResult: {plain}")),
            ],
            &Sampling::greedy().max_tokens(64),
        );
        let (content, usage) = match wording {
            Ok(c) if c.text.contains(&result) => (c.text.trim().to_string(), c.usage),
            Ok(c) => {
                log::warn("the model's wording dropped the exact result; answering plainly");
                (plain, c.usage)
            }
            Err(e) => {
                log::warn(&format!(
                    "no wording from the model ({}); answering plainly",
                    e.message()
                ));
                (plain, Usage::default())
            }
        };
        Ok(Response::new(content)
            .with_usage(usage)
            .with_confidence(1.0)
            .with_metadata("expression", expression)
            .with_metadata("result", result))
    }
}

export_expert!(Calculator);
