//! Secrets in configuration: written inline (`password = "..."`) or read
//! from a file at load time (`password = { file = "/run/secrets/pw" }`), the
//! way container platforms mount them. A secret never prints: `Debug`,
//! `Display` and serialization all show `***`.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A secret string.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SecretSource {
    Inline(String),
    File { file: PathBuf },
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        match SecretSource::deserialize(d)? {
            SecretSource::Inline(s) => Ok(Secret(s)),
            SecretSource::File { file } => {
                let text = std::fs::read_to_string(&file).map_err(|e| {
                    serde::de::Error::custom(format!("cannot read secret file {}: {e}", file.display()))
                })?;
                // Files written by `echo` end in a newline that is not part of the secret.
                Ok(Secret(text.trim_end_matches(['\n', '\r']).to_owned()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    struct WithSecret {
        password: Secret,
    }

    #[test]
    fn inline_file_and_redaction() {
        let w: WithSecret = toml::from_str("password = \"hunter2\"").unwrap();
        assert_eq!(w.password.expose(), "hunter2");
        assert_eq!(format!("{w:?}"), "WithSecret { password: *** }");
        assert!(!toml::to_string(&w).unwrap().contains("hunter2"));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "from-file\n").unwrap();
        let w: WithSecret =
            toml::from_str(&format!("password = {{ file = {:?} }}", path.display().to_string())).unwrap();
        assert_eq!(w.password.expose(), "from-file");

        let err = toml::from_str::<WithSecret>("password = { file = \"/nonexistent/secret\" }").unwrap_err();
        assert!(err.to_string().contains("password"), "{err}");
    }
}
