//! Lexing plus what CoreDNS does to tokens before parsing: snippets
//! `(name) { … }`, `import` of snippets, files and globs, and environment
//! variables `{$NAME}`, `{%NAME%}` and `{env.NAME}`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nodedns_plugins::lexer::lex;
use nodedns_plugins::{SetupError, Token};

use super::{Source, same_line};

/// How deep imports may nest before we call it a loop.
const MAX_IMPORT_DEPTH: usize = 32;
/// How many tokens a Corefile may expand to (imports included).
const MAX_TOKENS: usize = 1_000_000;
/// Largest file `import` reads.
const MAX_IMPORT_BYTES: u64 = 16 << 20;

struct Expander {
    snippets: HashMap<String, Vec<Token>>,
    out: Vec<Token>,
}

/// Lexes the source and expands snippets, imports and environment variables.
pub(super) fn expand(src: &Source<'_>) -> Result<Vec<Token>, SetupError> {
    let file: Arc<str> = Arc::from(src.name);
    let tokens = lex(&file, src.text)?;
    let mut e = Expander {
        snippets: HashMap::new(),
        out: Vec::with_capacity(tokens.len()),
    };
    e.run(&tokens, src.dir, 0, true)?;
    for t in &mut e.out {
        if t.text.contains('{') {
            t.text = replace_env(&t.text);
        }
    }
    Ok(e.out)
}

impl Expander {
    fn run(
        &mut self,
        tokens: &[Token],
        dir: &Path,
        depth: usize,
        top: bool,
    ) -> Result<(), SetupError> {
        let mut i = 0usize;
        let mut level = 0usize;
        while i < tokens.len() {
            let t = &tokens[i];
            let line_start = i == 0
                || !same_line(&tokens[i - 1], t)
                || matches!(tokens[i - 1].text.as_str(), "{" | "}");
            // A snippet definition: `(name) {` at the top level.
            if top
                && level == 0
                && is_snippet_name(&t.text)
                && tokens.get(i + 1).is_some_and(|n| n.text == "{")
            {
                let name = t.text[1..t.text.len() - 1].to_string();
                if self.snippets.contains_key(&name) {
                    return Err(SetupError::new(
                        &t.file,
                        t.line,
                        format_args!("redeclaration of snippet '{name}'"),
                    ));
                }
                let body_start = i + 2;
                let mut depth_b = 1usize;
                let mut j = body_start;
                while j < tokens.len() {
                    match tokens[j].text.as_str() {
                        "{" => depth_b += 1,
                        "}" => {
                            depth_b -= 1;
                            if depth_b == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    j += 1;
                }
                if j >= tokens.len() {
                    return Err(SetupError::new(
                        &t.file,
                        t.line,
                        format_args!("snippet '{name}': missing '}}'"),
                    ));
                }
                self.snippets.insert(name, tokens[body_start..j].to_vec());
                i = j + 1;
                continue;
            }
            if line_start && t.text == "import" {
                let Some(arg) = tokens.get(i + 1).filter(|a| same_line(t, a)) else {
                    return Err(SetupError::new(
                        &t.file,
                        t.line,
                        "import: missing file or snippet name",
                    ));
                };
                if tokens
                    .get(i + 2)
                    .is_some_and(|x| same_line(arg, x) && x.text != "}")
                {
                    return Err(SetupError::new(
                        &t.file,
                        t.line,
                        "import: takes exactly one argument",
                    ));
                }
                if depth >= MAX_IMPORT_DEPTH {
                    return Err(SetupError::new(
                        &t.file,
                        t.line,
                        format_args!(
                            "import: '{}' nests more than {MAX_IMPORT_DEPTH} deep (an import loop?)",
                            arg.text
                        ),
                    ));
                }
                let pattern = replace_env(&arg.text);
                if let Some(body) = self.snippets.get(&pattern).cloned() {
                    self.run(&body, dir, depth + 1, false)?;
                } else {
                    self.import_files(&pattern, arg, dir, depth)?;
                }
                i += 2;
                continue;
            }
            match t.text.as_str() {
                "{" => level += 1,
                "}" => level = level.saturating_sub(1),
                _ => {}
            }
            if self.out.len() >= MAX_TOKENS {
                return Err(SetupError::new(
                    &t.file,
                    t.line,
                    format_args!("Corefile expands to more than {MAX_TOKENS} tokens"),
                ));
            }
            self.out.push(t.clone());
            i += 1;
        }
        Ok(())
    }

    fn import_files(
        &mut self,
        pattern: &str,
        at: &Token,
        dir: &Path,
        depth: usize,
    ) -> Result<(), SetupError> {
        let full: PathBuf = if Path::new(pattern).is_absolute() {
            PathBuf::from(pattern)
        } else {
            dir.join(pattern)
        };
        let full_str = full.to_string_lossy().into_owned();
        let is_glob = pattern.contains(['*', '?', '[']);
        let mut files: Vec<PathBuf> = if is_glob {
            glob::glob(&full_str)
                .map_err(|e| {
                    SetupError::new(
                        &at.file,
                        at.line,
                        format_args!("import: bad glob '{pattern}': {e}"),
                    )
                })?
                .filter_map(Result::ok)
                .filter(|p| p.is_file())
                .collect()
        } else {
            vec![full.clone()]
        };
        files.sort();
        if files.is_empty() {
            tracing::warn!(pattern, "no files match import glob pattern");
            return Ok(());
        }
        for f in files {
            let meta = std::fs::metadata(&f).map_err(|e| {
                SetupError::new(
                    &at.file,
                    at.line,
                    format_args!("import: file to import not found: {}: {e}", f.display()),
                )
            })?;
            if meta.len() > MAX_IMPORT_BYTES {
                return Err(SetupError::new(
                    &at.file,
                    at.line,
                    format_args!(
                        "import: {} is larger than {MAX_IMPORT_BYTES} bytes",
                        f.display()
                    ),
                ));
            }
            let text = std::fs::read_to_string(&f).map_err(|e| {
                SetupError::new(
                    &at.file,
                    at.line,
                    format_args!("import: reading {}: {e}", f.display()),
                )
            })?;
            let name: Arc<str> = Arc::from(f.to_string_lossy().as_ref());
            let tokens = lex(&name, &text)?;
            let sub_dir = f
                .parent()
                .map_or_else(|| dir.to_path_buf(), Path::to_path_buf);
            self.run(&tokens, &sub_dir, depth + 1, true)?;
        }
        Ok(())
    }
}

fn is_snippet_name(s: &str) -> bool {
    s.len() > 2 && s.starts_with('(') && s.ends_with(')')
}

/// Replaces `{$NAME}`, `{%NAME%}` and `{env.NAME}` with the variable's
/// value (empty when unset, as CoreDNS).
pub(super) fn replace_env(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        let Some(end) = after.find('}') else {
            out.push_str(after);
            return out;
        };
        let inner = &after[1..end];
        let name = inner
            .strip_prefix('$')
            .or_else(|| inner.strip_prefix('%').and_then(|n| n.strip_suffix('%')))
            .or_else(|| inner.strip_prefix("env."));
        match name {
            Some(n)
                if !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
            {
                out.push_str(&std::env::var(n).unwrap_or_default());
            }
            _ => out.push_str(&after[..=end]),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}
