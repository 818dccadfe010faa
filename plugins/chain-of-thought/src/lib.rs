//! Chain of thought: the model first writes a short plan, then answers the
//! question with the plan in front of it. The plan is logged and returned as
//! metadata, so a validator can see how the answer was reached.

use tessera_sdk::prelude::*;

/// Tokens for the plan.
const PLAN_TOKENS: u32 = 256;
/// Tokens for the answer.
const ANSWER_TOKENS: u32 = 384;

struct ChainOfThought;

impl Expert for ChainOfThought {
    fn handle(req: Request) -> Result<Response, Error> {
        let question = req.require_user_message()?;
        let base = req.sampling.clone();

        let plan = model::chat(
            &[
                Message::system(
                    "Think before answering. Write a short numbered plan (at most 5 steps) for answering the question. Do not give the final answer yet.",
                ),
                Message::user(question),
            ],
            &base.clone().max_tokens(PLAN_TOKENS),
        )?;
        log::with_fields(log::Level::Info, "plan", &[("plan", &plan.text)]);

        let answer = model::chat(
            &[
                Message::system(
                    "Answer the question by following the plan. Show the key steps briefly, then give the final answer on its own last line.",
                ),
                Message::user(format!(
                    "Question: {question}\n\nPlan:\n{}",
                    plan.text.trim()
                )),
            ],
            &base.max_tokens(ANSWER_TOKENS),
        )?;

        let mut usage = plan.usage;
        usage += answer.usage;
        let confidence = answer.mean_probability();
        let mut response = Response::new(answer.text.trim())
            .with_usage(usage)
            .with_metadata("plan", plan.text.trim());
        response.confidence = confidence;
        Ok(response)
    }
}

export_expert!(ChainOfThought);
