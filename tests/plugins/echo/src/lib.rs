//! The smallest useful expert: repeats the last user message. The
//! benchmarks use it as the trivial expert; a prompt `calls:N` makes it
//! call the host's `log` N times first (guest-to-host call overhead), and
//! `ask:TEXT` tokenizes TEXT and then asks the model to continue it
//! (replay tests); `adapter:NAME:TEXT` asks through adapter NAME (grant
//! tests). `echo-rebuilt` builds this file with the `rebuilt` cfg:
//! one branch differs, so a replay with it diverges at the second call.

use tessera_sdk::prelude::*;

struct Echo;

impl Expert for Echo {
    fn describe(_manifest: ExpertInfo) -> ExpertInfo {
        // No name: the tests and benches serve this one component under
        // many manifests, and the manifest's name is the expert's name.
        ExpertInfo::new("", "Repeats the last user message.")
    }

    fn handle(req: Request) -> Result<Response, Error> {
        let text = req.require_user_message()?;
        if let Some(n) = text.strip_prefix("calls:") {
            let n: u32 = n
                .parse()
                .map_err(|_| Error::invalid_input("calls:N needs a number"))?;
            for _ in 0..n {
                log::debug("x");
            }
        }
        if let Some(rest) = text.strip_prefix("adapter:") {
            let (adapter, question) = rest.split_once(':').unwrap_or((rest, "hello"));
            let sampling = Sampling::greedy().max_tokens(4);
            let completion =
                model::chat_with_adapter(&[Message::user(question)], &sampling, adapter)?;
            return Ok(Response::new(completion.text));
        }
        if let Some(question) = text.strip_prefix("ask:") {
            let ids = model::tokenize(question)?;
            // The one branch the rebuilt expert takes otherwise.
            let prompt = if cfg!(rebuilt) {
                format!("{question}!")
            } else {
                question.to_string()
            };
            let sampling = Sampling::greedy().max_tokens(8);
            let completion = model::complete(&prompt, &sampling)?;
            return Ok(Response::new(format!(
                "{} tokens: {}",
                ids.len(),
                completion.text
            )));
        }
        Ok(Response::new(text))
    }
}

export_expert!(Echo);
