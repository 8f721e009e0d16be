//! Generated container names (`adjective_scientist`, as Docker does) and
//! name validation.

const LEFT: &[&str] = &[
    "admiring",
    "agitated",
    "amazing",
    "bold",
    "brave",
    "busy",
    "clever",
    "cool",
    "dazzling",
    "eager",
    "ecstatic",
    "elegant",
    "epic",
    "festive",
    "focused",
    "gallant",
    "gifted",
    "happy",
    "hopeful",
    "jolly",
    "keen",
    "kind",
    "laughing",
    "loving",
    "lucid",
    "modest",
    "nifty",
    "nostalgic",
    "peaceful",
    "practical",
    "quirky",
    "relaxed",
    "serene",
    "sharp",
    "silly",
    "stoic",
    "sweet",
    "tender",
    "trusting",
    "vibrant",
    "wizardly",
    "youthful",
    "zealous",
];

const RIGHT: &[&str] = &[
    "agnesi",
    "babbage",
    "bell",
    "bohr",
    "curie",
    "darwin",
    "dijkstra",
    "einstein",
    "euler",
    "feynman",
    "franklin",
    "gauss",
    "goldberg",
    "hamilton",
    "hopper",
    "hypatia",
    "johnson",
    "kepler",
    "knuth",
    "lamport",
    "lovelace",
    "meitner",
    "mirzakhani",
    "newton",
    "noether",
    "pascal",
    "ritchie",
    "shannon",
    "thompson",
    "torvalds",
    "turing",
    "wozniak",
    "yalow",
];

/// A name from two words chosen by `seed` bytes.
pub fn generate(seed: &[u8]) -> String {
    let a = usize::from(seed.first().copied().unwrap_or(0)) * 256
        + usize::from(seed.get(1).copied().unwrap_or(0));
    let b = usize::from(seed.get(2).copied().unwrap_or(0)) * 256
        + usize::from(seed.get(3).copied().unwrap_or(0));
    format!("{}_{}", LEFT[a % LEFT.len()], RIGHT[b % RIGHT.len()])
}

/// The generated name of container `id`: seeded by its first four bytes.
pub fn for_id(id: &str) -> String {
    generate(&hex::decode(id.get(..8).unwrap_or("")).unwrap_or_default())
}

/// Docker's container name rule: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() >= 2
        && b.len() <= 128
        && b[0].is_ascii_alphanumeric()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let n = generate(&[1, 2, 3, 4]);
        assert!(valid_name(&n), "{n}");
        assert!(n.contains('_'));
        assert!(valid_name("web-1"));
        assert!(!valid_name("-x"));
        assert!(!valid_name("a"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(""));
    }
}
