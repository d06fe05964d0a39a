//! Which build this is: the extensions (Cargo features) compiled in, and the
//! flavor they add up to. `berth --version` prints it.

/// Every extension the project has, in the order `--version` lists them.
pub const EXTENSIONS: &[&str] = &["metrics", "otel", "scan"];

/// The extensions compiled into this binary.
pub fn features() -> Vec<&'static str> {
    EXTENSIONS.iter().copied().filter(|name| enabled(name)).collect()
}

fn enabled(name: &str) -> bool {
    (name == "metrics" && cfg!(feature = "metrics"))
        || (name == "otel" && cfg!(feature = "otel"))
        || (name == "scan" && cfg!(feature = "scan"))
}

/// `minimal` (no extension), `full` (every extension) or `custom`.
pub fn flavor() -> &'static str {
    match features().len() {
        0 => "minimal",
        n if n == EXTENSIONS.len() => "full",
        _ => "custom",
    }
}

/// The line `berth --version` prints after the name.
pub fn version_line() -> String {
    let features = features();
    let list = if features.is_empty() { "none".to_owned() } else { features.join(", ") };
    format!("{} (flavor: {}; extensions: {list})", env!("CARGO_PKG_VERSION"), flavor())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flavor_follows_the_features() {
        let on = features();
        assert_eq!(on.contains(&"metrics"), cfg!(feature = "metrics"));
        assert_eq!(on.contains(&"otel"), cfg!(feature = "otel"));
        assert_eq!(on.contains(&"scan"), cfg!(feature = "scan"));
        let expected = if on.is_empty() {
            "minimal"
        } else if on.len() == EXTENSIONS.len() {
            "full"
        } else {
            "custom"
        };
        assert_eq!(flavor(), expected);
        assert!(version_line().contains(expected), "{}", version_line());
    }
}
