//! Errors and warnings found in a cluster file, each pinned to a file position and a field path
//! so that the operator can jump straight to it.
//!
//! Invariants: file names are stored escaped (no control characters reach a terminal, so one
//! diagnostic is one `file:line:col:` line plus its hint); at most [`MAX_KEPT_DIAGNOSTICS`] are
//! kept and [`MAX_SHOWN_DIAGNOSTICS`] printed, the rest counted, so that a file with half a
//! million bad list items costs neither memory nor a flooded terminal.

use std::fmt;

use marked_yaml::types::{MarkedMappingNode, Span};
use marked_yaml::Node;
use serde::Serialize;

/// How many diagnostics one read keeps; further ones are only counted.
pub const MAX_KEPT_DIAGNOSTICS: usize = 1000;

/// How many diagnostics are printed; "... and N more" stands for the rest.
pub const MAX_SHOWN_DIAGNOSTICS: usize = 50;

/// How much of a message is kept: messages quote the offending value, which can be as long as
/// the file.
const MAX_MESSAGE_CHARS: usize = 400;

/// `message` cut to [`MAX_MESSAGE_CHARS`], saying how much was left out.
fn shorten(message: String) -> String {
    let total = message.chars().count();
    if total <= MAX_MESSAGE_CHARS {
        return message;
    }
    let keep: String = message.chars().take(MAX_MESSAGE_CHARS).collect();
    format!("{keep}... ({} more characters)", total - MAX_MESSAGE_CHARS)
}

/// Whether the file can be used as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The file is refused.
    Error,
    /// The file is used, but probably not as meant (a value k3s reads differently, a key
    /// passed to k3s unchecked).
    Warning,
}

/// One problem in the cluster file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
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
        if self.severity == Severity::Warning {
            f.write_str("warning: ")?;
        }
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

/// The problems found in one file, in file order: the first [`MAX_KEPT_DIAGNOSTICS`] found, and
/// how many more there were.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Diagnostics(pub Vec<Diagnostic>, #[serde(skip)] pub(crate) usize);

impl Diagnostics {
    /// How many are kept (see [`Diagnostics::omitted`] for the others).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty() && self.1 == 0
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Diagnostic> {
        self.0.iter()
    }

    /// How many were found beyond the kept ones.
    pub fn omitted(&self) -> usize {
        self.1
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.severity == Severity::Error)
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.severity == Severity::Warning)
    }
}

/// One line per diagnostic (plus its hint), at most [`MAX_SHOWN_DIAGNOSTICS`] of them.
impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().take(MAX_SHOWN_DIAGNOSTICS).enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        let hidden = self.0.len().saturating_sub(MAX_SHOWN_DIAGNOSTICS) + self.1;
        if hidden > 0 {
            write!(f, "\n... and {hidden} more (fix the ones above and run again)")?;
        }
        Ok(())
    }
}

/// Where a value was written in the cluster file, for messages about it that come later (a key
/// file that does not exist when k3node connects). Formats as `file:line:col`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Location {
    /// The file as diagnostics name it (escaped, see [`crate::cluster::escape_file_name`]).
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

impl Location {
    /// A diagnostic at this place.
    pub fn diagnostic(
        &self,
        severity: Severity,
        field: impl Into<String>,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> Diagnostic {
        Diagnostic {
            severity,
            file: self.file.clone(),
            line: self.line,
            column: self.column,
            field: field.into(),
            message: message.into(),
            hint,
        }
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
    errors: usize,
    omitted: usize,
    /// What `error` and `warning` hand out once the list is full, so that callers can still add
    /// a hint; it is never reported.
    discarded: Diagnostic,
}

impl Sink {
    /// `file` is the name as the user gave it; it is escaped here, once for every diagnostic.
    pub fn new(file: &str) -> Self {
        let file = super::source::escape_file_name(file);
        let discarded = Diagnostic {
            severity: Severity::Error,
            file: String::new(),
            line: 0,
            column: 0,
            field: String::new(),
            message: String::new(),
            hint: None,
        };
        Sink { file, list: Vec::new(), errors: 0, omitted: 0, discarded }
    }

    pub fn location(&self, at: Pos) -> Location {
        Location { file: self.file.clone(), line: at.line, column: at.column }
    }

    pub fn error(&mut self, at: Pos, field: impl Into<String>, message: impl Into<String>) -> &mut Diagnostic {
        self.errors += 1;
        self.push(Severity::Error, at, field.into(), message.into())
    }

    pub fn warning(&mut self, at: Pos, field: impl Into<String>, message: impl Into<String>) -> &mut Diagnostic {
        self.push(Severity::Warning, at, field.into(), message.into())
    }

    fn push(&mut self, severity: Severity, at: Pos, field: String, message: String) -> &mut Diagnostic {
        if self.list.len() >= MAX_KEPT_DIAGNOSTICS {
            self.omitted += 1;
            return &mut self.discarded;
        }
        self.list.push(Diagnostic {
            severity,
            file: self.file.clone(),
            line: at.line,
            column: at.column,
            field: shorten(field),
            message: shorten(message),
            hint: None,
        });
        let last = self.list.len() - 1;
        &mut self.list[last]
    }

    /// Whether an error (not a warning) was reported, kept or not.
    pub fn has_errors(&self) -> bool {
        self.errors > 0
    }

    /// The diagnostics in file order; a stable sort keeps the reading order for equal positions.
    pub fn finish(mut self) -> Diagnostics {
        self.list.sort_by_key(|d| (d.line, d.column));
        Diagnostics(self.list, self.omitted)
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
        sink.warning(Pos { line: 13, column: 1 }, "spec.k3s.extraConfig.x", "passed to k3s unchecked");
        let d = sink.finish();
        assert_eq!(
            d.to_string(),
            "cluster.yaml:3:1: syntax error\n  hint: fix it\n\
             cluster.yaml:12:7: spec.hosts[1].address: \"10.0.0.300\" is not a valid IP address or DNS name\n\
             cluster.yaml:13:1: warning: spec.k3s.extraConfig.x: passed to k3s unchecked"
        );
    }

    #[test]
    fn only_the_first_diagnostics_are_kept_and_shown_and_the_rest_counted() {
        let mut sink = Sink::new("big.yaml");
        for i in 0..MAX_KEPT_DIAGNOSTICS + 500 {
            sink.error(Pos { line: i + 1, column: 1 }, "x", "bad").hint("still fine to call");
        }
        assert!(sink.has_errors());
        let d = sink.finish();
        assert_eq!((d.len(), d.omitted()), (MAX_KEPT_DIAGNOSTICS, 500));
        let text = d.to_string();
        assert_eq!(text.lines().count(), 2 * MAX_SHOWN_DIAGNOSTICS + 1, "each with its hint");
        assert!(text.ends_with("... and 1450 more (fix the ones above and run again)"), "{text}");
    }

    #[test]
    fn long_messages_and_fields_are_cut_saying_how_much_is_missing() {
        let mut sink = Sink::new("f.yaml");
        sink.error(Pos::START, "k".repeat(500), format!("{:?} is not valid", "v".repeat(1000)));
        let d = sink.finish();
        assert!(d.0[0].message.ends_with("... (615 more characters)"), "{}", d.0[0].message);
        assert_eq!(d.0[0].field.chars().count(), MAX_MESSAGE_CHARS + "... (100 more characters)".len());
    }

    #[test]
    fn warnings_alone_are_not_errors_and_file_names_are_escaped() {
        let mut sink = Sink::new("a\nb.yaml");
        sink.warning(Pos::START, "", "careful");
        assert!(!sink.has_errors());
        assert_eq!(sink.finish().to_string(), "a\\nb.yaml:1:1: warning: careful");
    }
}
