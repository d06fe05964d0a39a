//! Identity from a verified client certificate (mTLS). The TLS layer has
//! already checked the chain against the client CA and the validity dates;
//! this maps the leaf certificate to a subject and groups.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer as _, X509Certificate};

pub use crate::config::SubjectField;

/// How certificates map to identities.
#[derive(Debug, Clone)]
pub struct MtlsRules {
    pub subject: SubjectField,
    /// For `Uri`: only URIs with this prefix name a subject (the prefix is kept).
    pub uri_prefix: Option<String>,
    /// Take groups from the subject's organizational units.
    pub groups_from_ou: bool,
}

/// Subject and groups of a DER certificate under `rules`.
pub fn identity_of(der: &[u8], rules: &MtlsRules) -> Result<(String, Vec<String>), &'static str> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| "unreadable client certificate")?;
    let sans: Vec<GeneralName<'_>> =
        cert.subject_alternative_name().ok().flatten().map(|ext| ext.value.general_names.clone()).unwrap_or_default();
    let subject = match rules.subject {
        SubjectField::Cn => cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_owned),
        SubjectField::Dns => sans.iter().find_map(|n| match n {
            GeneralName::DNSName(d) => Some((*d).to_owned()),
            _ => None,
        }),
        SubjectField::Uri => sans.iter().find_map(|n| match n {
            GeneralName::URI(u) if rules.uri_prefix.as_deref().is_none_or(|p| u.starts_with(p)) => {
                Some((*u).to_owned())
            }
            _ => None,
        }),
        SubjectField::Email => sans.iter().find_map(|n| match n {
            GeneralName::RFC822Name(e) => Some((*e).to_owned()),
            _ => None,
        }),
    };
    let subject = subject
        .filter(|s| !s.is_empty() && s.len() <= 256 && !s.chars().any(char::is_control))
        .ok_or("the client certificate does not name a subject in the configured field")?;
    let groups = if rules.groups_from_ou {
        cert.subject()
            .iter_organizational_unit()
            .filter_map(|ou| ou.as_str().ok())
            .filter(|g| !g.is_empty() && !g.chars().any(char::is_control))
            .map(str::to_owned)
            .collect()
    } else {
        Vec::new()
    };
    Ok((subject, groups))
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    use super::*;

    fn cert() -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, "alice-cn");
        p.distinguished_name.push(DnType::OrganizationalUnitName, "builders");
        p.subject_alt_names = vec![
            SanType::DnsName("alice.example".try_into().unwrap()),
            SanType::URI("spiffe://other/x".try_into().unwrap()),
            SanType::URI("spiffe://test/alice".try_into().unwrap()),
            SanType::Rfc822Name("alice@example.org".try_into().unwrap()),
        ];
        p.self_signed(&key).unwrap().der().to_vec()
    }

    fn rules(subject: SubjectField, prefix: Option<&str>) -> MtlsRules {
        MtlsRules { subject, uri_prefix: prefix.map(str::to_owned), groups_from_ou: true }
    }

    #[test]
    fn each_field_names_the_subject() {
        let der = cert();
        assert_eq!(identity_of(&der, &rules(SubjectField::Cn, None)).unwrap().0, "alice-cn");
        assert_eq!(identity_of(&der, &rules(SubjectField::Dns, None)).unwrap().0, "alice.example");
        assert_eq!(identity_of(&der, &rules(SubjectField::Uri, None)).unwrap().0, "spiffe://other/x");
        assert_eq!(
            identity_of(&der, &rules(SubjectField::Uri, Some("spiffe://test/"))).unwrap().0,
            "spiffe://test/alice"
        );
        assert_eq!(identity_of(&der, &rules(SubjectField::Email, None)).unwrap().0, "alice@example.org");
        assert_eq!(identity_of(&der, &rules(SubjectField::Cn, None)).unwrap().1, ["builders"]);
        assert!(identity_of(&der, &rules(SubjectField::Uri, Some("spiffe://nowhere/"))).is_err());
        let no_groups = MtlsRules { groups_from_ou: false, ..rules(SubjectField::Cn, None) };
        assert!(identity_of(&der, &no_groups).unwrap().1.is_empty());
        assert!(identity_of(b"garbage", &rules(SubjectField::Cn, None)).is_err());
    }
}
