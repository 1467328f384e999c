//! Words for counted things in messages: "1 host", "3 hosts". One rule, so no message says
//! "1 nodes".

/// `n` followed by `noun`, with an `s` unless `n` is one.
pub fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    use super::count;

    #[test]
    fn one_is_singular_and_every_other_count_plural() {
        assert_eq!(count(1, "host"), "1 host");
        assert_eq!(count(0, "host"), "0 hosts");
        assert_eq!(count(4, "node"), "4 nodes");
    }
}
