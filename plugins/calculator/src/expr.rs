//! Exact arithmetic on rationals: `+ - * / ^`, parentheses, unary minus,
//! decimals, and a few words ("plus", "times", "divided by").

use std::fmt;

/// A reduced fraction with a positive denominator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rational {
    num: i128,
    den: i128,
}

fn gcd(mut a: i128, mut b: i128) -> i128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.abs()
}

const OVERFLOW: &str = "the numbers get too large to compute exactly";

impl Rational {
    fn new(num: i128, den: i128) -> Result<Rational, String> {
        if den == 0 {
            return Err("division by zero".into());
        }
        let g = gcd(num, den).max(1);
        let sign = if den < 0 { -1 } else { 1 };
        Ok(Rational {
            num: sign * num / g,
            den: sign * den / g,
        })
    }

    fn int(n: i128) -> Rational {
        Rational { num: n, den: 1 }
    }

    fn add(self, o: Rational) -> Result<Rational, String> {
        let num = self
            .num
            .checked_mul(o.den)
            .and_then(|a| o.num.checked_mul(self.den).and_then(|b| a.checked_add(b)))
            .ok_or(OVERFLOW)?;
        Rational::new(num, self.den.checked_mul(o.den).ok_or(OVERFLOW)?)
    }

    fn neg(self) -> Rational {
        Rational {
            num: -self.num,
            den: self.den,
        }
    }

    fn mul(self, o: Rational) -> Result<Rational, String> {
        Rational::new(
            self.num.checked_mul(o.num).ok_or(OVERFLOW)?,
            self.den.checked_mul(o.den).ok_or(OVERFLOW)?,
        )
    }

    fn div(self, o: Rational) -> Result<Rational, String> {
        if o.num == 0 {
            return Err("division by zero".into());
        }
        self.mul(Rational::new(o.den, o.num)?)
    }

    fn pow(self, e: Rational) -> Result<Rational, String> {
        if e.den != 1 {
            return Err("only whole-number exponents are computed exactly".into());
        }
        let base = if e.num < 0 {
            Rational::int(1).div(self)?
        } else {
            self
        };
        let exp = u32::try_from(e.num.unsigned_abs()).map_err(|_| OVERFLOW.to_string())?;
        let mut acc = Rational::int(1);
        for _ in 0..exp {
            acc = acc.mul(base)?;
        }
        Ok(acc)
    }
}

impl fmt::Display for Rational {
    /// Whole numbers as such; exact decimals in full; others as a fraction
    /// with a rounded decimal.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.den == 1 {
            return write!(f, "{}", self.num);
        }
        let mut d = self.den;
        while d % 2 == 0 {
            d /= 2;
        }
        while d % 5 == 0 {
            d /= 5;
        }
        let approx = self.num as f64 / self.den as f64;
        if d == 1 {
            // Terminating decimal: print every digit.
            let mut s = format!("{approx:.12}");
            while s.ends_with('0') {
                s.pop();
            }
            write!(f, "{s}")
        } else {
            write!(f, "{}/{} ≈ {approx:.6}", self.num, self.den)
        }
    }
}

/// The arithmetic inside a question: words become symbols, and the longest
/// run of numbers, operators and parentheses is kept.
pub fn extract_expression(question: &str) -> Option<String> {
    if let Some(expression) = verbal_expression(question) {
        return Some(expression);
    }
    let mut text = format!(" {} ", question.to_lowercase());
    for (word, symbol) in [
        (" plus ", " + "),
        (" minus ", " - "),
        (" times ", " * "),
        (" multiplied by ", " * "),
        (" divided by ", " / "),
        (" over ", " / "),
        (" to the power of ", " ^ "),
        (" squared", " ^ 2"),
        (" cubed", " ^ 3"),
        ("% of ", " / 100 * "),
        (" percent of ", " / 100 * "),
        ("×", "*"),
        ("÷", "/"),
        ("**", "^"),
    ] {
        text = text.replace(word, symbol);
    }
    // "3 x 4" means times when the x stands between numbers.
    let chars: Vec<char> = text.chars().collect();
    let mut cleaned = String::new();
    for (i, &c) in chars.iter().enumerate() {
        let between_numbers = c == 'x'
            && chars[..i]
                .iter()
                .rev()
                .find(|c| !c.is_whitespace())
                .is_some_and(|c| c.is_ascii_digit() || *c == ')')
            && chars[i + 1..]
                .iter()
                .find(|c| !c.is_whitespace())
                .is_some_and(|c| c.is_ascii_digit() || *c == '(');
        cleaned.push(if between_numbers { '*' } else { c });
    }
    let is_math = |c: char| c.is_ascii_digit() || " .+-*/^()".contains(c);
    let best = cleaned
        .split(|c: char| !is_math(c))
        .map(str::trim)
        .map(|s| s.trim_end_matches(['.', ' ']))
        .filter(|s| s.chars().any(|c| c.is_ascii_digit()))
        .max_by_key(|s| s.len())?;
    Some(best.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// Operations said in words with their operands around them: "Add 629
/// and 1874", "Subtract 17 from 90", "Take 85 away from 310", "Divide 900
/// by 36", "the product of 14 and 15", "the sum of 3, 4 and 5".
fn verbal_expression(question: &str) -> Option<String> {
    let lower = question.to_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| c.is_whitespace() || c == ',')
        .map(|w| w.trim_matches(|c: char| matches!(c, '?' | '!' | ':' | ';' | '"' | '\'')))
        .map(|w| w.strip_suffix('.').unwrap_or(w))
        .filter(|w| !w.is_empty())
        .collect();
    let number = |w: &str| {
        (w.chars().any(|c| c.is_ascii_digit())
            && w.chars()
                .all(|c| c.is_ascii_digit() || c == '.' || c == '-')
            && w.parse::<f64>().is_ok())
        .then(|| w.to_string())
    };
    // The numbers after position `i`, joined by "and"/"to"/"by"/"from"...
    let numbers_after = |i: usize| -> Vec<(usize, String)> {
        words
            .iter()
            .enumerate()
            .skip(i)
            .filter_map(|(j, w)| number(w).map(|n| (j, n)))
            .collect()
    };
    let between = |from: usize, to: usize, joiners: &[&str]| {
        to > from + 1 && words[from + 1..to].iter().all(|w| joiners.contains(w))
    };
    let find = |phrase: &[&str]| {
        words
            .windows(phrase.len())
            .position(|w| w == phrase)
            .map(|i| i + phrase.len())
    };
    let paren = |a: &str| {
        if a.starts_with('-') {
            format!("({a})")
        } else {
            a.to_string()
        }
    };
    // Two operands right after a verb: VERB A JOIN B.
    let pair = |verb: &[&str], joiners: &[&str]| {
        let start = find(verb)?;
        let found = numbers_after(start);
        let [(i, a), (j, b), ..] = found.as_slice() else {
            return None;
        };
        (*i == start && between(*i, *j, joiners)).then(|| (paren(a), paren(b)))
    };
    if let Some((a, b)) = pair(&["add"], &["and", "to", "plus"]) {
        return Some(format!("{a} + {b}"));
    }
    for verb in [&["subtract"][..], &["take"], &["take", "away"]] {
        if let Some((a, b)) = pair(verb, &["from", "away"]) {
            return Some(format!("{b} - {a}"));
        }
    }
    for verb in [&["multiply"][..], &["product", "of"]] {
        if let Some((a, b)) = pair(verb, &["by", "and", "with", "times"]) {
            return Some(format!("{a} * {b}"));
        }
    }
    if let Some((a, b)) = pair(&["divide"], &["by"]) {
        return Some(format!("{a} / {b}"));
    }
    if let Some((a, b)) = pair(&["quotient", "of"], &["and", "by"]) {
        return Some(format!("{a} / {b}"));
    }
    if let Some((a, b)) = pair(&["difference", "between"], &["and"]) {
        return Some(format!("{a} - {b}"));
    }
    // "the sum of 3, 4 and 5", "the total of ..."
    for verb in [&["sum", "of"][..], &["total", "of"], &["add", "up"]] {
        let Some(start) = find(verb) else { continue };
        let mut terms = Vec::new();
        let mut last = start;
        for (j, n) in numbers_after(start) {
            if j != start && !between(last, j, &["and", "plus"]) && j != last + 1 {
                break;
            }
            terms.push(paren(&n));
            last = j;
        }
        if terms.len() >= 2 {
            return Some(terms.join(" + "));
        }
    }
    None
}

/// Evaluate an expression exactly.
pub fn evaluate(expression: &str) -> Result<Rational, String> {
    let tokens = tokenize(expression)?;
    let mut parser = Parser { tokens, pos: 0 };
    let value = parser.sum()?;
    if parser.pos != parser.tokens.len() {
        return Err(format!("unexpected {:?}", parser.tokens[parser.pos]));
    }
    Ok(value)
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Num(Rational),
    Op(char),
}

fn tokenize(s: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_digit() || c == '.' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            let text: String = chars[start..i].iter().collect();
            tokens.push(Token::Num(parse_decimal(&text)?));
        } else if "+-*/^()".contains(c) {
            tokens.push(Token::Op(c));
            i += 1;
        } else {
            return Err(format!("unexpected character {c:?}"));
        }
    }
    Ok(tokens)
}

fn parse_decimal(text: &str) -> Result<Rational, String> {
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    if frac.contains('.') || (whole.is_empty() && frac.is_empty()) {
        return Err(format!("malformed number {text:?}"));
    }
    let digits = format!("{whole}{frac}");
    let num: i128 = digits
        .parse()
        .map_err(|_| format!("number too long: {text}"))?;
    let den = 10i128
        .checked_pow(frac.len() as u32)
        .ok_or_else(|| format!("number too long: {text}"))?;
    Rational::new(num, den)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn eat(&mut self, op: char) -> bool {
        if self.peek() == Some(&Token::Op(op)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn sum(&mut self) -> Result<Rational, String> {
        let mut acc = self.product()?;
        loop {
            if self.eat('+') {
                acc = acc.add(self.product()?)?;
            } else if self.eat('-') {
                acc = acc.add(self.product()?.neg())?;
            } else {
                return Ok(acc);
            }
        }
    }

    fn product(&mut self) -> Result<Rational, String> {
        let mut acc = self.unary()?;
        loop {
            if self.eat('*') {
                acc = acc.mul(self.unary()?)?;
            } else if self.eat('/') {
                acc = acc.div(self.unary()?)?;
            } else {
                return Ok(acc);
            }
        }
    }

    fn unary(&mut self) -> Result<Rational, String> {
        if self.eat('-') {
            return Ok(self.unary()?.neg());
        }
        if self.eat('+') {
            return self.unary();
        }
        self.power()
    }

    /// `^` binds tighter than unary minus on its left and is
    /// right-associative: `-2^2 = -4`, `2^3^2 = 512`.
    fn power(&mut self) -> Result<Rational, String> {
        let base = self.atom()?;
        if self.eat('^') {
            let exp = self.unary()?;
            return base.pow(exp);
        }
        Ok(base)
    }

    fn atom(&mut self) -> Result<Rational, String> {
        match self.tokens.get(self.pos).cloned() {
            Some(Token::Num(n)) => {
                self.pos += 1;
                Ok(n)
            }
            Some(Token::Op('(')) => {
                self.pos += 1;
                let v = self.sum()?;
                if !self.eat(')') {
                    return Err("missing closing parenthesis".into());
                }
                Ok(v)
            }
            Some(Token::Op(c)) => Err(format!("unexpected {c:?}")),
            None => Err("the expression ends too early".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(s: &str) -> String {
        evaluate(s)
            .map(|r| r.to_string())
            .unwrap_or_else(|e| format!("error: {e}"))
    }

    #[test]
    fn arithmetic() {
        assert_eq!(eval("12 * (3 + 4)"), "84");
        assert_eq!(eval("2^10 - 1"), "1023");
        assert_eq!(eval("7 / 8"), "0.875");
        assert_eq!(eval("1/3 + 1/6"), "0.5");
        assert_eq!(eval("1/3"), "1/3 ≈ 0.333333");
        assert_eq!(eval("-2^2"), "-4");
        assert_eq!(eval("2^3^2"), "512");
        assert_eq!(eval("0.1 + 0.2"), "0.3");
        assert_eq!(eval("1/0"), "error: division by zero");
        assert!(eval("2^1000").starts_with("error"));
    }

    #[test]
    fn operations_in_words() {
        let cases = [
            ("Add 629 and 1874.", "629 + 1874", "2503"),
            ("Please add 2.5 to 4", "2.5 + 4", "6.5"),
            ("Subtract 17 from 90.", "90 - 17", "73"),
            ("Take 85 away from 310.", "310 - 85", "225"),
            ("Multiply 37 by 29.", "37 * 29", "1073"),
            ("What is the product of 14 and 15?", "14 * 15", "210"),
            ("Divide 900 by 36.", "900 / 36", "25"),
            ("What is the sum of 3, 4 and 5?", "3 + 4 + 5", "12"),
            ("What's the difference between 50 and 20?", "50 - 20", "30"),
            ("Subtract -3 from 4", "4 - (-3)", "7"),
        ];
        for (question, expression, value) in cases {
            let found = extract_expression(question);
            assert_eq!(found.as_deref(), Some(expression), "{question}");
            assert_eq!(eval(expression), value, "{question}");
        }
        // Words without their operands are left to the symbolic reading.
        assert_eq!(
            extract_expression("Add them: 2 + 3").as_deref(),
            Some("2 + 3")
        );
    }

    #[test]
    fn extraction() {
        assert_eq!(
            extract_expression("What is 12 * (3 + 4)?").as_deref(),
            Some("12 * (3 + 4)")
        );
        assert_eq!(
            extract_expression("How much is 7 divided by 8?").as_deref(),
            Some("7 / 8")
        );
        assert_eq!(extract_expression("what's 3 x 4").as_deref(), Some("3 * 4"));
        assert_eq!(extract_expression("no numbers here"), None);
        let percent = extract_expression("Calculate 15% of 240").unwrap();
        assert_eq!(eval(&percent), "36");
        let squared = extract_expression("What is 17 squared?").unwrap();
        assert_eq!(eval(&squared), "289");
    }
}
