//! Searching the versions of a repository: a small filter over each version's document (its
//! manifest's own keys, dotted, beside what the source and the deployment know of it).
//!
//! The syntax, documented in `docs/repository.md`:
//!
//! ```text
//! filter     = comparison { "and" comparison }
//! comparison = field op value
//! field      = key { "." key }             holdout_metrics.accuracy, training.data_sha256, state
//! op         = "=" | "!=" | ">" | ">=" | "<" | "<=" | "~"     (~: contains, ignoring case)
//! value      = number | 'text' | "text" | word
//! ```
//!
//! Numbers compare as numbers, everything else as text (RFC 3339 times sort as text); a field that
//! holds a list matches when one of its items does. A bad token is refused with its position.

use std::cmp::Ordering;

use serde_json::Value;

/// One comparison: `field op value`.
#[derive(Clone, Debug, PartialEq)]
struct Comparison {
    field: String,
    op: Op,
    value: Literal,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    Contains,
}

#[derive(Clone, Debug, PartialEq)]
enum Literal {
    Number(f64),
    Text(String),
}

/// A parsed filter: every comparison must hold (the empty filter holds for every version).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filter {
    comparisons: Vec<Comparison>,
}

/// A filter that does not parse, or names a field no version has: the token and where it is.
#[derive(Debug, PartialEq, thiserror::Error)]
#[error("filter: {message}")]
pub struct FilterError {
    pub message: String,
}

fn error(message: String) -> FilterError {
    FilterError { message }
}

impl Filter {
    pub fn parse(text: &str) -> Result<Self, FilterError> {
        let tokens = tokens(text)?;
        let mut comparisons = Vec::new();
        let mut rest = tokens.as_slice();
        while !rest.is_empty() {
            if !comparisons.is_empty() {
                match rest {
                    [(_, Token::Word(w)), tail @ ..] if w.eq_ignore_ascii_case("and") => rest = tail,
                    [(at, token), ..] => {
                        return Err(error(format!("expected 'and' at {at}, found {token}")));
                    }
                    [] => unreachable!("checked not empty"),
                }
            }
            let (comparison, tail) = comparison(rest, text.len())?;
            comparisons.push(comparison);
            rest = tail;
        }
        Ok(Self { comparisons })
    }

    pub fn is_empty(&self) -> bool {
        self.comparisons.is_empty()
    }

    /// The fields the filter reads, to tell a misspelt one from one no version matches.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.comparisons.iter().map(|c| c.field.as_str())
    }

    /// Whether `document` meets every comparison.
    pub fn matches(&self, document: &Value) -> bool {
        self.comparisons.iter().all(|c| field(document, &c.field).is_some_and(|v| holds(v, c.op, &c.value)))
    }
}

/// The value at a dotted path (`training.split.test_size`); `None` where it is absent.
pub fn field<'a>(document: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(document, |value, key| value.get(key))
}

fn holds(value: &Value, op: Op, literal: &Literal) -> bool {
    if let Value::Array(items) = value {
        return match op {
            // "no item equals": otherwise != on a list would hold whenever it has two items.
            Op::Ne => !items.iter().any(|item| holds(item, Op::Eq, literal)),
            _ => items.iter().any(|item| holds(item, op, literal)),
        };
    }
    if op == Op::Contains {
        let needle = match literal {
            Literal::Number(n) => n.to_string(),
            Literal::Text(t) => t.to_lowercase(),
        };
        return text_of(value).is_some_and(|t| t.to_lowercase().contains(&needle));
    }
    let ordering = match (value, literal) {
        (Value::Number(n), Literal::Number(l)) => n.as_f64().and_then(|n| n.partial_cmp(l)),
        (Value::String(s), Literal::Number(l)) => s.parse::<f64>().ok().and_then(|n| n.partial_cmp(l)),
        (_, Literal::Text(l)) => text_of(value).map(|t| t.as_str().cmp(l.as_str())),
        _ => None,
    };
    let Some(ordering) = ordering else { return op == Op::Ne };
    match op {
        Op::Eq => ordering == Ordering::Equal,
        Op::Ne => ordering != Ordering::Equal,
        Op::Gt => ordering == Ordering::Greater,
        Op::Ge => ordering != Ordering::Less,
        Op::Lt => ordering == Ordering::Less,
        Op::Le => ordering != Ordering::Greater,
        Op::Contains => unreachable!("handled above"),
    }
}

fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Word(String),
    Quoted(String),
    Op(Op),
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Word(w) => write!(f, "'{w}'"),
            Self::Quoted(q) => write!(f, "the text {q:?}"),
            Self::Op(op) => write!(f, "'{}'", op_text(*op)),
        }
    }
}

fn op_text(op: Op) -> &'static str {
    match op {
        Op::Eq => "=",
        Op::Ne => "!=",
        Op::Gt => ">",
        Op::Ge => ">=",
        Op::Lt => "<",
        Op::Le => "<=",
        Op::Contains => "~",
    }
}

/// Positions are character offsets, 0 first, as a person counts along the text they typed.
fn tokens(text: &str) -> Result<Vec<(usize, Token)>, FilterError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '\'' || c == '"' {
            let start = i;
            i += 1;
            let begin = i;
            while i < chars.len() && chars[i] != c {
                i += 1;
            }
            if i == chars.len() {
                return Err(error(format!("the quote at {start} is not closed")));
            }
            out.push((start, Token::Quoted(chars[begin..i].iter().collect())));
            i += 1;
        } else if matches!(c, '=' | '!' | '<' | '>' | '~') {
            let next = chars.get(i + 1).copied();
            let (op, len) = match (c, next) {
                ('!', Some('=')) => (Op::Ne, 2),
                ('>', Some('=')) => (Op::Ge, 2),
                ('<', Some('=')) => (Op::Le, 2),
                ('=', Some('=')) => (Op::Eq, 2),
                ('=', _) => (Op::Eq, 1),
                ('>', _) => (Op::Gt, 1),
                ('<', _) => (Op::Lt, 1),
                ('~', _) => (Op::Contains, 1),
                _ => return Err(error(format!("'{c}' at {i} is not a comparison (=, !=, <, <=, >, >=, ~)"))),
            };
            out.push((i, Token::Op(op)));
            i += len;
        } else {
            let start = i;
            while i < chars.len()
                && !chars[i].is_whitespace()
                && !matches!(chars[i], '=' | '!' | '<' | '>' | '~' | '\'' | '"')
            {
                i += 1;
            }
            out.push((start, Token::Word(chars[start..i].iter().collect())));
        }
    }
    Ok(out)
}

type Tokens<'a> = &'a [(usize, Token)];

fn comparison(tokens: Tokens<'_>, end: usize) -> Result<(Comparison, Tokens<'_>), FilterError> {
    let field = match tokens.first() {
        Some((at, Token::Word(w))) if is_field(w) => w.clone(),
        Some((at, token)) => {
            return Err(error(format!("expected a field such as holdout_metrics.accuracy at {at}, found {token}")));
        }
        None => return Err(error(format!("expected a field at {end}"))),
    };
    let op = match tokens.get(1) {
        Some((_, Token::Op(op))) => *op,
        Some((at, token)) => {
            return Err(error(format!(
                "expected a comparison (=, !=, <, <=, >, >=, ~) after '{field}' at {at}, found {token}"
            )));
        }
        None => return Err(error(format!("expected a comparison after '{field}' at {end}"))),
    };
    let value = match tokens.get(2) {
        Some((_, Token::Quoted(q))) => Literal::Text(q.clone()),
        Some((_, Token::Word(w))) => match w.parse::<f64>() {
            Ok(n) if n.is_finite() => Literal::Number(n),
            _ => Literal::Text(w.clone()),
        },
        Some((at, token)) => {
            return Err(error(format!("expected a value after '{field} {}' at {at}, found {token}", op_text(op))));
        }
        None => return Err(error(format!("expected a value after '{field} {}' at {end}", op_text(op)))),
    };
    Ok((Comparison { field, op, value }, &tokens[3..]))
}

fn is_field(word: &str) -> bool {
    !word.is_empty()
        && word
            .split('.')
            .all(|key| !key.is_empty() && key.chars().all(|c| c.is_alphanumeric() || matches!(c, '_' | '-')))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc() -> Value {
        json!({
            "model": "breast-cancer", "version": "3", "state": "challenger",
            "holdout_metrics": {"accuracy": 0.965, "roc_auc": 0.995},
            "training": {"data_sha256": "273d7f4f", "split": {"test_size": 0.25}},
            "aliases": ["challenger", "candidate"], "description": "MLPClassifier (32, 16)",
            "created": "2026-12-07T04:00:00Z"
        })
    }

    #[test]
    fn comparisons_joined_by_and_all_hold() {
        let f = Filter::parse("holdout_metrics.accuracy > 0.96 and state = challenger").unwrap();
        assert!(f.matches(&doc()));
        assert!(!Filter::parse("holdout_metrics.accuracy > 0.97").unwrap().matches(&doc()));
        assert!(Filter::parse("training.split.test_size<=0.25 AND version >= 3").unwrap().matches(&doc()));
        assert!(Filter::parse("training.data_sha256 = '273d7f4f'").unwrap().matches(&doc()));
        assert!(Filter::parse("description ~ mlp").unwrap().matches(&doc()));
        assert!(Filter::parse("created >= \"2026-12-01\"").unwrap().matches(&doc()));
        assert!(Filter::parse("").unwrap().matches(&doc()));
    }

    #[test]
    fn a_list_matches_when_one_item_does() {
        assert!(Filter::parse("aliases = candidate").unwrap().matches(&doc()));
        assert!(!Filter::parse("aliases != candidate").unwrap().matches(&doc()));
        assert!(Filter::parse("aliases != champion").unwrap().matches(&doc()));
    }

    #[test]
    fn an_absent_field_matches_nothing() {
        assert!(!Filter::parse("holdout_metrics.mae < 50").unwrap().matches(&doc()));
    }

    #[test]
    fn bad_filters_name_the_token_and_where_it_is() {
        let cases = [
            ("holdout_metrics.accuracy >", "expected a value after 'holdout_metrics.accuracy >' at 26"),
            ("accuracy 0.9", "after 'accuracy' at 9, found '0.9'"),
            ("> 3", "expected a field such as holdout_metrics.accuracy at 0, found '>'"),
            ("a = 1 or b = 2", "expected 'and' at 6, found 'or'"),
            ("a = 'x", "the quote at 4 is not closed"),
            ("a ! 1", "'!' at 2 is not a comparison"),
            ("a = 1 and", "expected a field at 9"),
        ];
        for (text, expected) in cases {
            let message = Filter::parse(text).unwrap_err().to_string();
            assert!(message.contains(expected), "{text}: {message}");
        }
    }
}
