//! Reading a service env file as systemd reads it (`EnvironmentFile=`), so that two files that
//! give k3s the same variables compare equal, whatever their quoting: install.sh's
//! `K3S_URL='https://...'` and a bare `K3S_URL=https://...` are one setting.

/// The variables of an env file, in file order (a later duplicate wins, as in systemd).
pub(super) fn entries(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in logical_lines(text) {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        let Some((name, raw)) = line.split_once('=') else { continue };
        let name = name.trim().trim_start_matches("export ").trim().to_string();
        let value = unquote(raw.trim_start());
        out.retain(|(n, _)| *n != name);
        out.push((name, value));
    }
    out
}

/// The variables, sorted, as one comparable text.
pub(super) fn canonical(text: &str) -> String {
    let mut vars = entries(text);
    vars.sort();
    serde_json::to_string(&vars).expect("strings always serialize")
}

/// Lines joined where a line ends in an unquoted backslash.
fn logical_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        if let Some(body) = line.strip_suffix('\\') {
            current.push_str(body);
            continue;
        }
        current.push_str(line);
        lines.push(std::mem::take(&mut current));
    }
    if !current.is_empty() {
        lines.push(current);
    }
    lines
}

/// systemd's value syntax: single quotes keep everything, double quotes honour backslash
/// escapes, bare text honours backslashes and loses trailing blanks; segments concatenate.
fn unquote(raw: &str) -> String {
    #[derive(PartialEq)]
    enum State {
        Bare,
        Single,
        Double,
    }
    let mut state = State::Bare;
    let mut out = String::new();
    let mut bare_trailing = 0usize;
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match state {
            State::Bare => match c {
                '\'' => state = State::Single,
                '"' => state = State::Double,
                '\\' => {
                    if let Some(next) = chars.next() {
                        out.push(next);
                    }
                    bare_trailing = 0;
                    continue;
                }
                c => {
                    out.push(c);
                    bare_trailing = if c.is_whitespace() { bare_trailing + c.len_utf8() } else { 0 };
                    continue;
                }
            },
            State::Single => match c {
                '\'' => state = State::Bare,
                c => out.push(c),
            },
            State::Double => match c {
                '"' => state = State::Bare,
                '\\' => match chars.next() {
                    Some(next @ ('"' | '\\' | '`' | '$')) => out.push(next),
                    Some(next) => {
                        out.push('\\');
                        out.push(next);
                    }
                    None => {}
                },
                c => out.push(c),
            },
        }
        bare_trailing = 0;
    }
    out.truncate(out.len() - bare_trailing);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_styles_read_the_same() {
        let install_sh = "K3S_URL='https://10.0.0.1:6443'\nK3S_TOKEN='K10ab::node:pw'\n";
        let bare = "K3S_URL=https://10.0.0.1:6443\nK3S_TOKEN=\"K10ab::node:pw\"\n";
        assert_eq!(canonical(install_sh), canonical(bare));
        assert_eq!(entries(install_sh)[0], ("K3S_URL".into(), "https://10.0.0.1:6443".into()));
    }

    #[test]
    fn quotes_escapes_comments_and_order() {
        let text = "# comment\n; another\nA='it'\"'\"'s'\nB=\"x \\\"y\\\" \\$z\"\nC=plain  \nA=again\n";
        assert_eq!(
            entries(text),
            vec![("B".into(), "x \"y\" $z".into()), ("C".into(), "plain".into()), ("A".into(), "again".into())]
        );
        assert_eq!(entries("EMPTY=\n"), vec![("EMPTY".into(), String::new())]);
        assert_ne!(canonical("A=1\n"), canonical("A=2\n"));
    }
}
