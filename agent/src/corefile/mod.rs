//! The Corefile: server blocks, their keys (zones, ports, transports) and
//! their directives, as CoreDNS reads it.
//!
//! Reading happens in three steps: [`expand`] lexes the file and splices
//! in `import`s and snippets and environment variables, [`blocks`] cuts
//! the token stream into server blocks and directives, and [`keys`]
//! normalises each block's keys.

mod expand;
mod keys;

use std::path::Path;
use std::sync::Arc;

pub use keys::{Key, Scheme, parse_key};
use nodedns_plugins::{SetupError, Token};

/// The port a key without one gets (CoreDNS's `-dns.port` default).
pub const DEFAULT_PORT: u16 = 53;

/// One server block: `KEYS… { DIRECTIVES }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerBlock {
    /// Its keys, normalised (a CIDR key becomes several reverse zones).
    pub keys: Vec<Key>,
    /// Its directives, in file order.
    pub directives: Vec<Directive>,
    /// Where it starts.
    pub file: Arc<str>,
    /// The line of its first key.
    pub line: u32,
}

/// One directive with its arguments and block: all its tokens, the
/// directive's name first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    /// The directive's name.
    pub name: String,
    /// Its tokens, name included.
    pub tokens: Vec<Token>,
}

impl Directive {
    /// The line the directive starts on.
    pub fn line(&self) -> u32 {
        self.tokens.first().map_or(0, |t| t.line)
    }
}

/// Where a Corefile's text comes from, for `import` of relative paths.
#[derive(Debug, Clone)]
pub struct Source<'a> {
    /// The name errors use: the path as given, or `Corefile`.
    pub name: &'a str,
    /// The text.
    pub text: &'a str,
    /// The directory relative imports resolve against.
    pub dir: &'a Path,
}

/// Parses a whole Corefile into server blocks, `import`s and snippets
/// expanded. A Corefile with no server block (empty, only comments or
/// snippets, or cut short by an editor) is an error: it would serve
/// nothing, and a reload to it would stop every listener.
///
/// The result is what a reload compares: two Corefiles that expand to the
/// same blocks (same tokens, files and lines) are the same configuration,
/// whichever file an edit was in.
pub fn parse(src: &Source<'_>, default_port: u16) -> Result<Vec<ServerBlock>, SetupError> {
    let tokens = expand::expand(src)?;
    let out = blocks(&tokens, default_port)?;
    if out.is_empty() {
        return Err(SetupError::new(
            &Arc::from(src.name),
            1,
            "no server blocks: the Corefile is empty or holds only comments or snippets \
             (want at least one block such as '. { forward . /etc/resolv.conf }')",
        ));
    }
    Ok(out)
}

fn same_line(a: &Token, b: &Token) -> bool {
    a.file == b.file && a.line + a.newlines == b.line
}

/// Cuts an expanded token stream into server blocks.
fn blocks(tokens: &[Token], default_port: u16) -> Result<Vec<ServerBlock>, SetupError> {
    let mut out = Vec::new();
    let mut i = 0usize;
    while i < tokens.len() {
        let first = &tokens[i];
        // Keys: tokens on the first line, continued onto the next line
        // after a trailing comma, up to `{`.
        let mut raw_keys: Vec<&Token> = Vec::new();
        while i < tokens.len() && tokens[i].text != "{" {
            let t = &tokens[i];
            if let Some(prev) = raw_keys.last()
                && !same_line(prev, t)
                && !prev.text.ends_with(',')
            {
                break;
            }
            if t.text == "}" {
                return Err(SetupError::new(&t.file, t.line, "unexpected '}'"));
            }
            raw_keys.push(t);
            i += 1;
        }
        let mut keys = Vec::new();
        for t in &raw_keys {
            for part in t.text.split(',').filter(|p| !p.is_empty()) {
                keys.extend(
                    parse_key(part, default_port)
                        .map_err(|m| SetupError::new(&t.file, t.line, m))?,
                );
            }
        }
        if keys.is_empty() {
            return Err(SetupError::new(
                &first.file,
                first.line,
                "server block without a key",
            ));
        }
        let directives;
        if i < tokens.len() && tokens[i].text == "{" {
            let open = &tokens[i];
            i += 1;
            let (ds, next) = directives_until_close(tokens, i, Some(open))?;
            directives = ds;
            i = next;
        } else if out.is_empty() && i < tokens.len() {
            // A single server block may go without braces (Caddy's rule),
            // but then it must be the only one.
            let (ds, next) = directives_until_close(tokens, i, None)?;
            directives = ds;
            i = next;
        } else if i >= tokens.len() && raw_keys.len() == tokens.len() {
            directives = Vec::new();
        } else {
            let last = raw_keys.last().unwrap_or(&first);
            return Err(SetupError::new(
                &last.file,
                last.line,
                "expected '{' to open the server block",
            ));
        }
        out.push(ServerBlock {
            keys,
            directives,
            file: Arc::clone(&first.file),
            line: first.line,
        });
    }
    Ok(out)
}

/// Reads directives from `i` until the `}` that closes the block (or the
/// end, for a brace-less block). Returns them and the index after the `}`.
fn directives_until_close(
    tokens: &[Token],
    mut i: usize,
    open: Option<&Token>,
) -> Result<(Vec<Directive>, usize), SetupError> {
    let mut out = Vec::new();
    loop {
        let Some(t) = tokens.get(i) else {
            return match open {
                Some(o) => Err(SetupError::new(
                    &o.file,
                    o.line,
                    "unclosed '{': missing '}'",
                )),
                None => Ok((out, i)),
            };
        };
        if t.text == "}" {
            if open.is_some() {
                return Ok((out, i + 1));
            }
            return Err(SetupError::new(&t.file, t.line, "unexpected '}'"));
        }
        if t.text == "{" {
            return Err(SetupError::new(&t.file, t.line, "unexpected '{'"));
        }
        // The directive: its line, then any block that opens on that line.
        let start = i;
        i += 1;
        while let Some(n) = tokens.get(i) {
            if !same_line(&tokens[i - 1], n) {
                break;
            }
            if n.text == "{" {
                let mut depth = 0usize;
                loop {
                    let Some(b) = tokens.get(i) else {
                        return Err(SetupError::new(
                            &n.file,
                            n.line,
                            "unclosed '{': missing '}'",
                        ));
                    };
                    match b.text.as_str() {
                        "{" => depth += 1,
                        "}" => {
                            depth -= 1;
                            if depth == 0 {
                                i += 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
                break;
            }
            i += 1;
        }
        out.push(Directive {
            name: t.text.clone(),
            tokens: tokens[start..i].to_vec(),
        });
    }
}

#[cfg(test)]
mod tests;
