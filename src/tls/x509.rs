//! Reads one thing from a DER certificate: the issuer's common name and
//! organisation, so that a refused certificate can be named to a person
//! ("certificate not trusted (issuer "CN=Acme Staging CA")"). A minimal
//! walk of RFC 5280's structure rather than a full X.509 crate: this is
//! the only field read, and rustls-webpki does the verifying.

/// One DER element: (tag, content, rest of the input).
fn element(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const VERSION: u8 = 0xa0; // [0] EXPLICIT
/// 2.5.4.3 commonName, 2.5.4.10 organizationName.
const CN: &[u8] = &[0x55, 0x04, 0x03];
const O: &[u8] = &[0x55, 0x04, 0x0a];

/// A directory string as text (UTF8String, PrintableString, IA5String,
/// TeletexString read as Latin-1).
fn text(tag: u8, value: &[u8]) -> Option<String> {
    match tag {
        0x0c | 0x13 | 0x16 => std::str::from_utf8(value).ok().map(str::to_string),
        0x14 => Some(value.iter().map(|&b| char::from(b)).collect()),
        _ => None,
    }
}

/// The issuer of a DER certificate as `CN=…, O=…` (whichever are present),
/// or `None` when it cannot be read.
pub fn issuer(cert: &[u8]) -> Option<String> {
    let (tag, certificate, _) = element(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, tbs, _) = element(certificate)?;
    if tag != SEQUENCE {
        return None;
    }
    let mut rest = tbs;
    let (tag, _, after) = element(rest)?;
    if tag == VERSION {
        rest = after;
    }
    let (_serial, _, rest) = element(rest)?;
    let (_signature, _, rest) = element(rest)?;
    let (tag, name, _) = element(rest)?;
    if tag != SEQUENCE {
        return None;
    }
    let (mut cn, mut o) = (None, None);
    let mut rdns = name;
    while let Some((tag, rdn, next)) = element(rdns) {
        rdns = next;
        if tag != SET {
            continue;
        }
        let mut attrs = rdn;
        while let Some((tag, attr, next)) = element(attrs) {
            attrs = next;
            if tag != SEQUENCE {
                continue;
            }
            let Some((OID, oid, value)) = element(attr) else {
                continue;
            };
            let Some((vtag, value, _)) = element(value) else {
                continue;
            };
            if oid == CN {
                cn = text(vtag, value);
            } else if oid == O {
                o = text(vtag, value);
            }
        }
    }
    let parts: Vec<String> = [("CN", cn), ("O", o)]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={v}")))
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair};

    #[test]
    fn names_the_issuer_of_a_ca_signed_certificate() {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "Acme Staging CA");
        dn.push(DnType::OrganizationName, "Acme");
        ca.distinguished_name = dn;
        let issuer_ca = Issuer::new(ca, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .signed_by(&leaf_key, &issuer_ca)
            .unwrap();
        assert_eq!(
            issuer(leaf.der()).as_deref(),
            Some("CN=Acme Staging CA, O=Acme")
        );
    }

    #[test]
    fn garbage_is_not_a_name() {
        assert_eq!(issuer(b""), None);
        assert_eq!(issuer(&[0x30, 0x82, 0xff]), None, "length past the end");
        assert_eq!(issuer(&[0x30, 0x00]), None);
        for n in 0..64u8 {
            let junk: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37) ^ 0x30).collect();
            let _ = issuer(&junk); // never panics
        }
    }
}
