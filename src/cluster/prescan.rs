//! A pass over the YAML tokens before the tree is built, for what the tree builder cannot be
//! trusted with.
//!
//! - Nesting depth. yaml-rust2's parser builds nested collections by recursion (`load_node`),
//!   one stack frame set per level, and caps only flow nesting (`[[[...`, 255 levels); a block
//!   sequence nested 20,000 deep (`- - - ...`) overflows the stack and aborts the process. The
//!   scanner, which produces the tokens, keeps its indentation levels in a vector, so counting
//!   collection starts and ends here is safe at any depth.
//! - A second document. marked-yaml reads the first document and silently drops the rest.
//! - Directives. The scanner accepts any `%NAME ...` line and ignores unknown ones; `%YAML` with
//!   a version other than 1.1 or 1.2, `%TAG` (tags are refused anyway) and unknown directives are
//!   refused instead of silently meaning nothing.
//!
//! Scan errors are left to the tree builder, which reports them with the same scanner.

use yaml_rust2::scanner::{Scanner, TokenType};

use super::diagnostic::{Pos, Sink};

/// The deepest nesting of lists and mappings accepted. A cluster file needs about 6 levels
/// (`spec.hosts[].ssh.bastion.address`); the cap keeps the parser's recursion shallow.
pub const MAX_NESTING: usize = 64;

/// Whether the tree builder may run on `text`; problems are reported into `sink`.
pub(crate) fn check(sink: &mut Sink, text: &str) -> bool {
    let mut depth = 0usize;
    let mut content = false;
    let mut ended = false;
    let mut started = false;
    let mut scanner = Scanner::new(text.chars());
    for token in scanner.by_ref() {
        let at = Pos { line: token.0.line(), column: token.0.col() + 1 };
        match token.1 {
            TokenType::StreamStart(_) | TokenType::StreamEnd => {}
            TokenType::DocumentStart => {
                if content || started {
                    return second_document(sink, at);
                }
                started = true;
            }
            TokenType::DocumentEnd => ended = content || started,
            TokenType::VersionDirective(major, minor) => {
                if content || ended {
                    return second_document(sink, at);
                }
                if (major, minor) != (1, 1) && (major, minor) != (1, 2) {
                    sink.error(at, "", format!("unsupported YAML version {major}.{minor} in the %YAML directive"))
                        .hint("a cluster file is YAML 1.2 (1.1 is read the same way); remove the %YAML line");
                    return false;
                }
            }
            TokenType::TagDirective(handle, _) => {
                if content || ended {
                    return second_document(sink, at);
                }
                // The scanner reports an unknown directive as a %TAG with an empty handle.
                let message = if handle.is_empty() {
                    format!("unknown YAML directive {}", directive_name(text, at.line))
                } else {
                    "%TAG directives are not supported in a cluster file (tags are not)".to_string()
                };
                sink.error(at, "", message).hint("remove the line starting with %");
                return false;
            }
            other => {
                if ended {
                    return second_document(sink, at);
                }
                content = true;
                match other {
                    TokenType::BlockSequenceStart
                    | TokenType::BlockMappingStart
                    | TokenType::FlowSequenceStart
                    | TokenType::FlowMappingStart => {
                        depth += 1;
                        if depth > MAX_NESTING {
                            sink.error(
                                at,
                                "",
                                format!("lists and mappings are nested more than {MAX_NESTING} levels deep here"),
                            )
                            .hint("a cluster file needs only a few levels; is this the right file?");
                            return false;
                        }
                    }
                    TokenType::BlockEnd | TokenType::FlowSequenceEnd | TokenType::FlowMappingEnd => {
                        depth = depth.saturating_sub(1);
                    }
                    _ => {}
                }
            }
        }
    }
    true
}

fn second_document(sink: &mut Sink, at: Pos) -> bool {
    sink.error(
        Pos { line: at.line, column: 1 },
        "",
        "a second YAML document starts here; a cluster file holds exactly one",
    )
    .hint("remove the `---` line and what follows, or move it to its own file");
    false
}

/// `%NAME` as written on `line`, for the message (the scanner does not keep the name).
fn directive_name(text: &str, line: usize) -> String {
    let written = text.lines().nth(line.saturating_sub(1)).unwrap_or("");
    let name: String = written.trim_start().chars().take_while(|c| !c.is_whitespace()).take(40).collect();
    format!("{name:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(text: &str) -> Result<(), String> {
        let mut sink = Sink::new("f.yaml");
        if check(&mut sink, text) {
            Ok(())
        } else {
            Err(sink.finish().to_string())
        }
    }

    #[test]
    fn one_document_passes_with_or_without_markers() {
        assert_eq!(scan("a: 1\n"), Ok(()));
        assert_eq!(scan("# c\n---\na: 1\n"), Ok(()));
        assert_eq!(scan("%YAML 1.2\n---\na: 1\n...\n# end\n"), Ok(()));
        assert_eq!(scan("a: |\n  ---x\n  --- y\n"), Ok(()));
    }

    #[test]
    fn a_second_document_is_found_after_a_marker_or_an_end() {
        assert!(scan("a: 1\n---\nb: 2\n").unwrap_err().starts_with("f.yaml:2:1: a second YAML document"));
        assert!(scan("a: 1\n...\nb: 2\n").unwrap_err().starts_with("f.yaml:3:1: a second YAML document"));
        assert!(scan("---\n---\na: 1\n").unwrap_err().starts_with("f.yaml:2:1: a second YAML document"));
        assert!(scan("a: 1\n...\n%YAML 1.2\n---\nb: 2\n").unwrap_err().starts_with("f.yaml:3:1:"));
    }

    #[test]
    fn deep_nesting_is_refused_before_the_parser_recurses() {
        let deep = "- ".repeat(20_000);
        let err = scan(&deep).unwrap_err();
        assert!(err.starts_with("f.yaml:1:129: lists and mappings are nested more than 64 levels deep"), "{err}");
        let flow = "[".repeat(MAX_NESTING + 1);
        assert!(scan(&flow).unwrap_err().contains("nested more than 64 levels"));
        let ok = format!("{}x{}", "[".repeat(MAX_NESTING), "]".repeat(MAX_NESTING));
        assert_eq!(scan(&ok), Ok(()));
    }

    #[test]
    fn directives_other_than_yaml_1_1_or_1_2_are_refused() {
        assert_eq!(scan("%YAML 1.1\n---\na: 1\n"), Ok(()));
        assert!(scan("%YAML 2.0\n---\na: 1\n").unwrap_err().contains("unsupported YAML version 2.0"));
        assert!(scan("%FOO bar\n---\na: 1\n").unwrap_err().starts_with("f.yaml:1:1: unknown YAML directive \"%FOO\""));
        assert!(scan("%TAG !e! tag:example.com,2000:\n---\na: 1\n").unwrap_err().contains("%TAG directives"));
    }
}
