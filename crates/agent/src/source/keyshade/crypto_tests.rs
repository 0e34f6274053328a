//! Tests of eccrypto decryption: every vector made by the real eccrypto 1.1.6, both forms of
//! the shared secret, and every way a ciphertext or key can be wrong.

use super::*;
use aes::cipher::{BlockEncryptMut, block_padding::NoPadding};
use k256::elliptic_curve::sec1::ToEncodedPoint;
use serde::Deserialize;

const VECTORS: &str = include_str!("testdata/eccrypto-vectors.json");
const KEY_1: &str = "1111111111111111111111111111111111111111111111111111111111111111";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Vector {
    name: String,
    private_key_hex: String,
    public_key_hex: String,
    plaintext: String,
    plaintext_bytes: usize,
    wire: String,
    shared_x_leading_zero: bool,
    shared_x_hex: String,
    shared_x_bytes_used_by_eccrypto: usize,
    shared_secret_form: String,
}

fn vectors() -> Vec<Vector> {
    serde_json::from_str(VECTORS).unwrap()
}

fn key(hex: &str) -> PrivateKey {
    PrivateKey::from_hex(hex).unwrap()
}

/// eccrypto's encryption (native form), with control over the padding and the ephemeral
/// key's encoding, to make ciphertexts the vectors do not have.
fn encrypt_raw(public_hex: &str, blocks: &[u8], compressed: bool) -> String {
    let public = PublicKey::from_sec1_bytes(&hex::decode(public_hex).unwrap()).unwrap();
    let ephem = loop {
        if let Ok(k) = SecretKey::from_slice(&rand::random::<[u8; 32]>()) {
            break k;
        }
    };
    let ephem_pub = ephem.public_key().to_encoded_point(compressed);
    let shared = k256::ecdh::diffie_hellman(ephem.to_nonzero_scalar(), public.as_affine());
    let h = Sha512::digest(shared.raw_secret_bytes());
    let iv: [u8; 16] = rand::random();
    let mut buf = blocks.to_vec();
    let n = buf.len();
    let ct = cbc::Encryptor::<aes::Aes256>::new_from_slices(&h[..32], &iv)
        .unwrap()
        .encrypt_padded_mut::<NoPadding>(&mut buf, n)
        .unwrap()
        .to_vec();
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&h[32..]).unwrap();
    mac.update(&iv);
    mac.update(ephem_pub.as_bytes());
    mac.update(&ct);
    let mac = mac.finalize().into_bytes();
    let b = |d: &[u8]| serde_json::json!({"type": "Buffer", "data": d});
    serde_json::json!({
        "iv": b(&iv), "ephemPublicKey": b(ephem_pub.as_bytes()), "ciphertext": b(&ct), "mac": b(&mac)
    })
    .to_string()
}

fn pkcs7(plain: &[u8]) -> Vec<u8> {
    let pad = 16 - plain.len() % 16;
    let mut v = plain.to_vec();
    v.extend(std::iter::repeat_n(pad as u8, pad));
    v
}

#[test]
fn every_vector_decrypts_with_the_form_it_names() {
    let vectors = vectors();
    assert_eq!(vectors.len(), 16);
    let mut seen = std::collections::BTreeSet::new();
    for v in &vectors {
        let k = key(&v.private_key_hex);
        assert_eq!(k.public_key_hex(), v.public_key_hex, "{}", v.name);
        let plain = decrypt(&k, &v.wire).unwrap_or_else(|e| panic!("{}: {e}", v.name));
        assert_eq!(plain, v.plaintext.as_bytes(), "{}", v.name);
        assert_eq!(plain.len(), v.plaintext_bytes, "{}", v.name);
        assert_eq!(
            decrypt_utf8(&k, &v.wire).unwrap().expose_str(),
            Some(v.plaintext.as_str())
        );

        let parts = Parts::parse(&v.wire).unwrap();
        let x = shared_x(&k, &parts.ephem_public_key).unwrap();
        assert_eq!(hex::encode(*x), v.shared_x_hex, "{}", v.name);
        assert_eq!(x[0] == 0, v.shared_x_leading_zero, "{}", v.name);
        let (form, other) = match v.shared_secret_form.as_str() {
            "full" => (SharedForm::Full, SharedForm::Stripped),
            "stripped" => (SharedForm::Stripped, SharedForm::Full),
            f => panic!("{}: unknown form {f}", v.name),
        };
        let used = match form {
            SharedForm::Full => 32,
            SharedForm::Stripped => x.iter().skip_while(|b| **b == 0).count(),
        };
        assert_eq!(used, v.shared_x_bytes_used_by_eccrypto, "{}", v.name);
        assert_eq!(decrypt_with(&x, form, &parts).unwrap(), plain, "{}", v.name);
        let with_other = decrypt_with(&x, other, &parts);
        if v.shared_x_leading_zero {
            // Exactly one form passes the MAC.
            assert_eq!(with_other, Err(DecryptError::BadMac), "{}", v.name);
        } else {
            // Without a leading zero both forms are the same bytes.
            assert_eq!(with_other.unwrap(), plain, "{}", v.name);
        }
        seen.insert((v.shared_x_leading_zero, v.shared_secret_form.clone()));
    }
    // The set covers an ordinary value, a JS-path leading zero and a native-path one.
    assert!(seen.contains(&(false, "full".into())));
    assert!(seen.contains(&(true, "stripped".into())));
    assert!(seen.contains(&(true, "full".into())));
}

#[test]
fn two_leading_zero_bytes_are_both_stripped() {
    let v = vectors()
        .into_iter()
        .find(|v| v.name == "leading-zero-two-bytes")
        .unwrap();
    assert!(v.shared_x_hex.starts_with("0000"));
    assert_eq!(v.shared_x_bytes_used_by_eccrypto, 30);
    assert_eq!(
        decrypt(&key(&v.private_key_hex), &v.wire).unwrap(),
        v.plaintext.as_bytes()
    );
}

#[test]
fn a_wrong_key_is_a_bad_mac_that_names_no_secret() {
    let v = &vectors()[6]; // utf8-non-ascii, under KEY_1
    let wrong = "2222222222222222222222222222222222222222222222222222222222222222";
    let err = decrypt(&key(wrong), &v.wire).unwrap_err();
    assert_eq!(err, DecryptError::BadMac);
    let text = format!("{err} {err:?}");
    assert!(text.contains("bad MAC"), "{text}");
    for secret in [wrong, KEY_1, &v.plaintext, &v.wire[..40]] {
        assert!(!text.contains(secret), "{text}");
    }
}

#[test]
fn a_tampered_byte_anywhere_is_refused() {
    let v = &vectors()[5]; // len100
    let k = key(&v.private_key_hex);
    let json: Json = serde_json::from_str(&v.wire).unwrap();
    for field in ["iv", "ephemPublicKey", "ciphertext", "mac"] {
        let len = json[field]["data"].as_array().unwrap().len();
        for at in [0, len / 2, len - 1] {
            let mut tampered = json.clone();
            let byte = &mut tampered[field]["data"][at];
            *byte = Json::from(byte.as_u64().unwrap() ^ 0x01);
            let err = decrypt(&k, &tampered.to_string()).unwrap_err();
            match (field, at) {
                ("ephemPublicKey", 0) => assert!(matches!(err, DecryptError::Format(_))),
                // A changed point is most often off the curve; either way it never decrypts.
                ("ephemPublicKey", _) => assert!(
                    matches!(err, DecryptError::BadMac | DecryptError::Format(_)),
                    "{field}[{at}]: {err}"
                ),
                _ => assert_eq!(err, DecryptError::BadMac, "{field}[{at}]"),
            }
        }
    }
}

#[test]
fn malformed_ciphertexts_say_what_is_wrong_without_bytes() {
    let v = &vectors()[1];
    let k = key(&v.private_key_hex);
    let json: Json = serde_json::from_str(&v.wire).unwrap();
    let with = |f: &dyn Fn(&mut Json)| {
        let mut j = json.clone();
        f(&mut j);
        j.to_string()
    };
    let cases: Vec<(String, &str)> = vec![
        (v.wire[..v.wire.len() / 2].to_string(), "invalid JSON"),
        ("garbage".into(), "invalid JSON"),
        ("".into(), "invalid JSON"),
        ("\"a string\"".into(), "not a JSON object"),
        ("[1,2]".into(), "not a JSON object"),
        (
            with(&|j| drop(j.as_object_mut().unwrap().remove("mac"))),
            "`mac` is missing",
        ),
        (with(&|j| j["iv"] = Json::from("abc")), "`iv` is not a"),
        (
            with(&|j| j["iv"]["type"] = Json::from("Uint8Array")),
            "`iv` is not a",
        ),
        (
            with(&|j| j["ciphertext"]["data"][0] = Json::from(300)),
            "`ciphertext` has an element",
        ),
        (
            with(&|j| j["ciphertext"]["data"][0] = Json::from(-1)),
            "`ciphertext` has an element",
        ),
        (
            with(&|j| j["ciphertext"]["data"][0] = Json::from("x")),
            "`ciphertext` has an element",
        ),
        (
            with(&|j| j["iv"]["data"].as_array_mut().unwrap().truncate(15)),
            "`iv` is 15 bytes",
        ),
        (
            with(&|j| j["mac"]["data"].as_array_mut().unwrap().push(Json::from(1))),
            "`mac` is 33 bytes",
        ),
        (
            with(&|j| {
                j["ephemPublicKey"]["data"]
                    .as_array_mut()
                    .unwrap()
                    .truncate(64)
            }),
            "`ephemPublicKey` is 64 bytes",
        ),
        (
            with(&|j| j["ephemPublicKey"]["data"][0] = Json::from(7)),
            "does not start with a SEC1 point tag",
        ),
        (
            with(&|j| j["ephemPublicKey"]["data"] = Json::from(vec![4u8; 65])),
            "not a point on secp256k1",
        ),
        (
            with(&|j| j["ciphertext"]["data"].as_array_mut().unwrap().truncate(15)),
            "`ciphertext` is 15 bytes",
        ),
        (
            with(&|j| j["ciphertext"]["data"] = serde_json::json!([])),
            "`ciphertext` is 0 bytes",
        ),
    ];
    for (wire, want) in cases {
        let err = decrypt(&k, &wire).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, DecryptError::Format(_)), "{wire}: {text}");
        assert!(text.starts_with("not an eccrypto ciphertext: "), "{text}");
        assert!(text.contains(want), "{wire}: {text} lacks {want}");
        assert!(!text.contains("300"), "{text}");
    }
}

#[test]
fn compressed_ephemeral_keys_and_padding_and_utf8_are_checked() {
    let k = key(KEY_1);
    let public = k.public_key_hex();
    let wire = encrypt_raw(&public, &pkcs7(b"compressed point"), true);
    assert_eq!(decrypt(&k, &wire).unwrap(), b"compressed point");
    let wire = encrypt_raw(&public, &pkcs7(b"uncompressed"), false);
    assert_eq!(decrypt(&k, &wire).unwrap(), b"uncompressed");

    // The MAC passes but the last block does not end in PKCS7 padding.
    let mut bad = pkcs7(b"0123456789");
    *bad.last_mut().unwrap() = 0;
    let err = decrypt(&k, &encrypt_raw(&public, &bad, false)).unwrap_err();
    assert_eq!(err, DecryptError::BadPadding);

    let wire = encrypt_raw(&public, &pkcs7(&[0xff, 0xfe, b's']), false);
    assert_eq!(decrypt(&k, &wire).unwrap(), [0xff, 0xfe, b's']);
    assert_eq!(decrypt_utf8(&k, &wire).unwrap_err(), DecryptError::NotUtf8);
}

#[test]
fn private_keys_parse_from_hex_and_never_print() {
    let k = key(KEY_1);
    for text in [
        format!("0x{KEY_1}"),
        format!("  {KEY_1}\n"),
        format!("0X{}", KEY_1.to_uppercase()),
    ] {
        assert_eq!(PrivateKey::from_hex(&text).unwrap(), k, "{text:?}");
    }
    assert_ne!(key(&"2".repeat(64)), k);
    assert_eq!(format!("{k:?}"), "PrivateKey(<redacted>)");
    assert!(!format!("{:?}", Some(k.clone())).contains("1111"));

    let secret_ish = format!("{}zz", &"ab".repeat(31));
    let cases = [
        ("", KeyError::Length { found: 0 }),
        (&KEY_1[..63], KeyError::Length { found: 63 }),
        (&secret_ish[..], KeyError::NotHex),
        (&"0".repeat(64)[..], KeyError::OutOfRange),
        (
            // The curve order n itself.
            "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141",
            KeyError::OutOfRange,
        ),
    ];
    for (text, want) in cases {
        let err = PrivateKey::from_hex(text).unwrap_err();
        assert_eq!(err, want, "{text:?}");
        let msg = err.to_string();
        assert!(msg.starts_with("private key is not"), "{msg}");
        assert!(!msg.contains("abab") && !msg.contains("zz"), "{msg}");
    }
    // A multi-byte character counts as one, and is not hex.
    assert_eq!(
        PrivateKey::from_hex(&format!("{}é", &KEY_1[..63])).unwrap_err(),
        KeyError::NotHex
    );
}
