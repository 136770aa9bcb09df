//! Span-aware access to a parsed TOML document: typed getters that record every error with its location.

use std::ops::Range;
use std::time::Duration;

use toml_edit::{Item, TableLike, Value};

use super::FileRef;

/// One problem in a config file, located by line, column and key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file, self.line, self.col, self.path, self.message
        )
    }
}

/// Collects diagnostics while the config is read, so that all of them are reported at once.
pub(crate) struct Reader<'a> {
    src: &'a str,
    file: &'a str,
    pub errors: Vec<Diagnostic>,
}

/// Joins a parent key path and a child key (`pools.shop` + `cookie`).
pub(crate) fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

impl<'a> Reader<'a> {
    pub fn new(src: &'a str, file: &'a str) -> Self {
        Reader {
            src,
            file,
            errors: Vec::new(),
        }
    }

    /// Records an error at a byte span of the source (the start of the file when unknown).
    pub fn error_at(&mut self, span: Option<Range<usize>>, path: &str, message: impl Into<String>) {
        let offset = span.map(|s| s.start).unwrap_or(0);
        let (line, col) = line_col(self.src, offset);
        self.errors.push(Diagnostic {
            file: self.file.to_string(),
            line,
            col,
            path: path.to_string(),
            message: message.into(),
        });
    }

    /// The location of `key`'s value, for errors found after parsing (certificate files).
    pub fn location(&self, table: &dyn TableLike, path: &str, key: &str) -> super::Location {
        let offset = Self::span_of(table, key).map(|s| s.start).unwrap_or(0);
        let (line, col) = line_col(self.src, offset);
        super::Location {
            file: self.file.to_string(),
            line,
            col,
            key: join(path, key),
        }
    }

    /// Where the value of `key` is (or the key itself when the value has no span).
    pub fn span_of(table: &dyn TableLike, key: &str) -> Option<Range<usize>> {
        let (k, item) = table.get_key_value(key)?;
        item.span().or_else(|| k.span())
    }

    /// Reports every key of `table` that is not in `allowed`.
    pub fn check_keys(&mut self, table: &dyn TableLike, path: &str, allowed: &[&str]) {
        for (key, _) in table.iter() {
            if !allowed.contains(&key) {
                let span = table.key(key).and_then(|k| k.span());
                let hint = if allowed.is_empty() {
                    String::new()
                } else {
                    format!(" (expected one of: {})", allowed.join(", "))
                };
                self.error_at(span, &join(path, key), format!("unknown key{hint}"));
            }
        }
    }

    /// Reads an optional value with `parse`; a parse failure is recorded and gives `None`.
    pub fn opt<T>(
        &mut self,
        table: &dyn TableLike,
        path: &str,
        key: &str,
        parse: impl FnOnce(&Value) -> Result<T, String>,
    ) -> Option<T> {
        let item = table.get(key)?;
        let full = join(path, key);
        match item.as_value() {
            Some(v) => match parse(v) {
                Ok(t) => Some(t),
                Err(msg) => {
                    self.error_at(Self::span_of(table, key), &full, msg);
                    None
                }
            },
            None => {
                self.error_at(
                    Self::span_of(table, key),
                    &full,
                    "expected a value, found a table",
                );
                None
            }
        }
    }

    /// An optional file path (a non-empty string), kept with where it was written so that
    /// errors found when the file is loaded can point at the config line.
    pub fn file_ref(&mut self, table: &dyn TableLike, path: &str, key: &str) -> Option<FileRef> {
        let p = self.opt(table, path, key, |v| {
            as_str(v).and_then(|s| {
                if s.is_empty() {
                    Err("must not be empty".into())
                } else {
                    Ok(s)
                }
            })
        })?;
        Some(FileRef {
            path: p,
            at: self.location(table, path, key),
        })
    }

    /// A sub-table (`[a.b]` or an inline table); records an error when `key` is something else.
    pub fn table<'t>(
        &mut self,
        table: &'t dyn TableLike,
        path: &str,
        key: &str,
    ) -> Option<&'t dyn TableLike> {
        let item = table.get(key)?;
        match item.as_table_like() {
            Some(t) => Some(t),
            None => {
                self.error_at(
                    Self::span_of(table, key),
                    &join(path, key),
                    "expected a table",
                );
                None
            }
        }
    }

    /// An array of tables (`[[a.b]]` or `b = [{...}, ...]`), each with its span.
    pub fn tables<'t>(
        &mut self,
        table: &'t dyn TableLike,
        path: &str,
        key: &str,
    ) -> Vec<(&'t dyn TableLike, Option<Range<usize>>)> {
        let Some(item) = table.get(key) else {
            return Vec::new();
        };
        match item {
            Item::ArrayOfTables(a) => a.iter().map(|t| (t as &dyn TableLike, t.span())).collect(),
            Item::Value(Value::Array(a)) => {
                let mut out = Vec::new();
                for v in a.iter() {
                    match v.as_inline_table() {
                        Some(t) => out.push((t as &dyn TableLike, v.span())),
                        None => self.error_at(v.span(), &join(path, key), "expected a table"),
                    }
                }
                out
            }
            _ => {
                self.error_at(
                    Self::span_of(table, key),
                    &join(path, key),
                    "expected an array of tables",
                );
                Vec::new()
            }
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = src.get(..offset).unwrap_or(src);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

pub(crate) fn as_str(v: &Value) -> Result<String, String> {
    v.as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("expected a string, found {}", v.type_name()))
}

pub(crate) fn as_bool(v: &Value) -> Result<bool, String> {
    v.as_bool()
        .ok_or_else(|| format!("expected true or false, found {}", v.type_name()))
}

pub(crate) fn as_int(v: &Value, min: i64, max: i64) -> Result<i64, String> {
    let n = v
        .as_integer()
        .ok_or_else(|| format!("expected an integer, found {}", v.type_name()))?;
    if n < min || n > max {
        return Err(format!("must be between {min} and {max}, found {n}"));
    }
    Ok(n)
}

pub(crate) fn as_float(v: &Value) -> Result<f64, String> {
    v.as_float()
        .or_else(|| v.as_integer().map(|i| i as f64))
        .ok_or_else(|| format!("expected a number, found {}", v.type_name()))
}

/// A human duration string: `"500ms"`, `"2s"`, `"30m"`, `"30d"`.
pub(crate) fn as_duration(v: &Value) -> Result<Duration, String> {
    let s = v.as_str().ok_or_else(|| {
        format!(
            "expected a duration string such as \"2s\" or \"30m\", found {}",
            v.type_name()
        )
    })?;
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!("invalid duration {s:?} ({e}); use e.g. \"500ms\", \"2s\", \"30m\", \"30d\"")
    })
}

/// An array of strings, each parsed with `each`; the first bad element is the error.
pub(crate) fn as_list<T>(
    v: &Value,
    each: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, String> {
    let arr = v
        .as_array()
        .ok_or_else(|| format!("expected an array of strings, found {}", v.type_name()))?;
    arr.iter()
        .map(|e| {
            let s = e
                .as_str()
                .ok_or_else(|| format!("expected strings in the array, found {}", e.type_name()))?;
            each(s)
        })
        .collect()
}

/// A string that must be one of `choices`.
pub(crate) fn as_choice<T: Copy>(v: &Value, choices: &[(&str, T)]) -> Result<T, String> {
    let s = v.as_str();
    for (name, t) in choices {
        if s == Some(*name) {
            return Ok(*t);
        }
    }
    let names: Vec<String> = choices.iter().map(|(n, _)| format!("\"{n}\"")).collect();
    Err(format!(
        "expected one of {}, found {}",
        names.join(", "),
        match s {
            Some(s) => format!("{s:?}"),
            None => v.type_name().to_string(),
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        let src = "a = 1\nbé = 2\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 6), (2, 1));
        // 'é' is two bytes but one column.
        assert_eq!(line_col(src, 9), (2, 3));
        assert_eq!(line_col(src, 999), (3, 1));
    }

    #[test]
    fn file_ref_keeps_where_the_path_was_written_and_rejects_empty() {
        let src = "[tls]\ncert = \"c.pem\"\nkey = \"\"\n";
        let doc: toml_edit::Document<String> = src.parse().expect("valid TOML");
        let mut r = Reader::new(src, "t.toml");
        let tls = r.table(doc.as_table(), "", "tls").expect("[tls]");
        let cert = r.file_ref(tls, "tls", "cert").expect("cert given");
        assert_eq!(cert.path, "c.pem");
        assert_eq!(
            (cert.at.line, cert.at.col, cert.at.key.as_str()),
            (2, 8, "tls.cert")
        );
        assert_eq!(r.file_ref(tls, "tls", "key"), None);
        assert_eq!(r.file_ref(tls, "tls", "absent"), None);
        assert_eq!(r.errors.len(), 1);
        assert_eq!(
            (r.errors[0].line, r.errors[0].path.as_str()),
            (3, "tls.key")
        );
        assert_eq!(r.errors[0].message, "must not be empty");
    }
}
