//! Dates: calendar questions answered exactly inside the sandbox, with no
//! model call. A 135M model cannot tell which weekday 2021-09-11 was or
//! count the days between two dates; the proleptic Gregorian calendar
//! (chrono) can.
//!
//! Understood: the weekday of a date; the days (or weeks) between two
//! dates; the date some days, weeks, months or years before or after a
//! date; whether a year is a leap year; how many days a month or year has.
//! Dates are ISO (`2024-03-05`), `March 5, 2024`, `5 March 2024` or
//! `05/03/2024`-free: slashed dates are ambiguous (day or month first), so
//! they are refused with a hint instead of guessed.
//! A question it does not understand is refused with `invalid-input`, so
//! that `tessera/auto` falls back to the next candidate.

mod parse;

use chrono::{Datelike, Months, NaiveDate, Weekday};
use tessera_sdk::prelude::*;

use parse::{Amount, Question, Unit};

struct Dates;

impl Expert for Dates {
    fn handle(req: Request) -> Result<Response, Error> {
        let question = req.require_user_message()?;
        let parsed = parse::question(question).map_err(Error::invalid_input)?;
        let answer = answer(&parsed).map_err(Error::invalid_input)?;
        log::with_fields(
            log::Level::Info,
            "answered",
            &[("question", &format!("{parsed:?}")), ("answer", &answer)],
        );
        Ok(Response::new(answer)
            .with_confidence(1.0)
            .with_metadata("question", format!("{parsed:?}")))
    }
}

/// The answer to a parsed question, as one sentence.
pub fn answer(question: &Question) -> Result<String, String> {
    Ok(match *question {
        Question::Weekday(date) => {
            format!("{} is a {}.", iso(date), weekday_name(date.weekday()))
        }
        Question::Between(from, to, unit) => {
            let days = (to - from).num_days().abs();
            match unit {
                Unit::Weeks if days % 7 == 0 => format!(
                    "There are {} weeks from {} to {}.",
                    days / 7,
                    iso(from),
                    iso(to)
                ),
                Unit::Weeks => format!(
                    "There are {} weeks and {} days ({days} days) from {} to {}.",
                    days / 7,
                    days % 7,
                    iso(from),
                    iso(to)
                ),
                _ => format!("There are {days} days from {} to {}.", iso(from), iso(to)),
            }
        }
        Question::Shift(date, amount) => {
            let moved = shift(date, amount)
                .ok_or_else(|| "that date is outside the calendar chrono can count".to_string())?;
            format!(
                "{} is {} ({}, {} {}, {}).",
                amount.describe(date),
                iso(moved),
                weekday_name(moved.weekday()),
                month_name(moved.month()),
                moved.day(),
                moved.year()
            )
        }
        Question::LeapYear(year) => {
            if is_leap(year) {
                format!("Yes, {year} is a leap year (it has 366 days).")
            } else {
                format!("No, {year} is not a leap year (it has 365 days).")
            }
        }
        Question::DaysInMonth(year, month) => {
            let first = NaiveDate::from_ymd_opt(year, month, 1).ok_or("no such month")?;
            let next = first
                .checked_add_months(Months::new(1))
                .ok_or("no such month")?;
            format!(
                "{} {year} has {} days.",
                month_name(month),
                (next - first).num_days()
            )
        }
        Question::DaysInYear(year) => {
            format!("{year} has {} days.", if is_leap(year) { 366 } else { 365 })
        }
    })
}

fn shift(date: NaiveDate, amount: Amount) -> Option<NaiveDate> {
    let n = amount.count;
    match amount.unit {
        Unit::Days => date.checked_add_signed(chrono::TimeDelta::try_days(n)?),
        Unit::Weeks => date.checked_add_signed(chrono::TimeDelta::try_weeks(n)?),
        Unit::Months if n >= 0 => date.checked_add_months(Months::new(u32::try_from(n).ok()?)),
        Unit::Months => date.checked_sub_months(Months::new(u32::try_from(-n).ok()?)),
        Unit::Years if n >= 0 => {
            date.checked_add_months(Months::new(u32::try_from(n.checked_mul(12)?).ok()?))
        }
        Unit::Years => {
            date.checked_sub_months(Months::new(u32::try_from(n.checked_mul(-12)?).ok()?))
        }
    }
}

fn is_leap(year: i32) -> bool {
    NaiveDate::from_ymd_opt(year, 2, 29).is_some()
}

fn iso(date: NaiveDate) -> String {
    date.format("%Y-%m-%d").to_string()
}

fn weekday_name(day: Weekday) -> &'static str {
    match day {
        Weekday::Mon => "Monday",
        Weekday::Tue => "Tuesday",
        Weekday::Wed => "Wednesday",
        Weekday::Thu => "Thursday",
        Weekday::Fri => "Friday",
        Weekday::Sat => "Saturday",
        Weekday::Sun => "Sunday",
    }
}

/// English month name, 1-based.
pub fn month_name(month: u32) -> &'static str {
    parse::MONTHS[(month as usize - 1) % 12]
}

export_expert!(Dates);

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(q: &str) -> String {
        answer(&parse::question(q).unwrap_or_else(|e| panic!("{q}: {e}"))).unwrap()
    }

    // Expected values from Python's datetime and calendar modules (an
    // independent reference), e.g. date(1969, 7, 20).strftime("%A").
    #[test]
    fn weekdays() {
        assert_eq!(
            ask("Which weekday was 1969-07-20?"),
            "1969-07-20 is a Sunday."
        );
        assert!(ask("What day of the week is July 4, 1776?").contains("Thursday"));
        assert!(ask("Name the weekday of 1976-07-04.").contains("Sunday"));
    }

    #[test]
    fn days_between() {
        assert!(ask("Count the days from 2016-02-01 to 2016-03-01.").contains("29 days"));
        assert!(ask("Count the days from March 1, 2023 to March 1, 2024.").contains("366 days"));
        assert!(ask("How many weeks from 2024-01-01 to 2024-02-05?").contains("5 weeks"));
    }

    #[test]
    fn shifts() {
        assert!(ask("What date is 30 days after 2023-12-15?").contains("2024-01-14"));
        assert!(ask("Which date is 10 days before 2024-03-05?").contains("2024-02-24"));
        assert!(ask("What is the date 2 weeks after 2024-02-20?").contains("2024-03-05"));
        assert!(ask("What date is one month after 2024-01-31?").contains("2024-02-29"));
        assert!(ask("Add 100 days to 2025-01-01.").contains("2025-04-11"));
    }

    #[test]
    fn leap_years_and_lengths() {
        assert!(ask("Was 1900 a leap year?").starts_with("No"));
        assert!(ask("Is 1600 a leap year?").starts_with("Yes"));
        assert!(ask("Is 2028 a leap year?").starts_with("Yes"));
        assert!(ask("How many days are in February 2023?").contains("28 days"));
        assert!(ask("How many days does February 2024 have?").contains("29 days"));
        assert!(ask("How many days are in the year 2100?").contains("365 days"));
    }

    #[test]
    fn what_it_does_not_understand_is_refused() {
        for q in [
            "What is the capital of France?",
            "Which weekday was 2023-02-30?",
            "How many days between 03/04/2024 and 2024-05-01?",
            "Tell me about 2024-01-01.",
        ] {
            assert!(parse::question(q).is_err(), "{q}");
        }
    }
}
