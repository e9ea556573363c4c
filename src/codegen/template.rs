//! A `{{name}}` substituter for the CUDA templates under `templates/`.
//!
//! Templates are plain `.cu` / `.cuh` text pulled in with `include_str!`; a key is `{{` followed by
//! an identifier (`[A-Za-z_][A-Za-z0-9_]*`) and `}}`, with no spaces. Every key in the template must
//! be given a value and every value must be used: both mistakes are errors, so a renamed
//! placeholder cannot silently leave stale text or an ignored parameter behind. Values are inserted
//! verbatim and never rescanned, so a value may itself contain braces.

use std::collections::{BTreeMap, BTreeSet};

/// What can go wrong filling a template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// Keys in the template with no value, in order of first appearance.
    #[error("template `{template}`: no value for {}", quoted(.keys))]
    Unresolved { template: String, keys: Vec<String> },
    /// Values that no key of the template consumed, sorted.
    #[error("template `{template}`: unused {}", quoted(.keys))]
    Unused { template: String, keys: Vec<String> },
    /// `{{` not followed by an identifier and `}}` (line is 1-based).
    #[error("template `{template}` line {line}: malformed placeholder `{snippet}`")]
    Malformed { template: String, line: usize, snippet: String },
    /// The same key was given two values.
    #[error("template `{template}`: `{key}` given twice")]
    Duplicate { template: String, key: String },
}

fn quoted(keys: &[String]) -> String {
    keys.iter().map(|k| format!("`{{{{{k}}}}}`")).collect::<Vec<_>>().join(", ")
}

/// A template's name (for messages) and text.
#[derive(Debug, Clone, Copy)]
pub struct Template {
    /// Short name, e.g. `gemm.cu`.
    pub name: &'static str,
    /// The text with `{{key}}` placeholders.
    pub text: &'static str,
}

impl Template {
    /// Replaces every `{{key}}` with its value; see the module doc for the rules.
    pub fn render(&self, values: &[(&str, String)]) -> Result<String, TemplateError> {
        let mut map: BTreeMap<&str, &str> = BTreeMap::new();
        for (k, v) in values {
            if map.insert(k, v.as_str()).is_some() {
                return Err(TemplateError::Duplicate { template: self.name.into(), key: (*k).into() });
            }
        }
        let mut out = String::with_capacity(self.text.len() + 1024);
        let mut used = BTreeSet::new();
        let mut missing: Vec<String> = Vec::new();
        let mut rest = self.text;
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let key = self.key_at(after)?;
            match map.get(key) {
                Some(v) => {
                    out.push_str(v);
                    used.insert(key);
                }
                None if !missing.iter().any(|m| m == key) => missing.push(key.into()),
                None => {}
            }
            rest = &after[key.len() + 2..];
        }
        out.push_str(rest);
        if !missing.is_empty() {
            return Err(TemplateError::Unresolved { template: self.name.into(), keys: missing });
        }
        let unused: Vec<String> = map.keys().filter(|k| !used.contains(*k)).map(|k| (*k).into()).collect();
        if !unused.is_empty() {
            return Err(TemplateError::Unused { template: self.name.into(), keys: unused });
        }
        Ok(out)
    }

    /// The identifier that `after` (the text just past a `{{`) starts with, closed by `}}`.
    fn key_at<'t>(&self, after: &'t str) -> Result<&'t str, TemplateError> {
        let len = after
            .char_indices()
            .find(|&(i, c)| !(c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())))
            .map_or(after.len(), |(i, _)| i);
        if len == 0 || !after[len..].starts_with("}}") {
            let consumed = self.text.len() - after.len();
            let line = self.text[..consumed].matches('\n').count() + 1;
            let snippet: String = self.text[consumed - 2..].chars().take(24).collect();
            return Err(TemplateError::Malformed {
                template: self.name.into(),
                line,
                snippet: snippet.lines().next().unwrap_or_default().into(),
            });
        }
        Ok(&after[..len])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Template = Template { name: "t.cu", text: "int {{a}} = {{b_1}};\n// {{a}} again\n" };

    #[test]
    fn substitutes_every_occurrence() {
        let out = T.render(&[("a", "x".into()), ("b_1", "{{not a key}}".into())]).expect("renders");
        assert_eq!(out, "int x = {{not a key}};\n// x again\n");
    }

    #[test]
    fn unresolved_and_unused_are_errors() {
        let e = T.render(&[("a", "x".into())]).expect_err("b_1 missing");
        assert_eq!(e, TemplateError::Unresolved { template: "t.cu".into(), keys: vec!["b_1".into()] });
        let e = T.render(&[("a", "x".into()), ("b_1", "y".into()), ("c", "z".into())]).expect_err("c unused");
        assert!(e.to_string().contains("unused `{{c}}`"), "{e}");
        let e = T.render(&[("a", "x".into()), ("a", "y".into())]).expect_err("dup");
        assert!(matches!(e, TemplateError::Duplicate { .. }), "{e:?}");
    }

    #[test]
    fn malformed_placeholder_reports_line() {
        let t = Template { name: "m.cu", text: "ok\nint {{ a }};\n" };
        let e = t.render(&[]).expect_err("malformed");
        assert!(matches!(e, TemplateError::Malformed { line: 2, .. }), "{e:?}");
    }
}
