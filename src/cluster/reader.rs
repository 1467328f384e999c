//! A small typed reader over marked-yaml's node tree. It knows the field path and the position of
//! every value, and reports into a [`Sink`] instead of stopping at the first problem (which is
//! why serde is not used here: it gives up after one error).

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode, MarkedSequenceNode};
use marked_yaml::Node;

use super::diagnostic::{Pos, Sink};

/// `parent.key`, or `parent["key"]` when the key would make the path ambiguous (label keys
/// such as `node.kubernetes.io/x`).
pub(crate) fn child(parent: &str, key: &str) -> String {
    let plain = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '+');
    match (parent.is_empty(), plain) {
        (true, true) => key.to_string(),
        (false, true) => format!("{parent}.{key}"),
        (_, false) => format!("{parent}[{key:?}]"),
    }
}

pub(crate) fn index(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

/// Plain `~`, `null` or nothing: YAML's null. A quoted "" is an (empty) string, not null.
pub(crate) fn is_null(node: &Node) -> bool {
    match node {
        Node::Scalar(s) => is_null_scalar(s),
        _ => false,
    }
}

fn is_null_scalar(s: &MarkedScalarNode) -> bool {
    // The loader runs with prevent_coercion, so may_coerce() is true exactly for plain scalars.
    s.may_coerce() && matches!(s.as_str(), "" | "~" | "null" | "Null" | "NULL")
}

pub(crate) fn is_plain(s: &MarkedScalarNode) -> bool {
    s.may_coerce()
}

pub(crate) fn kind_name(node: &Node) -> &'static str {
    match node {
        Node::Mapping(_) => "a mapping",
        Node::Sequence(_) => "a list",
        Node::Scalar(s) if is_null_scalar(s) => "nothing (null)",
        Node::Scalar(s) if is_plain(s) && s.as_str().parse::<f64>().is_ok() => "a number",
        Node::Scalar(s)
            if is_plain(s) && matches!(s.as_str(), "true" | "false" | "True" | "False" | "TRUE" | "FALSE") =>
        {
            "a boolean"
        }
        Node::Scalar(_) => "a string",
    }
}

/// One `key: value` of a mapping, with the path of the value.
#[derive(Debug, Clone)]
pub(crate) struct Entry<'n> {
    pub key: &'n MarkedScalarNode,
    pub value: &'n Node,
    pub path: String,
}

impl<'n> Entry<'n> {
    pub fn key_pos(&self) -> Pos {
        Pos::of_span(self.key.span())
    }

    /// Where the value is; for an empty value the parser's marker points at the next token,
    /// possibly lines below, so the key is the better place.
    pub fn value_pos(&self) -> Pos {
        if is_null(self.value) {
            self.key_pos()
        } else {
            Pos::of_node(self.value)
        }
    }

    pub fn is_null(&self) -> bool {
        is_null(self.value)
    }
}

/// Words longer than this get no "did you mean" (see [`did_you_mean`]).
const MAX_SUGGESTION_INPUT: usize = 64;

/// The closest of `candidates` to `word`, if close enough to be worth suggesting.
pub(crate) fn did_you_mean<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    // Compare with case, `_` and `-` ignored first: `key_path`, `keypath` and `Key-Path` are
    // all certainly `keyPath`.
    let squash = |s: &str| -> String {
        s.trim_start_matches('-').chars().filter(|c| *c != '_' && *c != '-').flat_map(char::to_lowercase).collect()
    };
    let w = squash(word);
    if let Some(exact) = candidates.iter().find(|c| squash(c) == w) {
        return Some(exact);
    }
    // Edit distance costs length × length for every candidate: a long word is no typo of a field
    // name, and comparing it would make many long keys quadratic in the file size.
    if w.chars().count() > MAX_SUGGESTION_INPUT {
        return None;
    }
    // A cut-short value (`wireguard` for `wireguard-native`) scores low on edit distance.
    if w.len() >= 4 {
        if let Some(longer) = candidates.iter().find(|c| squash(c).starts_with(&w)) {
            return Some(longer);
        }
    }
    candidates
        .iter()
        .map(|c| (strsim::normalized_damerau_levenshtein(&w, &squash(c)), *c))
        .filter(|(score, _)| *score >= 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
        .or_else(|| {
            // Short words get low normalized scores for a single typo.
            candidates.iter().find(|c| strsim::damerau_levenshtein(&w, &squash(c)) <= 1).copied()
        })
}

/// What to say about a key the schema does not know: `None` for the generic message.
pub(crate) type UnknownHook<'h> = &'h dyn Fn(&str) -> Option<(String, Option<String>)>;

pub(crate) fn no_hook(_: &str) -> Option<(String, Option<String>)> {
    None
}

/// The known fields of one mapping; unknown keys are reported when it is built.
pub(crate) struct Fields<'n> {
    entries: Vec<Entry<'n>>,
    pos: Pos,
    path: String,
    /// Fields offered as "did you mean" for a misspelt key: reporting them as missing too
    /// would say the same thing twice.
    suggested: Vec<String>,
}

impl<'n> Fields<'n> {
    pub fn new(
        sink: &mut Sink,
        map: &'n MarkedMappingNode,
        path: &str,
        known: &[&str],
        hook: UnknownHook<'_>,
    ) -> Fields<'n> {
        let mut entries = Vec::new();
        let mut suggested = Vec::new();
        for (key, value) in map.iter() {
            let name = key.as_str();
            let field = child(path, name);
            if known.contains(&name) {
                entries.push(Entry { key, value, path: field });
                continue;
            }
            let at = Pos::of_span(key.span());
            if let Some((message, hint)) = hook(name) {
                let d = sink.error(at, field, message);
                if let Some(h) = hint {
                    d.hint(h);
                }
                continue;
            }
            let message = match did_you_mean(name, known) {
                Some(close) => {
                    suggested.push(close.to_string());
                    format!("unknown field `{name}`, did you mean `{close}`?")
                }
                None => format!("unknown field `{name}`"),
            };
            sink.error(at, field, message).hint(format!("fields allowed here: {}", known.join(", ")));
        }
        Fields { entries, pos: Pos::of_map(map), path: path.to_string(), suggested }
    }

    /// The field, unless absent or null (an empty optional field means "use the default").
    pub fn get(&self, name: &str) -> Option<&Entry<'n>> {
        self.entries.iter().find(|e| e.key.as_str() == name && !e.is_null())
    }

    /// Like [`get`](Self::get), but does not skip a null value.
    pub fn get_raw(&self, name: &str) -> Option<&Entry<'n>> {
        self.entries.iter().find(|e| e.key.as_str() == name)
    }

    /// The field, reporting it when missing or empty.
    pub fn required(&self, sink: &mut Sink, name: &str, what: &str) -> Option<&Entry<'n>> {
        match self.get_raw(name) {
            None if self.suggested.iter().any(|s| s == name) => None,
            None => {
                sink.error(self.pos, child(&self.path, name), format!("required field `{name}` is missing ({what})"));
                None
            }
            Some(e) if e.is_null() => {
                sink.error(e.key_pos(), &e.path, format!("`{name}` must not be empty ({what})"));
                None
            }
            Some(e) => Some(e),
        }
    }
}

/// The value as a mapping, or a report of what was found instead.
pub(crate) fn mapping<'n>(sink: &mut Sink, e: &Entry<'n>, what: &str) -> Option<&'n MarkedMappingNode> {
    match e.value {
        Node::Mapping(m) => Some(m),
        other => {
            sink.error(e.value_pos(), &e.path, format!("must be a mapping ({what}), found {}", kind_name(other)));
            None
        }
    }
}

pub(crate) fn sequence<'n>(sink: &mut Sink, e: &Entry<'n>, what: &str) -> Option<&'n MarkedSequenceNode> {
    match e.value {
        Node::Sequence(s) => Some(s),
        other => {
            sink.error(e.value_pos(), &e.path, format!("must be a list ({what}), found {}", kind_name(other)));
            None
        }
    }
}

/// A scalar read as text. Plain numbers and booleans are accepted as their text: a user name
/// `1000` or a label value `true` is what the user meant.
pub(crate) fn scalar<'n>(sink: &mut Sink, node: &'n Node, path: &str, at: Pos) -> Option<&'n MarkedScalarNode> {
    match node {
        Node::Scalar(s) if !is_null_scalar(s) => Some(s),
        other => {
            sink.error(at, path, format!("must be a string, found {}", kind_name(other)));
            None
        }
    }
}

pub(crate) fn string(sink: &mut Sink, e: &Entry<'_>) -> Option<String> {
    let s = scalar(sink, e.value, &e.path, e.value_pos())?;
    if s.as_str().trim().is_empty() {
        sink.error(e.value_pos(), &e.path, "must not be empty");
        return None;
    }
    Some(s.as_str().to_string())
}

/// `true` or `false`, unquoted (a quoted "true" is a string: k3node's own switches are YAML booleans).
pub(crate) fn boolean(sink: &mut Sink, e: &Entry<'_>) -> Option<bool> {
    match e.value {
        Node::Scalar(s) if is_plain(s) && matches!(s.as_str(), "true" | "false") => Some(s.as_str() == "true"),
        other => {
            sink.error(e.value_pos(), &e.path, format!("must be true or false, found {}", kind_name(other)));
            None
        }
    }
}

pub(crate) fn port(sink: &mut Sink, e: &Entry<'_>) -> Option<u16> {
    let text = match e.value {
        Node::Scalar(s) => s.as_str(),
        other => {
            sink.error(e.value_pos(), &e.path, format!("must be a port number (1-65535), found {}", kind_name(other)));
            return None;
        }
    };
    match parse_port(text) {
        Ok(p) => Some(p),
        Err(message) => {
            sink.error(e.value_pos(), &e.path, message);
            None
        }
    }
}

pub(crate) fn parse_port(text: &str) -> Result<u16, String> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{text:?} is not a port number (1-65535)"));
    }
    match text.parse::<u32>() {
        Ok(n @ 1..=65535) => Ok(n as u16),
        _ => Err(format!("port {text} is out of range (1-65535)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(child("", "spec"), "spec");
        assert_eq!(child("spec", "hosts"), "spec.hosts");
        assert_eq!(index("spec.hosts", 1), "spec.hosts[1]");
        assert_eq!(
            child("spec.hosts[0].labels", "node.kubernetes.io/x"),
            "spec.hosts[0].labels[\"node.kubernetes.io/x\"]"
        );
    }

    #[test]
    fn suggestions() {
        let known = ["name", "address", "role", "ssh", "labels", "taints"];
        assert_eq!(did_you_mean("adress", &known), Some("address"));
        assert_eq!(did_you_mean("rol", &known), Some("role"));
        assert_eq!(did_you_mean("label", &known), Some("labels"));
        assert_eq!(did_you_mean("zzzzzz", &known), None);
        assert_eq!(did_you_mean("key_path", &["user", "keyPath"]), Some("keyPath"));
        assert_eq!(did_you_mean("--cluster_cidr", &["cluster-cidr", "service-cidr"]), Some("cluster-cidr"));
        assert_eq!(did_you_mean(&"address".repeat(20), &known), None, "long words are not compared");
    }

    #[test]
    fn ports() {
        assert_eq!(parse_port("22"), Ok(22));
        assert!(parse_port("0").is_err());
        assert!(parse_port("65536").is_err());
        assert!(parse_port("abc").unwrap_err().contains("not a port"));
        assert!(parse_port("-1").is_err());
    }
}
