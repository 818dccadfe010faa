//! A router that picks the first candidate. The tests use it as a
//! component of the wrong world where an expert is expected, and as a
//! router plugin that fails on request: a user message containing `panic`
//! makes it panic, one containing `spin` makes it loop past its deadline.

use tessera_sdk::prelude::*;

struct First;

impl Router for First {
    fn route(req: Request, candidates: Vec<ExpertInfo>) -> Result<Vec<RouteChoice>, Error> {
        let question = req.last_user_message().unwrap_or("");
        if question.contains("panic") {
            panic!("the router stub was asked to panic");
        }
        if question.contains("spin") {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        Ok(candidates
            .into_iter()
            .take(1)
            .map(|c| RouteChoice::new(c.name, 1.0))
            .collect())
    }
}

export_router!(First);
