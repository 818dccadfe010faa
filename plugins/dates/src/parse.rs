//! Reading a calendar question: its dates, amounts and what it asks.

use chrono::NaiveDate;

/// English month names.
pub const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// What a question asks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Question {
    Weekday(NaiveDate),
    /// From, to, and the unit the answer is wanted in.
    Between(NaiveDate, NaiveDate, Unit),
    Shift(NaiveDate, Amount),
    LeapYear(i32),
    DaysInMonth(i32, u32),
    DaysInYear(i32),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Unit {
    Days,
    Weeks,
    Months,
    Years,
}

/// A signed number of units ("3 weeks before" is -3 weeks).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Amount {
    pub count: i64,
    pub unit: Unit,
}

impl Amount {
    /// "30 days after 2023-12-15".
    pub fn describe(&self, from: NaiveDate) -> String {
        let n = self.count.unsigned_abs();
        let unit = match self.unit {
            Unit::Days => "day",
            Unit::Weeks => "week",
            Unit::Months => "month",
            Unit::Years => "year",
        };
        let plural = if n == 1 { "" } else { "s" };
        let direction = if self.count < 0 { "before" } else { "after" };
        format!("{n} {unit}{plural} {direction} {}", from.format("%Y-%m-%d"))
    }
}

/// Largest amount accepted (about 2,700 years in days).
const MAX_AMOUNT: i64 = 1_000_000;

/// Read `text` as a calendar question, or say why it is not one.
pub fn question(text: &str) -> Result<Question, String> {
    let lower = text.to_lowercase();
    let tokens: Vec<&str> = lower
        .split(|c: char| !(c.is_alphanumeric() || c == '-' || c == '/'))
        .map(|t| t.trim_matches('-'))
        .filter(|t| !t.is_empty())
        .collect();
    let has = |word: &str| tokens.iter().any(|t| t.starts_with(word));
    let (dates, used, month_year) = find_dates(&tokens)?;

    if has("leap") {
        let year = dates
            .first()
            .map(chrono::Datelike::year)
            .or_else(|| month_year.map(|(y, _)| y))
            .or_else(|| tokens.iter().find_map(|t| year(t)))
            .ok_or("which year? Ask like \"Is 2032 a leap year?\"")?;
        return Ok(Question::LeapYear(year));
    }
    match dates.as_slice() {
        [from, to] => {
            let unit = if has("week") { Unit::Weeks } else { Unit::Days };
            Ok(Question::Between(*from, *to, unit))
        }
        [date] => {
            if let Some(amount) = find_amount(&tokens, &used)? {
                return Ok(Question::Shift(*date, amount));
            }
            let asks_weekday = has("weekday")
                || lower.contains("day of the week")
                || lower.contains("what day")
                || lower.contains("which day");
            if asks_weekday {
                return Ok(Question::Weekday(*date));
            }
            Err("not a question about this date that I can answer: ask for its weekday, or a date some days before or after it".into())
        }
        [] => {
            if has("day") {
                if let Some((year, month)) = month_year {
                    return Ok(Question::DaysInMonth(year, month));
                }
                if has("year")
                    && let Some(year) = tokens.iter().find_map(|t| year(t))
                {
                    return Ok(Question::DaysInYear(year));
                }
            }
            Err("no date found: write dates like 2024-03-05 or March 5, 2024".into())
        }
        _ => Err("more than two dates: ask about one date, or the days between two".into()),
    }
}

/// The dates in `tokens` (in order), the indices they used, and a month
/// named with a year but no day ("February 2024").
#[allow(clippy::type_complexity)]
fn find_dates(tokens: &[&str]) -> Result<(Vec<NaiveDate>, Vec<usize>, Option<(i32, u32)>), String> {
    let mut dates = Vec::new();
    let mut used = Vec::new();
    let mut month_year = None;
    let checked = |y: i32, m: u32, d: u32| {
        NaiveDate::from_ymd_opt(y, m, d)
            .ok_or_else(|| format!("{y:04}-{m:02}-{d:02} is not a date in the calendar"))
    };
    for (i, token) in tokens.iter().enumerate() {
        if used.contains(&i) {
            continue;
        }
        if token.contains('/') && token.chars().any(|c| c.is_ascii_digit()) {
            return Err(format!(
                "\"{token}\" could be day-first or month-first: write it as YYYY-MM-DD (2024-03-05) or with the month's name"
            ));
        }
        let parts: Vec<&str> = token.split('-').collect();
        if let [y, m, d] = parts.as_slice() {
            if y.len() == 4
                && [y, m, d].iter().all(|p| is_digits(p))
                && m.len() <= 2
                && d.len() <= 2
            {
                dates.push(checked(
                    y.parse().unwrap(),
                    m.parse().unwrap(),
                    d.parse().unwrap(),
                )?);
                used.push(i);
            }
            continue;
        }
        let Some(month) = month(token) else { continue };
        // Month D(th), YYYY
        if let (Some(d), Some(y)) = (
            tokens.get(i + 1).and_then(|t| day(t)),
            tokens.get(i + 2).and_then(|t| year(t)),
        ) {
            dates.push(checked(y, month, d)?);
            used.extend([i, i + 1, i + 2]);
            continue;
        }
        // D(th) [of] Month YYYY
        let before = match (i.checked_sub(1), i.checked_sub(2)) {
            (Some(j), _) if tokens[j] != "of" => Some(j),
            (Some(_), Some(k)) => Some(k),
            _ => None,
        };
        if let (Some(j), Some(y)) = (before, tokens.get(i + 1).and_then(|t| year(t)))
            && let Some(d) = day(tokens[j]).filter(|_| !used.contains(&j))
        {
            dates.push(checked(y, month, d)?);
            used.extend([j, i, i + 1]);
            continue;
        }
        // Month YYYY
        if let Some(y) = tokens.get(i + 1).and_then(|t| year(t)) {
            month_year = Some((y, month));
            used.extend([i, i + 1]);
        }
    }
    Ok((dates, used, month_year))
}

/// "30 days after", "two weeks before", "3 months later", "add 10 days".
fn find_amount(tokens: &[&str], used: &[usize]) -> Result<Option<Amount>, String> {
    for (i, pair) in tokens.windows(2).enumerate() {
        if used.contains(&i) || used.contains(&(i + 1)) {
            continue;
        }
        let Some(count) = count(pair[0]) else {
            continue;
        };
        let unit = match pair[1].trim_end_matches('s') {
            "day" => Unit::Days,
            "week" => Unit::Weeks,
            "month" => Unit::Months,
            "year" => Unit::Years,
            _ => continue,
        };
        if count > MAX_AMOUNT {
            return Err(format!("{count} is too many: at most {MAX_AMOUNT}"));
        }
        let backwards = tokens.iter().any(|t| {
            matches!(
                *t,
                "before" | "earlier" | "ago" | "prior" | "subtract" | "minus" | "back"
            )
        });
        let forwards = tokens.iter().any(|t| {
            matches!(
                *t,
                "after" | "later" | "from" | "add" | "plus" | "since" | "past" | "forward"
            )
        });
        if !(backwards || forwards) {
            return Err(
                "before or after the date? Ask like \"What date is 30 days after 2024-01-15?\""
                    .into(),
            );
        }
        let count = if backwards { -count } else { count };
        return Ok(Some(Amount { count, unit }));
    }
    Ok(None)
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_digit())
}

fn month(token: &str) -> Option<u32> {
    let token = if token == "sept" { "sep" } else { token };
    MONTHS
        .iter()
        .position(|m| {
            let m = m.to_lowercase();
            m == token || (token.len() == 3 && m.starts_with(token))
        })
        .map(|i| i as u32 + 1)
}

fn day(token: &str) -> Option<u32> {
    let digits = token.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = &token[digits.len()..];
    (is_digits(digits) && digits.len() <= 2 && matches!(suffix, "" | "st" | "nd" | "rd" | "th"))
        .then(|| digits.parse().ok())
        .flatten()
        .filter(|d| (1..=31).contains(d))
}

fn year(token: &str) -> Option<i32> {
    (is_digits(token) && token.len() == 4)
        .then(|| token.parse().ok())
        .flatten()
}

fn count(token: &str) -> Option<i64> {
    if is_digits(token) && token.len() <= 9 {
        return token.parse().ok();
    }
    let words = [
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
        "eleven", "twelve",
    ];
    if token == "a" || token == "an" {
        return Some(1);
    }
    words.iter().position(|w| *w == token).map(|n| n as i64)
}
