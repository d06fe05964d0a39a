//! Which build this is: the extensions (Cargo features) compiled in, and the
//! flavor they add up to. `berth --version` prints it.

/// Every extension the project has, in the order `--version` lists them.
pub const EXTENSIONS: &[&str] = &["metrics", "mirror", "otel", "scan", "search", "ui"];

/// The extensions compiled into this binary.
pub fn features() -> Vec<&'static str> {
    EXTENSIONS.iter().copied().filter(|name| enabled(name)).collect()
}

fn enabled(name: &str) -> bool {
    (name == "metrics" && cfg!(feature = "metrics"))
        || (name == "otel" && cfg!(feature = "otel"))
        || (name == "scan" && cfg!(feature = "scan"))
        || (name == "mirror" && cfg!(feature = "mirror"))
        || (name == "search" && cfg!(feature = "search"))
        || (name == "ui" && cfg!(feature = "ui"))
        || (name == "ui" && cfg!(feature = "ui"))
}

/// The extensions as `GET /v2/_oci/ext/discover` lists them (the OCI
/// extensions convention: name, description, endpoints).
pub fn discover() -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for name in features() {
        let (description, endpoints): (&str, &[&str]) = match name {
            "metrics" => ("Prometheus metrics in the OpenMetrics format", &["/metrics"]),
            "otel" => ("OpenTelemetry traces exported over OTLP/HTTP", &[]),
            "scan" => (
                "Vulnerability reports of stored images (JSON; ?format=cyclonedx or sarif)",
                &["/v2/{name}/_berth/scan/{reference}"],
            ),
            "mirror" => ("Pull-through mirrors of upstream registries under configured prefixes", &[]),
            "search" => (
                "Repositories by name, tags with digests and push times, and image details (JSON)",
                &[
                    "/v2/_berth/search/repositories",
                    "/v2/_berth/search/tags/{name}",
                    "/v2/_berth/search/images/{name}/{reference}",
                ],
            ),
            "ui" => ("Web pages: repositories, tags, image details, sign-in", &["/ui/"]),
            _ => ("", &[]),
        };
        out.push(serde_json::json!({
            "name": format!("_berth.{name}"),
            "description": description,
            "url": "https://example.invalid/berth/blob/main/docs/extensions.md",
            "endpoints": endpoints,
        }));
    }
    out
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
