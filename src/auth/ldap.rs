//! LDAP authentication with `ldap3`: a service account (from a secret)
//! searches for the user with an RFC 4515-escaped filter, the password is
//! checked by binding as the user on a connection of its own, and groups
//! come from a member-of attribute or a group search. Connections are
//! LDAPS or StartTLS; plain LDAP only when explicitly allowed. Service
//! connections are pooled. An unreachable directory is an error the caller
//! answers with 503, never a reason to let anyone in.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, Scope, SearchEntry};

/// How to reach and search the directory.
#[derive(Debug, Clone)]
pub struct LdapOptions {
    /// `ldaps://host:636` or `ldap://host:389`.
    pub url: String,
    /// Upgrade `ldap://` with StartTLS.
    pub starttls: bool,
    /// Allow `ldap://` without StartTLS (passwords in clear text).
    pub insecure: bool,
    /// Extra PEM CA bundle for the directory's certificate.
    pub ca_file: Option<PathBuf>,
    pub bind_dn: String,
    /// Prints as `***`.
    pub bind_password: crate::config::Secret,
    /// Where users are searched (subtree).
    pub user_base: String,
    /// With `{username}` replaced by the escaped user name, e.g. `(uid={username})`.
    pub user_filter: String,
    /// Attribute on the user entry listing group DNs (e.g. `memberOf`).
    pub group_attribute: Option<String>,
    /// Where groups are searched when `group_attribute` is unset.
    pub group_base: Option<String>,
    /// With `{dn}` replaced by the escaped user DN, e.g. `(member={dn})`.
    pub group_filter: String,
    /// The attribute that names a group (`cn`).
    pub group_name_attribute: String,
    pub connect_timeout: Duration,
    pub operation_timeout: Duration,
    /// Service connections kept open.
    pub pool_size: usize,
}

impl LdapOptions {
    /// The options `[auth.ldap]` describes.
    pub fn from_config(c: &crate::config::LdapConfig) -> LdapOptions {
        LdapOptions {
            url: c.url.clone(),
            starttls: c.starttls,
            insecure: c.insecure,
            ca_file: c.ca_file.clone(),
            bind_dn: c.bind_dn.clone(),
            bind_password: c.bind_password.clone(),
            user_base: c.user_base.clone(),
            user_filter: c.user_filter.clone(),
            group_attribute: c.group_attribute.clone(),
            group_base: c.group_base.clone(),
            group_filter: c.group_filter.clone(),
            group_name_attribute: c.group_name_attribute.clone(),
            connect_timeout: c.connect_timeout.0,
            operation_timeout: c.operation_timeout.0,
            pool_size: c.pool_size,
        }
    }
}

/// The directory could not be asked.
#[derive(Debug, thiserror::Error)]
#[error("LDAP unavailable: {0}")]
pub struct LdapUnavailable(pub String);

/// Why the LDAP settings were refused.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LdapConfigError(pub String);

/// An LDAP authenticator.
pub struct LdapAuth {
    options: LdapOptions,
    tls: Option<Arc<rustls::ClientConfig>>,
    pool: Mutex<Vec<Ldap>>,
}

impl std::fmt::Debug for LdapAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LdapAuth").field("url", &self.options.url).field("user_base", &self.options.user_base).finish()
    }
}

/// The user's first RDN value of a DN (`cn=devs,ou=groups,...` -> `devs`).
fn rdn_value(dn: &str) -> &str {
    let first = dn.split(',').next().unwrap_or(dn);
    first.split_once('=').map(|(_, v)| v.trim()).unwrap_or(first)
}

impl LdapAuth {
    pub fn new(options: LdapOptions) -> Result<LdapAuth, LdapConfigError> {
        let url = options.url.to_ascii_lowercase();
        let secure = url.starts_with("ldaps://") || (url.starts_with("ldap://") && options.starttls);
        if !url.starts_with("ldaps://") && !url.starts_with("ldap://") {
            return Err(LdapConfigError("the URL must start with ldaps:// or ldap://".into()));
        }
        if !secure && !options.insecure {
            return Err(LdapConfigError(
                "ldap:// without StartTLS sends passwords in clear text: use ldaps://, starttls = true, or set \
                 insecure = true to accept that"
                    .into(),
            ));
        }
        if !options.user_filter.contains("{username}") {
            return Err(LdapConfigError("user_filter must contain {username}".into()));
        }
        let tls = if secure { Some(Arc::new(client_config(options.ca_file.as_ref())?)) } else { None };
        Ok(LdapAuth { options, tls, pool: Mutex::new(Vec::new()) })
    }

    async fn connect(&self) -> Result<Ldap, LdapUnavailable> {
        let mut settings = LdapConnSettings::new()
            .set_conn_timeout(self.options.connect_timeout)
            .set_starttls(self.options.starttls && self.options.url.to_ascii_lowercase().starts_with("ldap://"));
        if let Some(tls) = &self.tls {
            settings = settings.set_config(tls.clone());
        }
        let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &self.options.url)
            .await
            .map_err(|e| LdapUnavailable(e.to_string()))?;
        ldap3::drive!(conn);
        ldap.with_timeout(self.options.operation_timeout);
        Ok(ldap)
    }

    async fn service_connection(&self) -> Result<Ldap, LdapUnavailable> {
        loop {
            let pooled = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match pooled {
                Some(mut ldap) => {
                    if !ldap.is_closed() {
                        return Ok(ldap);
                    }
                }
                None => break,
            }
        }
        let mut ldap = self.connect().await?;
        let bound = ldap
            .simple_bind(&self.options.bind_dn, self.options.bind_password.expose())
            .await
            .map_err(|e| LdapUnavailable(e.to_string()))?;
        bound.success().map_err(|e| LdapUnavailable(format!("service bind refused: {e}")))?;
        Ok(ldap)
    }

    fn give_back(&self, ldap: Ldap) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < self.options.pool_size {
            pool.push(ldap);
        }
    }

    /// Check `user`'s `password`. `Ok(None)`: wrong name or password.
    pub async fn authenticate(
        &self,
        user: &str,
        password: &str,
    ) -> Result<Option<(String, Vec<String>)>, LdapUnavailable> {
        // An empty password would be an "unauthenticated bind", which
        // directories accept for any DN (RFC 4513 5.1.2).
        if password.is_empty() || user.is_empty() || user.len() > 256 || user.chars().any(char::is_control) {
            return Ok(None);
        }
        let mut ldap = self.service_connection().await?;
        let outcome = self.lookup(&mut ldap, user).await;
        match &outcome {
            Ok(_) => self.give_back(ldap),
            Err(_) => drop(ldap),
        }
        let Some((dn, mut groups)) = outcome? else { return Ok(None) };
        // The password is checked by binding as the user, on a connection
        // of its own so the pooled ones keep the service identity.
        let mut as_user = self.connect().await?;
        let bound = as_user.simple_bind(&dn, password).await.map_err(|e| LdapUnavailable(e.to_string()))?;
        let _ = as_user.unbind().await;
        if bound.rc != 0 {
            return Ok(None);
        }
        if self.options.group_attribute.is_none() && self.options.group_base.is_some() {
            let mut ldap = self.service_connection().await?;
            let found = self.group_search(&mut ldap, &dn).await;
            if found.is_ok() {
                self.give_back(ldap);
            }
            groups = found?;
        }
        Ok(Some((user.to_owned(), groups)))
    }

    /// The user's DN and (from the member-of attribute) groups.
    async fn lookup(&self, ldap: &mut Ldap, user: &str) -> Result<Option<(String, Vec<String>)>, LdapUnavailable> {
        let filter = self.options.user_filter.replace("{username}", &ldap3::ldap_escape(user));
        let attrs: Vec<&str> = match &self.options.group_attribute {
            Some(a) => vec![a.as_str()],
            None => vec!["1.1"],
        };
        let (entries, _) = ldap
            .search(&self.options.user_base, Scope::Subtree, &filter, attrs)
            .await
            .map_err(|e| LdapUnavailable(e.to_string()))?
            .success()
            .map_err(|e| LdapUnavailable(e.to_string()))?;
        // Zero entries: no such user; more than one: ambiguous, refuse.
        if entries.len() != 1 {
            return Ok(None);
        }
        let entry = SearchEntry::construct(entries.into_iter().next().ok_or_else(|| LdapUnavailable("empty".into()))?);
        let groups = match &self.options.group_attribute {
            Some(a) => entry
                .attrs
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(a))
                .map(|(_, v)| v.iter().map(|dn| rdn_value(dn).to_owned()).collect())
                .unwrap_or_default(),
            None => Vec::new(),
        };
        Ok(Some((entry.dn, groups)))
    }

    async fn group_search(&self, ldap: &mut Ldap, dn: &str) -> Result<Vec<String>, LdapUnavailable> {
        let Some(base) = &self.options.group_base else { return Ok(Vec::new()) };
        let filter = self.options.group_filter.replace("{dn}", &ldap3::ldap_escape(dn));
        let name = self.options.group_name_attribute.as_str();
        let (entries, _) = ldap
            .search(base, Scope::Subtree, &filter, vec![name])
            .await
            .map_err(|e| LdapUnavailable(e.to_string()))?
            .success()
            .map_err(|e| LdapUnavailable(e.to_string()))?;
        Ok(entries
            .into_iter()
            .map(SearchEntry::construct)
            .filter_map(|e| {
                e.attrs.into_iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).and_then(|(_, v)| v.into_iter().next())
            })
            .collect())
    }
}

fn client_config(ca_file: Option<&PathBuf>) -> Result<rustls::ClientConfig, LdapConfigError> {
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| LdapConfigError(format!("cannot read {}: {e}", path.display())))?;
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| LdapConfigError(format!("{}: {e}", path.display())))?;
            roots.add(cert).map_err(|e| LdapConfigError(format!("{}: {e}", path.display())))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| LdapConfigError(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rdn_values() {
        assert_eq!(rdn_value("cn=devs,ou=groups,dc=x"), "devs");
        assert_eq!(rdn_value("devs"), "devs");
    }

    #[test]
    fn filters_escape_hostile_names() {
        // RFC 4515: *, (, ), \ and NUL are escaped.
        assert_eq!(ldap3::ldap_escape("*)(uid=*"), "\\2a\\29\\28uid=\\2a");
        assert_eq!(ldap3::ldap_escape("a\\b"), "a\\5cb");
    }
}
