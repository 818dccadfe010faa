use tessera_sdk::prelude::*;

struct Echo;

impl Expert for Echo {
    fn describe() -> ExpertInfo {
        ExpertInfo::new("echo", "Repeats the last user message.")
    }

    fn handle(req: Request) -> Result<Response, Error> {
        Ok(Response::new(req.require_user_message()?))
    }
}

export_expert!(Echo);
