//! Join tokens and other secrets, and any text around them: the scrubber that stands between the
//! helper and every line it writes never panics, and no secret (of at least 6 characters) is left
//! in what it returns.

use k3node::protocol::Scrubber;

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // The first line is the secret (a K10 token, a password), the rest the text around it.
    let (secret, rest) = text.split_once('\n').unwrap_or((text, ""));
    let scrubber = Scrubber::new([secret.to_string()]);
    let shown = scrubber.scrub(&format!("{rest}{secret}{rest}"));
    // (A secret inside "<redacted>", or with its brackets, could be made by the replacement itself.)
    if secret.len() >= 6 && !"<redacted>".contains(secret) && !secret.contains(['<', '>']) {
        assert!(!shown.contains(secret), "{secret:?} left in {shown:?}");
    }
    let _ = Scrubber::config_values(rest);
}
