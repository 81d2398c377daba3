//! Corefile tokens and the reader that plugin setup parses them with.
//!
//! The same cursor semantics as Caddy v1's `Dispenser`, which CoreDNS
//! plugins are written against (`Next`, `NextArg`, `NextBlock`,
//! `RemainingArgs`), so a plugin's parser reads like its CoreDNS original.
//! Every error carries the file and line of the token it is about.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// One token of a Corefile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The token's text, unquoted, with environment variables replaced.
    pub text: String,
    /// The file it came from (as named on the command line or in `import`).
    pub file: Arc<str>,
    /// The line it starts on.
    pub line: u32,
    /// Newlines inside the token (a quoted string can span lines).
    pub newlines: u32,
}

impl Token {
    /// A token, for tests and generated configs.
    pub fn new(text: impl Into<String>, file: &Arc<str>, line: u32) -> Self {
        Self {
            text: text.into(),
            file: Arc::clone(file),
            line,
            newlines: 0,
        }
    }
}

/// A configuration error: `FILE:LINE: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {msg}")]
pub struct SetupError {
    /// The file the bad token is in.
    pub file: Arc<str>,
    /// Its line.
    pub line: u32,
    /// What is wrong and, where it helps, what to do.
    pub msg: String,
}

impl SetupError {
    /// An error at a file and line.
    pub fn new(file: &Arc<str>, line: u32, msg: impl fmt::Display) -> Self {
        Self {
            file: Arc::clone(file),
            line,
            msg: msg.to_string(),
        }
    }
}

/// Reads the tokens of one directive (all its occurrences in a server block).
#[derive(Debug, Clone)]
pub struct Dispenser<'a> {
    tokens: &'a [Token],
    cursor: isize,
    nesting: usize,
    /// The directive: errors are prefixed with it.
    directive: &'static str,
    fallback_file: Arc<str>,
}

impl<'a> Dispenser<'a> {
    /// A dispenser over `tokens`, positioned before the first.
    pub fn new(directive: &'static str, tokens: &'a [Token]) -> Self {
        Self {
            tokens,
            cursor: -1,
            nesting: 0,
            directive,
            fallback_file: Arc::from("Corefile"),
        }
    }

    fn at(&self, i: isize) -> Option<&'a Token> {
        usize::try_from(i).ok().and_then(|i| self.tokens.get(i))
    }

    /// Moves to the next token, wherever it is. False at the end.
    // Caddy's name, so setups read like their CoreDNS originals; it is a
    // cursor move, not an iterator.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> bool {
        if self.cursor + 1 < self.tokens.len() as isize {
            self.cursor += 1;
            true
        } else {
            false
        }
    }

    /// Moves to the next token only if it is on the same line.
    pub fn next_arg(&mut self) -> bool {
        if self.cursor < 0 {
            self.cursor += 1;
            return !self.tokens.is_empty();
        }
        let (Some(cur), Some(next)) = (self.at(self.cursor), self.at(self.cursor + 1)) else {
            return false;
        };
        if cur.file == next.file && cur.line + cur.newlines == next.line {
            self.cursor += 1;
            true
        } else {
            false
        }
    }

    /// Steps through a `{ … }` block that opens on the current line. Returns
    /// true on each token inside, false at the closing brace (or when there
    /// is no block). Use as `while d.next_block() { … }`.
    pub fn next_block(&mut self) -> bool {
        if self.nesting > 0 {
            if !self.next() {
                return false;
            }
            if self.val() == "}" {
                self.nesting -= 1;
                return false;
            }
            return true;
        }
        if !self.next_arg() {
            return false;
        }
        if self.val() != "{" {
            self.cursor -= 1;
            return false;
        }
        if !self.next() {
            return false;
        }
        if self.val() == "}" {
            return false;
        }
        self.nesting += 1;
        true
    }

    /// The current token's text ("" before the first).
    pub fn val(&self) -> &'a str {
        self.at(self.cursor).map_or("", |t| t.text.as_str())
    }

    /// The current token's line (0 before the first).
    pub fn line(&self) -> u32 {
        self.at(self.cursor)
            .or_else(|| self.tokens.first())
            .map_or(0, |t| t.line)
    }

    fn file(&self) -> &Arc<str> {
        self.at(self.cursor)
            .or_else(|| self.tokens.first())
            .map_or(&self.fallback_file, |t| &t.file)
    }

    /// The rest of the arguments on this line (not a block's `{`).
    pub fn remaining_args(&mut self) -> Vec<String> {
        let mut args = Vec::new();
        while self.next_arg() {
            if self.val() == "{" {
                self.cursor -= 1;
                break;
            }
            args.push(self.val().to_string());
        }
        args
    }

    /// The next argument on this line, or an error naming what was expected.
    pub fn arg(&mut self, what: &str) -> Result<&'a str, SetupError> {
        if self.next_arg() && self.val() != "{" {
            Ok(self.val())
        } else {
            if self.val() == "{" {
                self.cursor -= 1;
            }
            Err(self.err(format_args!("missing {what}")))
        }
    }

    /// An error at the current token: `FILE:LINE: directive: msg`.
    pub fn err(&self, msg: impl fmt::Display) -> SetupError {
        SetupError::new(
            self.file(),
            self.line(),
            format_args!("{}: {msg}", self.directive),
        )
    }

    /// "wrong argument count or unexpected line ending after 'X'".
    pub fn arg_err(&self) -> SetupError {
        self.err(format_args!(
            "wrong argument count or unexpected line ending after '{}'",
            self.val()
        ))
    }

    /// The error for a block option that is not implemented.
    pub fn unsupported(&self) -> SetupError {
        self.err(format_args!("option '{}' not supported", self.val()))
    }

    /// Errors if anything is left on the current line.
    pub fn no_more_args(&mut self) -> Result<(), SetupError> {
        if self.next_arg() {
            if self.val() == "{" {
                self.cursor -= 1;
                return Ok(());
            }
            return Err(self.err(format_args!("unexpected argument '{}'", self.val())));
        }
        Ok(())
    }

    /// Parses the current token as a duration (`30s`, `1m30s`, `500ms`, `1h`).
    pub fn duration(&self) -> Result<Duration, SetupError> {
        parse_duration(self.val())
            .ok_or_else(|| self.err(format_args!("invalid duration '{}'", self.val())))
    }

    /// Parses the current token as a number.
    pub fn number<T: std::str::FromStr>(&self) -> Result<T, SetupError> {
        self.val()
            .parse()
            .map_err(|_| self.err(format_args!("invalid number '{}'", self.val())))
    }
}

/// Parses a Go-style duration: a sequence of `<number><unit>` with units
/// `ns`, `us`, `µs`, `ms`, `s`, `m`, `h`, as CoreDNS's Corefiles use.
/// A bare `0` is zero. Negative durations are refused.
pub fn parse_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    if s.is_empty() {
        return None;
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let value: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += value * scale;
    }
    Duration::try_from_secs_f64(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(lines: &[(&str, u32)]) -> Vec<Token> {
        let file: Arc<str> = Arc::from("Corefile");
        lines
            .iter()
            .map(|(t, l)| Token::new(*t, &file, *l))
            .collect()
    }

    #[test]
    fn walks_args_and_blocks() {
        let t = toks(&[
            ("hosts", 1),
            ("/etc/hosts", 1),
            ("example.org", 1),
            ("{", 1),
            ("ttl", 2),
            ("30", 2),
            ("fallthrough", 3),
            ("}", 4),
            ("hosts", 5),
        ]);
        let mut d = Dispenser::new("hosts", &t);
        assert!(d.next());
        assert_eq!(d.val(), "hosts");
        assert_eq!(d.remaining_args(), vec!["/etc/hosts", "example.org"]);
        assert!(d.next_block());
        assert_eq!(d.val(), "ttl");
        assert_eq!(d.remaining_args(), vec!["30"]);
        assert!(d.next_block());
        assert_eq!(d.val(), "fallthrough");
        assert!(d.remaining_args().is_empty());
        assert!(!d.next_block());
        assert!(d.next());
        assert_eq!(d.val(), "hosts");
        assert_eq!(d.line(), 5);
        assert!(!d.next_block());
        assert!(!d.next());
    }

    #[test]
    fn errors_carry_file_line_and_directive() {
        let t = toks(&[("cache", 7), ("x", 7)]);
        let mut d = Dispenser::new("cache", &t);
        assert!(d.next());
        assert!(d.next_arg());
        assert_eq!(
            d.unsupported().to_string(),
            "Corefile:7: cache: option 'x' not supported"
        );
        assert!(d.arg("TTL").is_err());
    }

    #[test]
    fn empty_block() {
        let t = toks(&[("health", 1), ("{", 1), ("}", 1)]);
        let mut d = Dispenser::new("health", &t);
        assert!(d.next());
        assert!(!d.next_block());
        assert!(!d.next());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        for bad in ["", "5", "s", "-1s", "5x", "1e9999h"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }
}
