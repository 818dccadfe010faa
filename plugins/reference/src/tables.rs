//! The published tables, compiled into the component (`make_tables.py`
//! writes them from `periodictable`, `countryinfo` and `pycountry`).

/// Number, symbol and name of the 118 elements.
const ELEMENTS: &str = include_str!("../data/elements.tsv");

/// Name, other names, capital, languages and currencies of each country.
const COUNTRIES: &str = include_str!("../data/countries.tsv");

/// British spellings of element names, which the table spells the
/// American way.
const ELEMENT_ALIASES: [(&str, &str); 3] = [
    ("aluminium", "aluminum"),
    ("caesium", "cesium"),
    ("sulphur", "sulfur"),
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub number: u32,
    pub symbol: &'static str,
    /// Lower case, as in the table ("potassium").
    pub name: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Country {
    pub name: &'static str,
    pub other_names: Vec<&'static str>,
    pub capital: &'static str,
    pub languages: Vec<&'static str>,
    pub currencies: Vec<&'static str>,
}

/// The rows of a table: tab-separated fields, `#` lines skipped.
fn rows(table: &'static str) -> impl Iterator<Item = Vec<&'static str>> {
    table
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.split('\t').map(str::trim).collect())
}

fn list(field: Option<&&'static str>) -> Vec<&'static str> {
    field
        .map(|f| f.split(';').filter(|s| !s.is_empty()).collect())
        .unwrap_or_default()
}

pub fn elements() -> impl Iterator<Item = Element> {
    rows(ELEMENTS).filter_map(|r| {
        Some(Element {
            number: r.first()?.parse().ok()?,
            symbol: r.get(1)?,
            name: r.get(2)?,
        })
    })
}

pub fn countries() -> impl Iterator<Item = Country> {
    rows(COUNTRIES).filter_map(|r| {
        Some(Country {
            name: r.first()?,
            other_names: list(r.get(1)),
            capital: r.get(2).filter(|c| !c.is_empty())?,
            languages: list(r.get(3)),
            currencies: list(r.get(4)),
        })
    })
}

/// Where `needle` (lower case) occurs in `haystack` (lower case) as whole
/// words.
pub fn find_words(haystack: &str, needle: &str) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    let boundary = |c: Option<char>| c.is_none_or(|c| !c.is_alphanumeric());
    haystack.match_indices(needle).map(|(i, _)| i).find(|&i| {
        boundary(haystack[..i].chars().next_back())
            && boundary(haystack[i + needle.len()..].chars().next())
    })
}

/// The element whose name (or British spelling) `lower` mentions; the
/// longest name wins.
pub fn element_named(lower: &str) -> Option<Element> {
    let canonical = |name: &str| {
        ELEMENT_ALIASES
            .iter()
            .find(|(alias, _)| *alias == name)
            .map_or(name.to_string(), |(_, n)| n.to_string())
    };
    let mut names: Vec<String> = elements().map(|e| e.name.to_string()).collect();
    names.extend(ELEMENT_ALIASES.iter().map(|(alias, _)| alias.to_string()));
    let found = names
        .iter()
        .filter(|n| find_words(lower, n).is_some())
        .max_by_key(|n| n.len())?;
    let name = canonical(found);
    elements().find(|e| e.name == name)
}

/// The country `lower` mentions by any of its names; the longest name
/// wins ("Dominican Republic" over "Dominica").
pub fn country_named(lower: &str) -> Option<Country> {
    countries()
        .filter_map(|c| {
            let longest = std::iter::once(c.name)
                .chain(c.other_names.iter().copied())
                .map(str::to_lowercase)
                .filter(|n| find_words(lower, n).is_some())
                .map(|n| n.len())
                .max()?;
            Some((longest, c))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, c)| c)
}

/// The country whose capital `lower` mentions; the longest name wins.
pub fn country_with_capital(lower: &str) -> Option<Country> {
    countries()
        .filter(|c| find_words(lower, &c.capital.to_lowercase()).is_some())
        .max_by_key(|c| c.capital.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tables_are_complete() {
        assert_eq!(elements().count(), 118);
        let numbers: Vec<u32> = elements().map(|e| e.number).collect();
        assert_eq!(numbers, (1..=118).collect::<Vec<_>>());
        assert!(countries().count() >= 190);
        assert!(countries().all(|c| !c.capital.is_empty()));
    }

    #[test]
    fn names_are_found_as_whole_words() {
        assert_eq!(find_words("is tin a metal", "tin"), Some(3));
        assert_eq!(find_words("a tiny metal", "tin"), None);
        assert_eq!(find_words("the dominican republic", "dominica"), None);
        assert_eq!(
            country_named("what is the capital of the dominican republic?").map(|c| c.name),
            Some("Dominican Republic")
        );
        assert_eq!(
            element_named("the symbol of aluminium").map(|e| e.symbol),
            Some("Al")
        );
        assert_eq!(
            country_named("people in the usa").map(|c| c.name),
            Some("United States")
        );
    }
}
