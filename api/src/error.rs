//! How husk prints an error: the error and its causes on one line,
//! `a: b: c`.

/// An error and its causes, separated by `: `.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn causes_on_one_line() {
        let inner = std::io::Error::other("disk full");
        #[derive(Debug, thiserror::Error)]
        #[error("cannot write x")]
        struct Outer(#[source] std::io::Error);
        assert_eq!(super::chain(&Outer(inner)), "cannot write x: disk full");
    }
}
