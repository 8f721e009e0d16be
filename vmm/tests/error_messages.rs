//! Error messages do not repeat their source: `main` prints the chain once
//! ("a: b: c").

use husk_vmm::config::ConfigError;

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[test]
fn config_parse_error_names_its_cause_once() {
    let source = serde_json::from_str::<serde_json::Value>("{x").unwrap_err();
    let cause = source.to_string();
    let e = ConfigError::Parse {
        path: "/etc/vm.json".into(),
        source,
    };
    assert_eq!(
        chain(&e),
        format!("invalid config file /etc/vm.json: {cause}")
    );
}
