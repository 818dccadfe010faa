//! Unit converter: reads "5 km to miles", "how many feet in 3 meters" or
//! "100 F in C", converts exactly with a table of units, and answers
//! without the model (confidence 1). Units of different kinds are refused
//! with the kinds named.

mod units;

use tessera_sdk::prelude::*;

struct UnitConverter;

impl Expert for UnitConverter {
    fn handle(req: Request) -> Result<Response, Error> {
        let question = req.require_user_message()?;
        let query = units::parse(question).map_err(Error::invalid_input)?;
        let value = units::convert(&query).map_err(Error::invalid_input)?;
        let shown = units::format_number(value);
        log::with_fields(
            log::Level::Info,
            "converted",
            &[
                ("from", &format!("{} {}", query.amount, query.from.symbol)),
                ("to", query.to.symbol),
                ("result", &shown),
            ],
        );
        Ok(Response::new(format!(
            "{} {} = {} {}",
            units::format_number(query.amount),
            query.from.symbol,
            shown,
            query.to.symbol
        ))
        .with_confidence(1.0)
        .with_metadata("result", shown)
        .with_metadata("unit", query.to.symbol))
    }
}

export_expert!(UnitConverter);
