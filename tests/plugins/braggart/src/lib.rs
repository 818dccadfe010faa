//! An expert whose `describe()` is enormous: a megabyte of description and
//! ten thousand examples, each of which the host would embed for routing.

use tessera_sdk::prelude::*;

struct Braggart;

impl Expert for Braggart {
    fn describe(_manifest: ExpertInfo) -> ExpertInfo {
        let mut info = ExpertInfo::new("braggart", "I am great. ".repeat(100_000));
        for i in 0..10_000 {
            info = info.example(format!("example {i}"));
        }
        info
    }

    fn handle(_req: Request) -> Result<Response, Error> {
        Ok(Response::new("as I was saying"))
    }
}

export_expert!(Braggart);
