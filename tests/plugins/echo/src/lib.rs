//! The smallest useful expert: repeats the last user message. The
//! benchmarks use it as the trivial expert; a prompt `calls:N` makes it
//! call the host's `log` N times first (guest-to-host call overhead).

use tessera_sdk::prelude::*;

struct Echo;

impl Expert for Echo {
    fn describe() -> ExpertInfo {
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
        Ok(Response::new(text))
    }
}

export_expert!(Echo);
