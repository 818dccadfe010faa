//! A router that picks the first candidate: the tests use it as a
//! component of the wrong world where an expert is expected.

use tessera_sdk::prelude::*;

struct First;

impl Router for First {
    fn route(_req: Request, candidates: Vec<ExpertInfo>) -> Result<Vec<RouteChoice>, Error> {
        Ok(candidates
            .into_iter()
            .take(1)
            .map(|c| RouteChoice::new(c.name, 1.0))
            .collect())
    }
}

export_router!(First);
