//! Certificates made at test time for TLS tests (PostgreSQL, the MT5 listener): a CA, a server
//! certificate for `localhost` it signed, and an unrelated CA, with the `openssl` crate that
//! native-tls already builds.

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
};
use openssl::x509::{X509, X509NameBuilder};

/// A CA, a server certificate for `localhost` it signed, and a second, unrelated CA.
pub struct Certificates {
    /// The CA that signed `server`.
    pub ca: X509,
    /// A CA that signed nothing here.
    pub other_ca: X509,
    /// The server's certificate, for `localhost`.
    pub server: X509,
    /// The server's private key.
    pub server_key: PKey<Private>,
}

impl Default for Certificates {
    fn default() -> Self {
        Self::new()
    }
}

impl Certificates {
    /// Makes the certificates (P-256 keys, valid for two days).
    pub fn new() -> Self {
        let (ca, ca_key) = self_signed_ca("tickflow test CA");
        let (other_ca, _) = self_signed_ca("tickflow unrelated CA");
        let server_key = key();
        let mut b = X509::builder().unwrap();
        b.set_version(2).unwrap();
        b.set_serial_number(&serial()).unwrap();
        b.set_subject_name(&name("localhost")).unwrap();
        b.set_issuer_name(ca.subject_name()).unwrap();
        b.set_pubkey(&server_key).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::days_from_now(2).unwrap())
            .unwrap();
        b.append_extension(BasicConstraints::new().build().unwrap())
            .unwrap();
        b.append_extension(
            KeyUsage::new()
                .digital_signature()
                .key_encipherment()
                .build()
                .unwrap(),
        )
        .unwrap();
        b.append_extension(ExtendedKeyUsage::new().server_auth().build().unwrap())
            .unwrap();
        let san = SubjectAlternativeName::new()
            .dns("localhost")
            .build(&b.x509v3_context(Some(&ca), None))
            .unwrap();
        b.append_extension(san).unwrap();
        b.sign(&ca_key, MessageDigest::sha256()).unwrap();
        Self {
            ca,
            other_ca,
            server: b.build(),
            server_key,
        }
    }
}

fn self_signed_ca(cn: &str) -> (X509, PKey<Private>) {
    let key = key();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(&serial()).unwrap();
    b.set_subject_name(&name(cn)).unwrap();
    b.set_issuer_name(&name(cn)).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(2).unwrap())
        .unwrap();
    b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
        .unwrap();
    b.append_extension(
        KeyUsage::new()
            .critical()
            .key_cert_sign()
            .crl_sign()
            .build()
            .unwrap(),
    )
    .unwrap();
    b.sign(&key, MessageDigest::sha256()).unwrap();
    (b.build(), key)
}

/// A P-256 key: made at once (an RSA key takes a noticeable while on a slow machine).
fn key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
}

fn serial() -> openssl::asn1::Asn1Integer {
    let mut n = BigNum::new().unwrap();
    n.rand(64, MsbOption::MAYBE_ZERO, false).unwrap();
    n.to_asn1_integer().unwrap()
}

fn name(cn: &str) -> openssl::x509::X509Name {
    let mut n = X509NameBuilder::new().unwrap();
    n.append_entry_by_nid(Nid::COMMONNAME, cn).unwrap();
    n.build()
}
