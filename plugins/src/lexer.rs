//! Splits Corefile text into tokens, as Caddy v1's lexer does: tokens are
//! separated by white space, `#` starts a comment at the start of a token,
//! and a double-quoted token may hold spaces, newlines and `\"`.

use std::sync::Arc;

use crate::dispenser::{SetupError, Token};

/// Tokenises `text`, naming `file` in tokens and errors.
pub fn lex(file: &Arc<str>, text: &str) -> Result<Vec<Token>, SetupError> {
    let mut tokens = Vec::new();
    let mut line = 1u32;
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c == '\n' {
            line += 1;
            chars.next();
            continue;
        }
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        if c == '#' {
            while let Some(&c) = chars.peek() {
                if c == '\n' {
                    break;
                }
                chars.next();
            }
            continue;
        }
        let start_line = line;
        let mut s = String::new();
        if c == '"' {
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '\\' if chars.peek() == Some(&'"') => {
                        s.push('"');
                        chars.next();
                    }
                    '"' => {
                        closed = true;
                        break;
                    }
                    '\n' => {
                        line += 1;
                        s.push('\n');
                    }
                    c => s.push(c),
                }
            }
            if !closed {
                return Err(SetupError::new(
                    file,
                    start_line,
                    "unterminated quoted string",
                ));
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                s.push(c);
                chars.next();
            }
        }
        tokens.push(Token {
            text: s,
            file: Arc::clone(file),
            line: start_line,
            newlines: line - start_line,
        });
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_lines_comments_quotes() {
        let f: Arc<str> = Arc::from("Corefile");
        let t = lex(
            &f,
            ". {\n  # comment { }\n  log . \"{remote} \\\"x\\\"\n y\" # tail\n}\n",
        )
        .unwrap();
        let texts: Vec<_> = t.iter().map(|t| (t.text.as_str(), t.line)).collect();
        assert_eq!(
            texts,
            vec![
                (".", 1),
                ("{", 1),
                ("log", 3),
                (".", 3),
                ("{remote} \"x\"\n y", 3),
                ("}", 5)
            ]
        );
        assert_eq!(t[4].newlines, 1);
        assert_eq!(
            lex(&f, "a \"b").unwrap_err().to_string(),
            "Corefile:1: unterminated quoted string"
        );
    }
}
