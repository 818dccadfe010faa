//! The unit table, the question parser and the conversion.

/// What a unit measures; only units of one kind convert into each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Length,
    Mass,
    Volume,
    Temperature,
    Time,
    Speed,
    Area,
    Storage,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Length => "length",
            Kind::Mass => "mass",
            Kind::Volume => "volume",
            Kind::Temperature => "temperature",
            Kind::Time => "time",
            Kind::Speed => "speed",
            Kind::Area => "area",
            Kind::Storage => "digital storage",
        }
    }
}

/// A unit: `value_in_base = value * factor + offset`.
#[derive(Debug, PartialEq)]
pub struct Unit {
    pub symbol: &'static str,
    pub kind: Kind,
    factor: f64,
    offset: f64,
    names: &'static [&'static str],
}

const fn unit(
    symbol: &'static str,
    kind: Kind,
    factor: f64,
    names: &'static [&'static str],
) -> Unit {
    Unit {
        symbol,
        kind,
        factor,
        offset: 0.0,
        names,
    }
}

use Kind::*;

/// Base units: metre, kilogram, litre, kelvin, second, metre per second,
/// square metre, byte. Longer names come first where one is a prefix of
/// another, since matching takes the first name that fits.
static UNITS: &[Unit] = &[
    unit(
        "km/h",
        Speed,
        1000.0 / 3600.0,
        &[
            "km/h",
            "kmh",
            "kph",
            "kilometers per hour",
            "kilometres per hour",
        ],
    ),
    unit(
        "mph",
        Speed,
        0.44704,
        &["mph", "miles per hour", "mile per hour"],
    ),
    unit(
        "m/s",
        Speed,
        1.0,
        &["m/s", "meters per second", "metres per second"],
    ),
    unit("knots", Speed, 1852.0 / 3600.0, &["knots", "knot", "kn"]),
    unit(
        "km²",
        Area,
        1e6,
        &[
            "square kilometers",
            "square kilometres",
            "square kilometer",
            "square kilometre",
            "km2",
            "km²",
            "sq km",
        ],
    ),
    unit(
        "m²",
        Area,
        1.0,
        &[
            "square meters",
            "square metres",
            "square meter",
            "square metre",
            "m2",
            "m²",
            "sq m",
        ],
    ),
    unit(
        "ft²",
        Area,
        0.09290304,
        &["square feet", "square foot", "ft2", "ft²", "sq ft"],
    ),
    unit("acres", Area, 4046.8564224, &["acres", "acre"]),
    unit("hectares", Area, 10_000.0, &["hectares", "hectare", "ha"]),
    unit(
        "km",
        Length,
        1000.0,
        &["kilometers", "kilometres", "kilometer", "kilometre", "km"],
    ),
    unit(
        "cm",
        Length,
        0.01,
        &[
            "centimeters",
            "centimetres",
            "centimeter",
            "centimetre",
            "cm",
        ],
    ),
    unit(
        "mm",
        Length,
        0.001,
        &[
            "millimeters",
            "millimetres",
            "millimeter",
            "millimetre",
            "mm",
        ],
    ),
    unit(
        "m",
        Length,
        1.0,
        &["meters", "metres", "meter", "metre", "m"],
    ),
    unit("miles", Length, 1609.344, &["miles", "mile", "mi"]),
    unit("yards", Length, 0.9144, &["yards", "yard", "yd"]),
    unit("feet", Length, 0.3048, &["feet", "foot", "ft"]),
    unit("inches", Length, 0.0254, &["inches", "inch", "in"]),
    unit("mg", Mass, 1e-6, &["milligrams", "milligram", "mg"]),
    unit(
        "kg",
        Mass,
        1.0,
        &["kilograms", "kilogram", "kilos", "kilo", "kg"],
    ),
    unit("g", Mass, 0.001, &["grams", "gram", "g"]),
    unit(
        "tonnes",
        Mass,
        1000.0,
        &["tonnes", "tonne", "metric tons", "t"],
    ),
    unit(
        "pounds",
        Mass,
        0.45359237,
        &["pounds", "pound", "lbs", "lb"],
    ),
    unit("ounces", Mass, 0.028349523125, &["ounces", "ounce", "oz"]),
    unit("stone", Mass, 6.35029318, &["stones", "stone", "st"]),
    unit(
        "ml",
        Volume,
        0.001,
        &[
            "milliliters",
            "millilitres",
            "milliliter",
            "millilitre",
            "ml",
        ],
    ),
    unit(
        "l",
        Volume,
        1.0,
        &["liters", "litres", "liter", "litre", "l"],
    ),
    unit(
        "gallons",
        Volume,
        3.785411784,
        &["gallons", "gallon", "gal"],
    ),
    unit("cups", Volume, 0.2365882365, &["cups", "cup"]),
    unit("pints", Volume, 0.473176473, &["pints", "pint", "pt"]),
    unit(
        "fl oz",
        Volume,
        0.0295735295625,
        &["fluid ounces", "fluid ounce", "fl oz"],
    ),
    Unit {
        symbol: "°C",
        kind: Temperature,
        factor: 1.0,
        offset: 273.15,
        names: &["degrees celsius", "degree celsius", "celsius", "°c", "c"],
    },
    Unit {
        symbol: "°F",
        kind: Temperature,
        factor: 5.0 / 9.0,
        offset: 459.67 * 5.0 / 9.0,
        names: &[
            "degrees fahrenheit",
            "degree fahrenheit",
            "fahrenheit",
            "°f",
            "f",
        ],
    },
    unit("K", Temperature, 1.0, &["kelvins", "kelvin", "k"]),
    unit("ms", Time, 0.001, &["milliseconds", "millisecond", "ms"]),
    unit("s", Time, 1.0, &["seconds", "second", "secs", "sec", "s"]),
    unit("min", Time, 60.0, &["minutes", "minute", "mins", "min"]),
    unit("h", Time, 3600.0, &["hours", "hour", "hrs", "hr", "h"]),
    unit("days", Time, 86_400.0, &["days", "day", "d"]),
    unit("weeks", Time, 604_800.0, &["weeks", "week", "wk"]),
    unit("years", Time, 31_557_600.0, &["years", "year", "yr"]),
    unit("TB", Storage, 1e12, &["terabytes", "terabyte", "tb"]),
    unit("GB", Storage, 1e9, &["gigabytes", "gigabyte", "gb"]),
    unit("MB", Storage, 1e6, &["megabytes", "megabyte", "mb"]),
    unit("KB", Storage, 1e3, &["kilobytes", "kilobyte", "kb"]),
    unit(
        "GiB",
        Storage,
        1_073_741_824.0,
        &["gibibytes", "gibibyte", "gib"],
    ),
    unit(
        "MiB",
        Storage,
        1_048_576.0,
        &["mebibytes", "mebibyte", "mib"],
    ),
    unit("bytes", Storage, 1.0, &["bytes", "byte"]),
];

/// A conversion asked for.
#[derive(Debug)]
pub struct Query {
    pub amount: f64,
    pub from: &'static Unit,
    pub to: &'static Unit,
}

/// The unit named at the start of `text` (after spaces), and the rest.
fn unit_at(text: &str) -> Option<(&'static Unit, &str)> {
    let text = text.trim_start();
    let lower = text.to_lowercase();
    // Try every name; keep the longest that ends at a word boundary.
    let mut best: Option<(&'static Unit, usize)> = None;
    for unit in UNITS {
        for name in unit.names {
            if lower.starts_with(name) {
                let end = name.len();
                let boundary = lower[end..]
                    .chars()
                    .next()
                    .is_none_or(|c| !c.is_alphanumeric());
                if boundary && best.is_none_or(|(_, len)| end > len) {
                    best = Some((unit, end));
                }
            }
        }
    }
    best.map(|(unit, len)| (unit, &text[len..]))
}

/// Every unit named anywhere in `text`, with its byte offset.
fn units_in(text: &str) -> Vec<(usize, &'static Unit)> {
    let mut found = Vec::new();
    let mut at = 0;
    while at < text.len() {
        let before_ok = at == 0
            || !text[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric());
        if before_ok && let Some((unit, rest)) = unit_at(&text[at..]) {
            found.push((at, unit));
            at = text.len() - rest.len();
            continue;
        }
        at += text[at..].chars().next().map_or(1, char::len_utf8);
    }
    found
}

/// The first number in `text` ("2.5", "-40", "1,000", "a" for 1), its
/// byte range.
fn number_in(text: &str) -> Option<(f64, usize, usize)> {
    let bytes = text.as_bytes();
    for (start, c) in text.char_indices() {
        let negative = c == '-' && bytes.get(start + 1).is_some_and(u8::is_ascii_digit);
        if !(c.is_ascii_digit() || negative) {
            continue;
        }
        if start > 0 && bytes[start - 1].is_ascii_alphabetic() {
            continue;
        }
        let mut end = start + 1;
        while end < bytes.len()
            && (bytes[end].is_ascii_digit()
                || (matches!(bytes[end], b'.' | b',')
                    && bytes.get(end + 1).is_some_and(u8::is_ascii_digit)))
        {
            end += 1;
        }
        let value: f64 = text[start..end].replace(',', "").parse().ok()?;
        return Some((value, start, end));
    }
    None
}

/// Read a conversion from a question.
pub fn parse(question: &str) -> Result<Query, String> {
    let text = question.trim().trim_end_matches(['?', '.', '!']);
    let lower = text.to_lowercase();
    let found = units_in(text);
    let number = number_in(text);
    // "how many X in/are in N Y": the target comes first.
    if let Some(rest) = lower.strip_prefix("how many ") {
        let offset = text.len() - rest.len();
        let to = found.iter().find(|(at, _)| *at >= offset).map(|(_, u)| *u);
        let (amount, after) = match number {
            Some((v, _, end)) => (v, end),
            // "how many ounces in a pound"
            None => (1.0, offset),
        };
        let from = found
            .iter()
            .rev()
            .find(|(at, _)| *at >= after)
            .map(|(_, u)| *u);
        if let (Some(to), Some(from)) = (to, from)
            && !std::ptr::eq(to, from)
        {
            return Ok(Query { amount, from, to });
        }
    }
    let Some((amount, _, end)) = number else {
        return Err(format!(
            "no quantity found in \"{question}\": ask like \"convert 5 km to miles\" or \"how many feet in 3 m\""
        ));
    };
    let after: Vec<&'static Unit> = found
        .iter()
        .filter(|(at, _)| *at >= end)
        .map(|(_, u)| *u)
        .collect();
    match after.as_slice() {
        [from, .., to] => Ok(Query { amount, from, to }),
        _ => Err(format!(
            "need a unit after the number and a unit to convert to in \"{question}\", e.g. \"5 km to miles\""
        )),
    }
}

/// Convert, or say why the units do not fit together.
pub fn convert(query: &Query) -> Result<f64, String> {
    let (from, to) = (query.from, query.to);
    if from.kind != to.kind {
        return Err(format!(
            "cannot convert {} ({}) to {} ({})",
            from.symbol,
            from.kind.name(),
            to.symbol,
            to.kind.name()
        ));
    }
    let base = query.amount * from.factor + from.offset;
    Ok((base - to.offset) / to.factor)
}

/// Six significant digits (at most six decimals), without trailing zeros.
pub fn format_number(value: f64) -> String {
    let digits = if value.abs() >= 1.0 {
        (5 - value.abs().log10().floor() as i32).clamp(0, 6)
    } else {
        6
    } as usize;
    let text = format!("{value:.digits$}");
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    };
    if text == "-0" { "0".into() } else { text }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(q: &str) -> String {
        let query = parse(q).unwrap_or_else(|e| panic!("{q}: {e}"));
        format!(
            "{} {}",
            format_number(convert(&query).unwrap()),
            query.to.symbol
        )
    }

    #[test]
    fn common_questions_convert() {
        assert_eq!(answer("Convert 5 kilometres to miles"), "3.10686 miles");
        assert_eq!(answer("How many feet are in 3 meters?"), "9.84252 feet");
        assert_eq!(
            answer("What is 100 degrees Fahrenheit in Celsius?"),
            "37.7778 °C"
        );
        assert_eq!(answer("2.5 kg in pounds"), "5.51156 pounds");
        assert_eq!(answer("How many ounces in a pound?"), "16 ounces");
        assert_eq!(answer("Convert 60 mph to km/h"), "96.5606 km/h");
        assert_eq!(answer("how many seconds are in a day"), "86400 s");
        assert_eq!(answer("-40 C to F"), "-40 °F");
        assert_eq!(answer("Convert 2 GB to MB"), "2000 MB");
        assert_eq!(answer("1,000 m in km"), "1 km");
        assert_eq!(answer("20 square meters in square feet"), "215.278 ft²");
    }

    #[test]
    fn mismatched_or_missing_units_are_explained() {
        let q = parse("5 kg to miles").unwrap();
        assert!(convert(&q).unwrap_err().contains("mass"));
        assert!(
            parse("convert five to something")
                .unwrap_err()
                .contains("no quantity")
        );
        assert!(parse("what is 12 * 4").unwrap_err().contains("need a unit"));
    }

    #[test]
    fn numbers_are_shown_briefly() {
        assert_eq!(format_number(3.0), "3");
        assert_eq!(format_number(0.000123456789), "0.000123");
        assert_eq!(format_number(1234567.891), "1234568");
    }
}
