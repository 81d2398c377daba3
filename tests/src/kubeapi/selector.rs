//! Label and field selectors with the API server's grammar and
//! semantics (`k8s.io/apimachinery/pkg/labels` and `.../fields`).
//!
//! Labels: requirements joined by `,` (AND): `k=v`, `k==v`, `k!=v`,
//! `k in (a,b)`, `k notin (a,b)`, `k`, `!k`, `k>N`, `k<N`. `!=` and
//! `notin` also match objects without the label. Fields: `f=v`, `f==v`,
//! `f!=v` joined by `,`, on the fields the resource supports (others are
//! a 400, as the API answers).

use serde_json::Value;

use super::objects::{Resource, meta_str};

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Equals(String),
    NotEquals(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
    Gt(i64),
    Lt(i64),
}

/// A parsed label selector; empty matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct LabelSelector(Vec<(String, Op)>);

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Not,
    Eq,
    DoubleEq,
    NotEq,
    Gt,
    Lt,
    In,
    NotIn,
    Open,
    Close,
    Comma,
    End,
}

fn lex(s: &str) -> Vec<Tok> {
    let special = |c: char| c.is_whitespace() || "!=(),<>".contains(c);
    let mut out = Vec::new();
    let mut it = s.chars().peekable();
    while let Some(&c) = it.peek() {
        if c.is_whitespace() {
            it.next();
            continue;
        }
        it.next();
        let tok = match c {
            '!' if it.peek() == Some(&'=') => {
                it.next();
                Tok::NotEq
            }
            '!' => Tok::Not,
            '=' if it.peek() == Some(&'=') => {
                it.next();
                Tok::DoubleEq
            }
            '=' => Tok::Eq,
            '>' => Tok::Gt,
            '<' => Tok::Lt,
            '(' => Tok::Open,
            ')' => Tok::Close,
            ',' => Tok::Comma,
            _ => {
                let mut id = String::from(c);
                while let Some(&n) = it.peek() {
                    if special(n) {
                        break;
                    }
                    id.push(n);
                    it.next();
                }
                match id.as_str() {
                    "in" => Tok::In,
                    "notin" => Tok::NotIn,
                    _ => Tok::Ident(id),
                }
            }
        };
        out.push(tok);
    }
    out.push(Tok::End);
    out
}

/// `validation.IsQualifiedName`: `[prefix/]name`, name ≤ 63 characters
/// of `[A-Za-z0-9_.-]` starting and ending alphanumeric, prefix a DNS
/// subdomain.
fn valid_key(k: &str) -> bool {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix {
        let ok = !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        if !ok {
            return false;
        }
    }
    !name.is_empty() && valid_value(name)
}

/// `validation.IsValidLabelValue`: empty, or ≤ 63 characters of
/// `[A-Za-z0-9_.-]` starting and ending alphanumeric.
fn valid_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && v.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && v.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric()))
}

impl LabelSelector {
    /// Parses a `labelSelector`; the error is the API's 400 message.
    pub(super) fn parse(s: &str) -> Result<Self, String> {
        let toks = lex(s);
        let mut reqs = Vec::new();
        let mut i = 0;
        let at = |i: usize| toks.get(i).cloned().unwrap_or(Tok::End);
        if at(0) == Tok::End {
            return Ok(Self(reqs));
        }
        loop {
            let (key, op) = match at(i) {
                Tok::Not => {
                    let Tok::Ident(k) = at(i + 1) else {
                        return Err(format!(
                            "unable to parse requirement: found '{:?}', expected: identifier",
                            at(i + 1)
                        ));
                    };
                    i += 2;
                    (k, Op::DoesNotExist)
                }
                Tok::Ident(k) => {
                    i += 1;
                    let op = match at(i) {
                        Tok::Comma | Tok::End => Op::Exists,
                        t @ (Tok::Eq | Tok::DoubleEq | Tok::NotEq) => {
                            i += 1;
                            let v = match at(i) {
                                Tok::Ident(v) => {
                                    i += 1;
                                    v
                                }
                                Tok::Comma | Tok::End => String::new(),
                                other => {
                                    return Err(format!(
                                        "unable to parse requirement: found '{other:?}', expected: identifier"
                                    ));
                                }
                            };
                            if !valid_value(&v) {
                                return Err(format!(
                                    "unable to parse requirement: values[0][{k}]: Invalid value: \"{v}\""
                                ));
                            }
                            if t == Tok::NotEq {
                                Op::NotEquals(v)
                            } else {
                                Op::Equals(v)
                            }
                        }
                        t @ (Tok::Gt | Tok::Lt) => {
                            i += 1;
                            let Tok::Ident(v) = at(i) else {
                                return Err(
                                    "unable to parse requirement: expected an integer".into()
                                );
                            };
                            i += 1;
                            let n: i64 = v.parse().map_err(|_| {
                                format!("unable to parse requirement: for 'Gt', 'Lt' operators, the value must be an integer: {v}")
                            })?;
                            if t == Tok::Gt { Op::Gt(n) } else { Op::Lt(n) }
                        }
                        t @ (Tok::In | Tok::NotIn) => {
                            i += 1;
                            if at(i) != Tok::Open {
                                return Err(
                                    "unable to parse requirement: found '', expected: '('".into()
                                );
                            }
                            i += 1;
                            // `(a,b)`; a missing value between commas is "".
                            let mut vals = Vec::new();
                            loop {
                                let v = match at(i) {
                                    Tok::Ident(v) => {
                                        i += 1;
                                        v
                                    }
                                    _ => String::new(),
                                };
                                vals.push(v);
                                match at(i) {
                                    Tok::Comma => i += 1,
                                    Tok::Close => {
                                        i += 1;
                                        break;
                                    }
                                    other => {
                                        return Err(format!(
                                            "unable to parse requirement: found '{other:?}', expected: ',', ')' or identifier"
                                        ));
                                    }
                                }
                            }
                            if vals == [""] {
                                return Err("unable to parse requirement: for 'in', 'notin' operators, values set can't be empty".into());
                            }
                            if let Some(v) = vals.iter().find(|v| !valid_value(v)) {
                                return Err(format!(
                                    "unable to parse requirement: values[0][{k}]: Invalid value: \"{v}\""
                                ));
                            }
                            if t == Tok::In {
                                Op::In(vals)
                            } else {
                                Op::NotIn(vals)
                            }
                        }
                        other => {
                            return Err(format!(
                                "unable to parse requirement: found '{other:?}', expected: in, notin, =, ==, !=, gt, lt"
                            ));
                        }
                    };
                    (k, op)
                }
                other => {
                    return Err(format!(
                        "unable to parse requirement: found '{other:?}', expected: !, identifier, or 'end of string'"
                    ));
                }
            };
            if !valid_key(&key) {
                return Err(format!(
                    "unable to parse requirement: key: Invalid value: \"{key}\": name part must consist of alphanumeric characters, '-', '_' or '.'"
                ));
            }
            reqs.push((key, op));
            match at(i) {
                Tok::End => return Ok(Self(reqs)),
                Tok::Comma => i += 1,
                other => {
                    return Err(format!(
                        "found '{other:?}', expected: ',' or 'end of string'"
                    ));
                }
            }
        }
    }

    /// Whether an object's `metadata.labels` satisfy every requirement.
    pub(super) fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|(k, op)| match (op, get(k)) {
            (Op::Equals(v), Some(l)) => l == v,
            (Op::NotEquals(v), l) => l != Some(v.as_str()),
            (Op::In(vs), Some(l)) => vs.iter().any(|v| v == l),
            (Op::NotIn(vs), l) => l.is_none_or(|l| !vs.iter().any(|v| v == l)),
            (Op::Exists, l) => l.is_some(),
            (Op::DoesNotExist, l) => l.is_none(),
            (Op::Gt(n), Some(l)) => l.parse::<i64>().is_ok_and(|x| x > *n),
            (Op::Lt(n), Some(l)) => l.parse::<i64>().is_ok_and(|x| x < *n),
            (Op::Equals(_) | Op::In(_) | Op::Gt(_) | Op::Lt(_), None) => false,
        })
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A parsed field selector; empty matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct FieldSelector(Vec<(String, bool, String)>);

/// The fields a resource can be selected on, beyond `metadata.name` and
/// `metadata.namespace`, and their JSON pointers.
fn extra_fields(r: Resource) -> &'static [(&'static str, &'static str)] {
    match r {
        Resource::Pods => &[
            ("spec.nodeName", "/spec/nodeName"),
            ("spec.restartPolicy", "/spec/restartPolicy"),
            ("spec.schedulerName", "/spec/schedulerName"),
            ("spec.serviceAccountName", "/spec/serviceAccountName"),
            ("status.phase", "/status/phase"),
            ("status.podIP", "/status/podIP"),
            ("status.nominatedNodeName", "/status/nominatedNodeName"),
        ],
        Resource::Services => &[
            ("spec.clusterIP", "/spec/clusterIP"),
            ("spec.type", "/spec/type"),
        ],
        Resource::Namespaces => &[("status.phase", "/status/phase")],
        Resource::EndpointSlices | Resource::ServiceImports => &[],
    }
}

fn field_value(r: Resource, obj: &Value, field: &str) -> String {
    match field {
        "metadata.name" => meta_str(obj, "name").to_string(),
        "metadata.namespace" => meta_str(obj, "namespace").to_string(),
        _ => extra_fields(r)
            .iter()
            .find(|(f, _)| *f == field)
            .and_then(|(_, p)| obj.pointer(p))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
    }
}

impl FieldSelector {
    /// Parses a `fieldSelector` for `r`; the error is the API's 400
    /// message.
    pub(super) fn parse(r: Resource, s: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        for term in s.split(',').filter(|t| !t.trim().is_empty()) {
            let (f, eq, v) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, true, v)
            } else {
                return Err(format!(
                    "invalid selector: '{s}'; can't understand '{term}'"
                ));
            };
            let f = f.trim();
            let known = f == "metadata.name"
                || f == "metadata.namespace"
                || extra_fields(r).iter().any(|(x, _)| *x == f);
            if !known {
                return Err(if extra_fields(r).is_empty() {
                    format!(
                        "\"{f}\" is not a known field selector: only \"metadata.name\", \"metadata.namespace\""
                    )
                } else {
                    format!("field label not supported: {f}")
                });
            }
            out.push((f.to_string(), eq, v.trim().to_string()));
        }
        Ok(Self(out))
    }

    /// A selector on `metadata.name` alone.
    pub(super) fn name(name: &str) -> Self {
        Self(vec![("metadata.name".into(), true, name.into())])
    }

    /// Whether the object passes every term.
    pub(super) fn matches(&self, r: Resource, obj: &Value) -> bool {
        self.0
            .iter()
            .all(|(f, eq, v)| (field_value(r, obj, f) == *v) == *eq)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(super) fn and(mut self, other: Self) -> Self {
        self.0.extend(other.0);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "n", "namespace": "ns", "labels": labels}})
    }

    #[test]
    fn label_selectors_match_as_the_api_does() {
        let o = obj(json!({"app": "web", "tier": "front", "n": "5"}));
        let cases = [
            ("", true),
            ("app=web", true),
            ("app==web", true),
            ("app=db", false),
            ("app!=db", true),
            ("missing!=x", true),
            ("app in (web,db)", true),
            ("app in (db)", false),
            ("missing in (a)", false),
            ("app notin (db)", true),
            ("missing notin (a)", true),
            ("app", true),
            ("missing", false),
            ("!missing", true),
            ("!app", false),
            ("app=web,tier=front", true),
            ("app=web,tier=back", false),
            ("app in (web, db) , !missing", true),
            ("n>4", true),
            ("n<5", false),
            ("example.com/x!=y", true),
        ];
        for (s, want) in cases {
            let sel = LabelSelector::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(sel.matches(&o), want, "{s}");
        }
    }

    #[test]
    fn bad_label_selectors_are_refused() {
        for s in [
            "app=", "a in ()", "a in (x", "=x", "a b", "a,", "-a=b", "a=b c", "n>x",
        ] {
            let r = LabelSelector::parse(s);
            // "app=" is a valid empty value.
            if s == "app=" {
                assert!(r.is_ok(), "{s}");
            } else {
                assert!(r.is_err(), "{s} parsed as {r:?}");
            }
        }
    }

    #[test]
    fn field_selectors() {
        let o = json!({"metadata": {"name": "a", "namespace": "ns"}, "spec": {"nodeName": "n1"}});
        let f = FieldSelector::parse(Resource::Pods, "metadata.name=a,spec.nodeName!=n2").unwrap();
        assert!(f.matches(Resource::Pods, &o));
        let f = FieldSelector::parse(Resource::Pods, "metadata.namespace==other").unwrap();
        assert!(!f.matches(Resource::Pods, &o));
        assert!(FieldSelector::parse(Resource::Services, "spec.foo=x").is_err());
        let e = FieldSelector::parse(Resource::EndpointSlices, "spec.foo=x").unwrap_err();
        assert!(e.contains("not a known field selector"), "{e}");
    }
}
