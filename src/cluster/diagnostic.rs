//! Errors found in a cluster file, each pinned to a file position and a field path so that the
//! operator can jump straight to it.

use std::fmt;

use marked_yaml::types::{MarkedMappingNode, Span};
use marked_yaml::Node;
use serde::Serialize;

/// One problem in the cluster file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// The file as the user named it (display name), not necessarily a full path.
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    /// Dotted path of the field, e.g. `spec.hosts[1].address`; empty for YAML syntax errors.
    pub field: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Diagnostic {
    pub(crate) fn hint(&mut self, hint: impl Into<String>) -> &mut Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// Every problem found in one file, in file order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Diagnostic> {
        self.0.iter()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// A position in the file (1-based line and column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    pub const START: Pos = Pos { line: 1, column: 1 };

    pub fn of_span(span: &Span) -> Pos {
        span.start().map(|m| Pos { line: m.line(), column: m.column() }).unwrap_or(Pos::START)
    }

    /// Where a node starts, as the user sees it. A block mapping's own marker sits after its
    /// first key, so the first key is the better anchor.
    pub fn of_node(node: &Node) -> Pos {
        match node {
            Node::Mapping(map) => Pos::of_map(map),
            other => Pos::of_span(other.span()),
        }
    }

    pub fn of_map(map: &MarkedMappingNode) -> Pos {
        map.keys().next().map(|k| Pos::of_span(k.span())).unwrap_or_else(|| Pos::of_span(map.span()))
    }
}

/// Collects diagnostics while the file is read, so that every error is reported at once.
#[derive(Debug)]
pub(crate) struct Sink {
    file: String,
    list: Vec<Diagnostic>,
}

impl Sink {
    pub fn new(file: &str) -> Self {
        Sink { file: file.to_string(), list: Vec::new() }
    }

    pub fn error(&mut self, at: Pos, field: impl Into<String>, message: impl Into<String>) -> &mut Diagnostic {
        self.list.push(Diagnostic {
            file: self.file.clone(),
            line: at.line,
            column: at.column,
            field: field.into(),
            message: message.into(),
            hint: None,
        });
        let last = self.list.len() - 1;
        &mut self.list[last]
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The diagnostics in file order; a stable sort keeps the reading order for equal positions.
    pub fn finish(mut self) -> Diagnostics {
        self.list.sort_by_key(|d| (d.line, d.column));
        Diagnostics(self.list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_with_and_without_field_and_hint() {
        let mut sink = Sink::new("cluster.yaml");
        sink.error(
            Pos { line: 12, column: 7 },
            "spec.hosts[1].address",
            "\"10.0.0.300\" is not a valid IP address or DNS name",
        );
        sink.error(Pos { line: 3, column: 1 }, "", "syntax error").hint("fix it");
        let d = sink.finish();
        assert_eq!(
            d.to_string(),
            "cluster.yaml:3:1: syntax error\n  hint: fix it\n\
             cluster.yaml:12:7: spec.hosts[1].address: \"10.0.0.300\" is not a valid IP address or DNS name"
        );
    }
}
