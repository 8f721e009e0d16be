//! How every husk binary prints an error: the error and its causes on one
//! line, `a: b: c`. Messages never repeat their source (thiserror's
//! `#[source]` is printed here, once).

/// An error and its causes, separated by `: `.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        // A transparent wrapper shows its source's text already.
        if !s.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("cannot write x")]
    struct Outer(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error(transparent)]
    struct Transparent(#[from] Outer);

    #[test]
    fn causes_on_one_line() {
        let inner = std::io::Error::other("disk full");
        assert_eq!(super::chain(&Outer(inner)), "cannot write x: disk full");
    }

    #[test]
    fn transparent_wrappers_do_not_repeat() {
        let e = Transparent(Outer(std::io::Error::other("disk full")));
        assert_eq!(super::chain(&e), "cannot write x: disk full");
    }
}
