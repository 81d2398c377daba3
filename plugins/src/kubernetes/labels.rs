//! Label selectors for `labels` and `namespace_labels`, read as CoreDNS
//! reads them: Kubernetes' selector grammar (`k8s.io/apimachinery`'s
//! `labels.Parse`), then `metav1.ParseToLabelSelector`, which keeps `=`,
//! `==`, `in`, `notin`, existence and `!` and refuses `!=`, `>` and `<`.
//! [`Selector::to_query`] gives the string the API server is sent
//! (`labelSelector=`), in Kubernetes' canonical order.
//!
//! ```text
//! selector    ::= requirement | requirement "," selector
//! requirement ::= ["!"] KEY [ ("in" | "notin") "(" VALUES ")" | ("=" | "==") VALUE ]
//! ```

use std::collections::BTreeMap;

/// Longest label name and value (`validation.LabelValueMaxLength`).
const MAX_NAME: usize = 63;
/// Longest key prefix (a DNS subdomain).
const MAX_PREFIX: usize = 253;

/// A parsed selector.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector {
    /// `key=value` requirements (a later one for the same key wins).
    pub match_labels: BTreeMap<String, String>,
    /// Set-based requirements, in the order written.
    pub expressions: Vec<Expression>,
}

/// A set-based requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expression {
    /// The label key.
    pub key: String,
    /// The operator.
    pub op: SetOp,
    /// The values, sorted and without duplicates (empty for existence).
    pub values: Vec<String>,
}

/// Set-based operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetOp {
    /// `key in (a,b)`.
    In,
    /// `key notin (a,b)`.
    NotIn,
    /// `key`.
    Exists,
    /// `!key`.
    DoesNotExist,
}

impl Selector {
    /// Parses `text` (the option's arguments joined by spaces).
    pub fn parse(text: &str) -> Result<Self, String> {
        let reqs = Parser::new(text)?.parse()?;
        let mut sel = Self::default();
        for r in reqs {
            match r.op {
                Op::Equals | Op::DoubleEquals => {
                    let v = r.values.into_iter().next().unwrap_or_default();
                    sel.match_labels.insert(r.key, v);
                }
                Op::In | Op::NotIn | Op::Exists | Op::DoesNotExist => {
                    let op = match r.op {
                        Op::In => SetOp::In,
                        Op::NotIn => SetOp::NotIn,
                        Op::Exists => SetOp::Exists,
                        _ => SetOp::DoesNotExist,
                    };
                    sel.expressions.push(Expression {
                        key: r.key,
                        op,
                        values: r.values,
                    });
                }
                Op::GreaterThan | Op::LessThan => {
                    return Err(format!(
                        "\"{}\" isn't supported in label selectors",
                        r.op.as_str()
                    ));
                }
                Op::NotEquals => {
                    return Err(format!(
                        "\"{}\" is not a valid label selector operator",
                        r.op.as_str()
                    ));
                }
            }
        }
        Ok(sel)
    }

    /// The selector as the API server's `labelSelector` parameter takes
    /// it: requirements sorted by key, values sorted, joined by commas
    /// (`metav1.LabelSelectorAsSelector(..).String()`).
    pub fn to_query(&self) -> String {
        let mut parts: Vec<(&str, String)> = self
            .match_labels
            .iter()
            .map(|(k, v)| (k.as_str(), format!("{k}={v}")))
            .collect();
        for e in &self.expressions {
            let s = match e.op {
                SetOp::In => format!("{} in ({})", e.key, e.values.join(",")),
                SetOp::NotIn => format!("{} notin ({})", e.key, e.values.join(",")),
                SetOp::Exists => e.key.clone(),
                SetOp::DoesNotExist => format!("!{}", e.key),
            };
            parts.push((e.key.as_str(), s));
        }
        parts.sort_by(|a, b| a.0.cmp(b.0));
        parts
            .into_iter()
            .map(|(_, s)| s)
            .collect::<Vec<_>>()
            .join(",")
    }
}

// === The grammar ===

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Equals,
    DoubleEquals,
    NotEquals,
    In,
    NotIn,
    Exists,
    DoesNotExist,
    GreaterThan,
    LessThan,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Self::Equals => "=",
            Self::DoubleEquals => "==",
            Self::NotEquals => "!=",
            Self::In => "in",
            Self::NotIn => "notin",
            Self::Exists => "exists",
            Self::DoesNotExist => "!",
            Self::GreaterThan => "gt",
            Self::LessThan => "lt",
        }
    }
}

struct Requirement {
    key: String,
    op: Op,
    values: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    End,
    Close,
    Comma,
    Not,
    DoubleEquals,
    Equals,
    Greater,
    Ident(String),
    In,
    Less,
    NotEquals,
    NotIn,
    Open,
}

impl Tok {
    fn literal(&self) -> &str {
        match self {
            Self::End => "",
            Self::Close => ")",
            Self::Comma => ",",
            Self::Not => "!",
            Self::DoubleEquals => "==",
            Self::Equals => "=",
            Self::Greater => ">",
            Self::Ident(s) => s,
            Self::In => "in",
            Self::Less => "<",
            Self::NotEquals => "!=",
            Self::NotIn => "notin",
            Self::Open => "(",
        }
    }
    /// In a value position, `in` and `notin` are plain words.
    fn as_value(&self) -> Self {
        match self {
            Self::In | Self::NotIn => Self::Ident(self.literal().to_string()),
            other => other.clone(),
        }
    }
}

fn is_special(b: u8) -> bool {
    matches!(b, b'=' | b'!' | b'(' | b')' | b',' | b'>' | b'<')
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn symbol(s: &[u8]) -> Option<Tok> {
    Some(match s {
        b")" => Tok::Close,
        b"," => Tok::Comma,
        b"!" => Tok::Not,
        b"==" => Tok::DoubleEquals,
        b"=" => Tok::Equals,
        b">" => Tok::Greater,
        b"<" => Tok::Less,
        b"!=" => Tok::NotEquals,
        b"(" => Tok::Open,
        _ => return None,
    })
}

fn lex(s: &str) -> Vec<Tok> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        while i < b.len() && is_space(b[i]) {
            i += 1;
        }
        if i >= b.len() {
            out.push(Tok::End);
            return out;
        }
        if is_special(b[i]) {
            // The longest run of symbols that is a token.
            let start = i;
            let mut best = None;
            let mut j = i;
            while j < b.len() && is_special(b[j]) {
                j += 1;
                match symbol(&b[start..j]) {
                    Some(t) => best = Some((t, j)),
                    None if best.is_some() => break,
                    None => {}
                }
            }
            // Every single symbol is a token, so there is one.
            let (t, end) = best.unwrap_or((Tok::Comma, start + 1));
            out.push(t);
            i = end;
        } else {
            let start = i;
            while i < b.len() && !is_special(b[i]) && !is_space(b[i]) {
                i += 1;
            }
            let word = &s[start..i];
            out.push(match word {
                "in" => Tok::In,
                "notin" => Tok::NotIn,
                _ => Tok::Ident(word.to_string()),
            });
        }
    }
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn new(s: &str) -> Result<Self, String> {
        Ok(Self {
            toks: lex(s),
            pos: 0,
        })
    }

    fn peek(&self) -> Tok {
        self.toks.get(self.pos).map_or(Tok::End, Tok::as_value)
    }

    fn peek_raw(&self) -> Tok {
        self.toks.get(self.pos).cloned().unwrap_or(Tok::End)
    }

    fn next(&mut self) -> Tok {
        let t = self.peek();
        self.pos += 1;
        t
    }

    fn parse(&mut self) -> Result<Vec<Requirement>, String> {
        let mut out = Vec::new();
        loop {
            match self.peek() {
                Tok::Ident(_) | Tok::Not => {
                    out.push(self.requirement()?);
                    match self.next() {
                        Tok::End => break,
                        Tok::Comma => {
                            let t = self.peek();
                            if !matches!(t, Tok::Ident(_) | Tok::Not) {
                                return Err(format!(
                                    "found '{}', expected: identifier after ','",
                                    t.literal()
                                ));
                            }
                        }
                        t => {
                            return Err(format!(
                                "found '{}', expected: ',' or 'end of string'",
                                t.literal()
                            ));
                        }
                    }
                }
                Tok::End => break,
                t => {
                    return Err(format!(
                        "found '{}', expected: !, identifier, or 'end of string'",
                        t.literal()
                    ));
                }
            }
        }
        Ok(out)
    }

    fn requirement(&mut self) -> Result<Requirement, String> {
        let mut op = None;
        let mut t = self.next();
        if t == Tok::Not {
            op = Some(Op::DoesNotExist);
            t = self.next();
        }
        let Tok::Ident(key) = t else {
            return Err(format!("found '{}', expected: identifier", t.literal()));
        };
        validate_key(&key)?;
        if matches!(self.peek(), Tok::End | Tok::Comma) {
            let op = op.unwrap_or(Op::Exists);
            return Ok(Requirement {
                key,
                op,
                values: Vec::new(),
            });
        }
        if op == Some(Op::DoesNotExist) {
            // `!key` takes nothing after it.
            let t = self.peek();
            return Err(format!(
                "found '{}', expected: ',' or 'end of string'",
                t.literal()
            ));
        }
        let op = match self.next_raw() {
            Tok::In => Op::In,
            Tok::NotIn => Op::NotIn,
            Tok::Equals => Op::Equals,
            Tok::DoubleEquals => Op::DoubleEquals,
            Tok::NotEquals => Op::NotEquals,
            Tok::Greater => Op::GreaterThan,
            Tok::Less => Op::LessThan,
            t => {
                return Err(format!(
                    "found '{}', expected: in, notin, =, ==, !=, gt, lt",
                    t.literal()
                ));
            }
        };
        let mut values = match op {
            Op::In | Op::NotIn => self.values()?,
            _ => vec![self.exact_value()?],
        };
        values.sort();
        values.dedup();
        if matches!(op, Op::GreaterThan | Op::LessThan)
            && values.iter().any(|v| v.parse::<i64>().is_err())
        {
            return Err("for 'Gt', 'Lt' operators, the value must be an integer".into());
        }
        for v in &values {
            validate_value(v)?;
        }
        Ok(Requirement { key, op, values })
    }

    fn next_raw(&mut self) -> Tok {
        let t = self.peek_raw();
        self.pos += 1;
        t
    }

    fn values(&mut self) -> Result<Vec<String>, String> {
        let t = self.next();
        if t != Tok::Open {
            return Err(format!("found '{}' expected: '('", t.literal()));
        }
        match self.peek() {
            Tok::Ident(_) | Tok::Comma => {
                let list = self.identifiers()?;
                let t = self.next();
                if t != Tok::Close {
                    return Err(format!("found '{}', expected: ')'", t.literal()));
                }
                Ok(list)
            }
            Tok::Close => {
                self.next();
                Ok(vec![String::new()])
            }
            t => Err(format!(
                "found '{}', expected: ',', ')' or identifier",
                t.literal()
            )),
        }
    }

    fn identifiers(&mut self) -> Result<Vec<String>, String> {
        let mut out: Vec<String> = Vec::new();
        loop {
            match self.next() {
                Tok::Ident(v) => {
                    out.push(v);
                    match self.peek() {
                        Tok::Comma => {}
                        Tok::Close => return Ok(out),
                        t => return Err(format!("found '{}', expected: ',' or ')'", t.literal())),
                    }
                }
                Tok::Comma => {
                    if out.is_empty() {
                        out.push(String::new());
                    }
                    match self.peek() {
                        Tok::Close => {
                            out.push(String::new());
                            return Ok(out);
                        }
                        Tok::Comma => {
                            self.next();
                            out.push(String::new());
                        }
                        _ => {}
                    }
                }
                t => {
                    return Err(format!(
                        "found '{}', expected: ',', or identifier",
                        t.literal()
                    ));
                }
            }
        }
    }

    fn exact_value(&mut self) -> Result<String, String> {
        match self.peek() {
            Tok::End | Tok::Comma => Ok(String::new()),
            _ => match self.next() {
                Tok::Ident(v) => Ok(v),
                t => Err(format!("found '{}', expected: identifier", t.literal())),
            },
        }
    }
}

/// `validation.IsQualifiedName`: `[prefix/]name`.
fn validate_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if p.is_empty() {
            return Err(format!(
                "invalid label key \"{key}\": prefix part must be non-empty"
            ));
        }
        if !is_dns1123_subdomain(p) {
            return Err(format!(
                "invalid label key \"{key}\": prefix part must be a lowercase RFC 1123 subdomain"
            ));
        }
    }
    if name.is_empty() || name.len() > MAX_NAME || !is_name(name) || name.contains('/') {
        return Err(format!(
            "invalid label key \"{key}\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (at most 63 characters)"
        ));
    }
    Ok(())
}

/// `validation.IsValidLabelValue`.
fn validate_value(v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Ok(());
    }
    if v.len() > MAX_NAME || !is_name(v) {
        return Err(format!(
            "invalid label value \"{v}\": must be 63 characters or less and be empty or begin and end with an alphanumeric character, with '-', '_', '.' or alphanumerics between"
        ));
    }
    Ok(())
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`.
fn is_name(s: &str) -> bool {
    let b = s.as_bytes();
    let (Some(first), Some(last)) = (b.first(), b.last()) else {
        return false;
    };
    first.is_ascii_alphanumeric()
        && last.is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A lowercase RFC 1123 subdomain.
fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= MAX_PREFIX
        && s.split('.').all(|l| {
            let b = l.as_bytes();
            !b.is_empty()
                && b.len() <= MAX_NAME
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_as_kubernetes() {
        let ok = [
            ("environment=prod", "environment=prod"),
            ("environment==prod", "environment=prod"),
            (
                "environment in (production, staging, qa),application=nginx",
                "application=nginx,environment in (production,qa,staging)",
            ),
            ("istio-injection=enabled", "istio-injection=enabled"),
            (
                "x in (foo,,baz),y,z notin ()",
                "x in (,baz,foo),y,z notin ()",
            ),
            ("!canary", "!canary"),
            ("tier", "tier"),
            ("example.com/team = dns", "example.com/team=dns"),
            ("a=", "a="),
            ("k in (in, notin)", "k in (in,notin)"),
            ("b=2,a=1", "a=1,b=2"),
            ("a=1,a=2", "a=2"),
        ];
        for (text, want) in ok {
            let s = Selector::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(s.to_query(), want, "{text}");
        }
    }

    #[test]
    fn refuses_what_kubernetes_refuses() {
        let bad = [
            (
                "environment in (production, qa",
                "found '', expected: ',' or ')'",
            ),
            ("env!=prod", "\"!=\" is not a valid label selector operator"),
            ("n>3", "\"gt\" isn't supported in label selectors"),
            (
                "n<x",
                "for 'Gt', 'Lt' operators, the value must be an integer",
            ),
            (
                "=x",
                "found '=', expected: !, identifier, or 'end of string'",
            ),
            ("a,", "found '', expected: identifier after ','"),
            ("a b", "found 'b', expected: in, notin, =, ==, !=, gt, lt"),
            ("-bad=1", "invalid label key \"-bad\""),
            (
                "Upper.Case/x=1",
                "prefix part must be a lowercase RFC 1123 subdomain",
            ),
            ("a=b c", "found 'c', expected: ',' or 'end of string'"),
            ("a=-x", "invalid label value \"-x\""),
            ("!a=1", "found '=', expected: ',' or 'end of string'"),
            ("a in x", "found 'x' expected: '('"),
        ];
        for (text, want) in bad {
            let e = Selector::parse(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
