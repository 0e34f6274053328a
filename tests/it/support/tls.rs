//! Test certificates: a private CA and a leaf for `127.0.0.1` and `localhost` it signed.

use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// A new CA, written to `{prefix}ca.pem` in `dir`, and a leaf certificate for 127.0.0.1 and
/// localhost it signed: (certificate, key) as PEM.
pub fn issue(dir: &Path, prefix: &str) -> (String, String) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    std::fs::write(dir.join(format!("{prefix}ca.pem")), ca_cert.pem()).unwrap();
    (leaf_cert.pem(), leaf_key.serialize_pem())
}
