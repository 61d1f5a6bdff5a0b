//! The username a client certificate carries: the subject's common name
//! (CN), as Mosquitto's `use_identity_as_username` takes it.
//!
//! rustls has already checked the chain up to the configured client CA
//! when this runs, so the bytes are a CA-signed certificate; the reader is
//! strict all the same (definite DER lengths only, every read bounded by
//! what is left), since a CA may sign whatever a requester put in the
//! subject. Only the path to the subject is walked; nothing else of the
//! certificate is interpreted here.

use thiserror::Error;

/// Why a client certificate gives no usable username.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CertIdentityError {
    /// No certificate on a listener that takes usernames from them.
    #[error("the client presented no certificate")]
    NoCertificate,
    /// The DER does not parse; the part that failed.
    #[error("the certificate is not valid DER: {0}")]
    Malformed(&'static str),
    /// No CN in the subject.
    #[error("the certificate's subject has no common name")]
    NoCommonName,
    /// Mosquitto takes the first; which one is "first" depends on how the
    /// subject was written, so the gate refuses rather than guess.
    #[error("the certificate's subject has more than one common name")]
    SeveralCommonNames,
    /// A CN string type the gate does not read (its DER tag).
    #[error("the common name is a string type (tag 0x{0:02x}) other than UTF-8, printable or IA5")]
    StringType(u8),
    /// A CN that is not UTF-8.
    #[error("the common name is not valid UTF-8")]
    Utf8,
    /// An empty CN.
    #[error("the common name is empty")]
    Empty,
    /// `+` and `#` are MQTT wildcards and `/` separates topic levels: a
    /// username holding one would reach other users' topics through `%u`
    /// patterns. Control characters have no place in a name either.
    #[error("the common name contains {0:?}")]
    ForbiddenCharacter(char),
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const INTEGER: u8 = 0x02;
const VERSION: u8 = 0xa0;
const UTF8_STRING: u8 = 0x0c;
const PRINTABLE_STRING: u8 = 0x13;
const IA5_STRING: u8 = 0x16;

/// id-at-commonName, 2.5.4.3.
const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

/// One DER element: its tag, its contents, and what follows it.
fn element(input: &[u8]) -> Result<(u8, &[u8], &[u8]), CertIdentityError> {
    let bad = CertIdentityError::Malformed;
    let (&tag, rest) = input.split_first().ok_or(bad("truncated tag"))?;
    let (&first, mut rest) = rest.split_first().ok_or(bad("truncated length"))?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        // 0x80 is BER's indefinite length, which DER forbids; certificates
        // never need more than four length bytes.
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return Err(bad("unsupported length encoding"));
        }
        let (bytes, after) = rest
            .split_at_checked(count)
            .ok_or(bad("truncated length"))?;
        rest = after;
        bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    let (contents, after) = rest.split_at_checked(len).ok_or(bad("truncated element"))?;
    Ok((tag, contents, after))
}

/// The contents of the next element, which must carry `tag`.
fn expect<'a>(
    input: &'a [u8],
    tag: u8,
    what: &'static str,
) -> Result<(&'a [u8], &'a [u8]), CertIdentityError> {
    let (found, contents, rest) = element(input)?;
    if found != tag {
        return Err(CertIdentityError::Malformed(what));
    }
    Ok((contents, rest))
}

/// The subject Name of a DER certificate.
fn subject(der: &[u8]) -> Result<&[u8], CertIdentityError> {
    let (certificate, _) = expect(der, SEQUENCE, "certificate is not a SEQUENCE")?;
    let (tbs, _) = expect(certificate, SEQUENCE, "tbsCertificate is not a SEQUENCE")?;
    let mut rest = tbs;
    if rest.first() == Some(&VERSION) {
        rest = element(rest)?.2;
    }
    let (_, rest) = expect(rest, INTEGER, "no serial number")?;
    let (_, rest) = expect(rest, SEQUENCE, "no signature algorithm")?;
    let (_, rest) = expect(rest, SEQUENCE, "no issuer")?;
    let (_, rest) = expect(rest, SEQUENCE, "no validity")?;
    let (subject, _) = expect(rest, SEQUENCE, "no subject")?;
    Ok(subject)
}

/// The username of a client certificate (DER): the subject's only common
/// name, checked as a username.
pub fn certificate_username(der: &[u8]) -> Result<String, CertIdentityError> {
    let mut rdns = subject(der)?;
    let mut found: Option<(u8, &[u8])> = None;
    while !rdns.is_empty() {
        let (rdn, after) = expect(rdns, SET, "subject entry is not a SET")?;
        rdns = after;
        let mut attributes = rdn;
        while !attributes.is_empty() {
            let (attribute, after) = expect(attributes, SEQUENCE, "attribute is not a SEQUENCE")?;
            attributes = after;
            let (oid, value) = expect(attribute, OID, "attribute type is not an OID")?;
            if oid != COMMON_NAME {
                continue;
            }
            if found.is_some() {
                return Err(CertIdentityError::SeveralCommonNames);
            }
            let (tag, contents, _) = element(value)?;
            found = Some((tag, contents));
        }
    }
    let (tag, contents) = found.ok_or(CertIdentityError::NoCommonName)?;
    if !matches!(tag, UTF8_STRING | PRINTABLE_STRING | IA5_STRING) {
        return Err(CertIdentityError::StringType(tag));
    }
    let name = std::str::from_utf8(contents).map_err(|_| CertIdentityError::Utf8)?;
    check_username(name)?;
    Ok(name.to_string())
}

/// Whether a certificate's name may serve as a username.
fn check_username(name: &str) -> Result<(), CertIdentityError> {
    if name.is_empty() {
        return Err(CertIdentityError::Empty);
    }
    if let Some(c) = name
        .chars()
        .find(|c| matches!(c, '+' | '#' | '/') || c.is_control())
    {
        return Err(CertIdentityError::ForbiddenCharacter(c));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DER element with a definite length.
    fn der(tag: u8, contents: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = contents.len();
        if len < 0x80 {
            out.push(u8::try_from(len).unwrap());
        } else {
            let bytes: Vec<u8> = len
                .to_be_bytes()
                .into_iter()
                .skip_while(|b| *b == 0)
                .collect();
            out.push(0x80 | u8::try_from(bytes.len()).unwrap());
            out.extend(bytes);
        }
        out.extend_from_slice(contents);
        out
    }

    fn attribute(oid: &[u8], tag: u8, value: &[u8]) -> Vec<u8> {
        der(
            SET,
            &der(SEQUENCE, &[der(OID, oid), der(tag, value)].concat()),
        )
    }

    /// A certificate shell whose subject holds `entries`.
    fn certificate(entries: &[Vec<u8>]) -> Vec<u8> {
        let tbs = [
            der(VERSION, &der(INTEGER, &[2])),
            der(INTEGER, &[1]),
            der(SEQUENCE, &[]),
            der(SEQUENCE, &attribute(COMMON_NAME, UTF8_STRING, b"issuer")),
            der(SEQUENCE, &[]),
            der(SEQUENCE, &entries.concat()),
            // A long element after the subject, to exercise long lengths.
            der(SEQUENCE, &[0u8; 300]),
        ]
        .concat();
        der(
            SEQUENCE,
            &[der(SEQUENCE, &tbs), der(SEQUENCE, &[])].concat(),
        )
    }

    const ORGANIZATION: &[u8] = &[0x55, 0x04, 0x0a];

    #[test]
    fn the_subject_common_name_is_the_username() {
        let cert = certificate(&[
            attribute(ORGANIZATION, UTF8_STRING, b"veil"),
            attribute(COMMON_NAME, PRINTABLE_STRING, b"devA"),
        ]);
        assert_eq!(certificate_username(&cert), Ok("devA".into()));
    }

    #[test]
    fn names_that_are_no_usernames_are_refused() {
        let refused = |name: &[u8]| {
            certificate_username(&certificate(&[attribute(COMMON_NAME, UTF8_STRING, name)]))
        };
        assert_eq!(refused(b""), Err(CertIdentityError::Empty));
        for (name, c) in [
            (&b"dev+"[..], '+'),
            (b"#", '#'),
            (b"a/b", '/'),
            (b"a\nb", '\n'),
        ] {
            assert_eq!(refused(name), Err(CertIdentityError::ForbiddenCharacter(c)));
        }
        assert_eq!(refused(&[0xff]), Err(CertIdentityError::Utf8));
        let bmp = certificate(&[attribute(COMMON_NAME, 0x1e, &[0, b'a'])]);
        assert_eq!(
            certificate_username(&bmp),
            Err(CertIdentityError::StringType(0x1e))
        );
        let none = certificate(&[attribute(ORGANIZATION, UTF8_STRING, b"veil")]);
        assert_eq!(
            certificate_username(&none),
            Err(CertIdentityError::NoCommonName)
        );
        let two = certificate(&[
            attribute(COMMON_NAME, UTF8_STRING, b"devA"),
            attribute(COMMON_NAME, UTF8_STRING, b"server-a"),
        ]);
        assert_eq!(
            certificate_username(&two),
            Err(CertIdentityError::SeveralCommonNames)
        );
    }

    #[test]
    fn truncated_and_indefinite_encodings_are_refused() {
        let cert = certificate(&[attribute(COMMON_NAME, UTF8_STRING, b"devA")]);
        for cut in 0..cert.len() {
            assert!(
                matches!(
                    certificate_username(&cert[..cut]),
                    Err(CertIdentityError::Malformed(_))
                ),
                "{cut}"
            );
        }
        assert!(matches!(
            certificate_username(&[SEQUENCE, 0x80, 0, 0]),
            Err(CertIdentityError::Malformed(_))
        ));
    }
}
