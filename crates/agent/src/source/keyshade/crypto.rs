//! keyshade's secret encryption undone: eccrypto 1.1.6 ECIES on secp256k1 (ECDH, SHA-512,
//! HMAC-SHA256, AES-256-CBC with PKCS7), including its leading-zero quirk.
//!
//! A ciphertext is the JSON string `JSON.stringify(await eccrypto.encrypt(...))`:
//! `{"iv":{"type":"Buffer","data":[..16]},"ephemPublicKey":{..65},"ciphertext":{..},"mac":{..32}}`.
//! shared = x of ECDH(private key, ephemPublicKey); h = SHA-512(shared); the MAC key is
//! h[32..64] over iv‖ephemPublicKey‖ciphertext, checked in constant time; the AES key h[0..32].
//!
//! The quirk: eccrypto's pure-JS path hashes x with its leading zero bytes dropped, its
//! native path hashes all 32 bytes. When x[0] == 0 only one form passes the MAC and a reader
//! cannot tell which path wrote the value, so [`decrypt`] tries the full form, then the
//! stripped one. Errors never carry plaintext, key or ciphertext bytes.

use std::fmt;

use aes::cipher::{BlockDecryptMut, KeyIvInit, block_padding::Pkcs7};
use hmac::{Hmac, Mac};
use k256::{PublicKey, SecretKey};
use serde_json::Value as Json;
use sha2::{Digest, Sha256, Sha512};
use tether_core::secret::Value;
use zeroize::Zeroizing;

const IV_LEN: usize = 16;
const MAC_LEN: usize = 32;
const BLOCK: usize = 16;

/// A project's private key: a secp256k1 scalar. Its bytes are wiped on drop and never
/// printed (`Debug` shows `PrivateKey(<redacted>)`).
#[derive(Clone)]
pub struct PrivateKey(SecretKey);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("private key is not 64 hex characters (found {found} characters)")]
    Length { found: usize },
    #[error("private key is not hex: it has a character outside 0-9 a-f A-F")]
    NotHex,
    #[error("private key is not a valid secp256k1 key (zero, or not below the curve order)")]
    OutOfRange,
}

impl PrivateKey {
    /// 64 hex characters, with an optional `0x` and surrounding whitespace.
    pub fn from_hex(text: &str) -> Result<PrivateKey, KeyError> {
        let text = text.trim();
        let text = text
            .strip_prefix("0x")
            .or_else(|| text.strip_prefix("0X"))
            .unwrap_or(text);
        let found = text.chars().count();
        if found != 64 {
            return Err(KeyError::Length { found });
        }
        let mut bytes = Zeroizing::new([0u8; 32]);
        // hex's own error names the offending character; ours names none.
        hex::decode_to_slice(text, &mut bytes[..]).map_err(|_| KeyError::NotHex)?;
        Self::from_bytes(&bytes)
    }

    pub fn from_bytes(bytes: &[u8; 32]) -> Result<PrivateKey, KeyError> {
        SecretKey::from_slice(bytes)
            .map(PrivateKey)
            .map_err(|_| KeyError::OutOfRange)
    }

    /// The matching public key, uncompressed SEC1 (`04‖x‖y`) in hex: not secret, and what
    /// keyshade shows for the project, so `tether check` can print it to tell keys apart.
    pub fn public_key_hex(&self) -> String {
        use k256::elliptic_curve::sec1::ToEncodedPoint;
        hex::encode(self.0.public_key().to_encoded_point(false).as_bytes())
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

/// Constant-time comparison (the key's bytes are never compared byte by byte).
impl PartialEq for PrivateKey {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for PrivateKey {}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    /// Not the JSON eccrypto writes; the detail names the field, never its bytes.
    #[error("not an eccrypto ciphertext: {0}")]
    Format(String),
    #[error("bad MAC: wrong private key or damaged value")]
    BadMac,
    #[error("bad padding: the value passed its MAC but does not decrypt to padded data")]
    BadPadding,
    #[error("decrypted value is not UTF-8 text")]
    NotUtf8,
}

/// Decrypt one keyshade secret value to its plaintext bytes.
pub fn decrypt(key: &PrivateKey, wire: &str) -> Result<Vec<u8>, DecryptError> {
    let parts = Parts::parse(wire)?;
    let x = shared_x(key, &parts.ephem_public_key)?;
    match decrypt_with(&x, SharedForm::Full, &parts) {
        Err(DecryptError::BadMac) if x[0] == 0 => decrypt_with(&x, SharedForm::Stripped, &parts),
        other => other,
    }
}

/// Decrypt one keyshade secret to an entry value. keyshade encrypts JavaScript strings
/// (`Buffer.from(string)`), so a plaintext that is not UTF-8 is an error rather than a value.
pub fn decrypt_utf8(key: &PrivateKey, wire: &str) -> Result<Value, DecryptError> {
    let bytes = decrypt(key, wire)?;
    if std::str::from_utf8(&bytes).is_err() {
        return Err(DecryptError::NotUtf8);
    }
    Ok(Value::new(bytes))
}

/// Which bytes of the shared x-coordinate are hashed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SharedForm {
    /// All 32 bytes (eccrypto's native path, and every x with x[0] != 0).
    Full,
    /// Leading zero bytes dropped (eccrypto's pure-JS path, `BN.toArray()`).
    Stripped,
}

/// The four buffers of a ciphertext, lengths checked.
pub(crate) struct Parts {
    iv: Vec<u8>,
    ephem_public_key: Vec<u8>,
    ciphertext: Vec<u8>,
    mac: Vec<u8>,
}

impl Parts {
    pub(crate) fn parse(wire: &str) -> Result<Parts, DecryptError> {
        // Parsed as a generic value first: serde's own messages for a typed parse can quote
        // the offending number, which is a ciphertext byte.
        let json: Json = serde_json::from_str(wire.trim()).map_err(|e| {
            let what = match e.classify() {
                serde_json::error::Category::Eof => "ends early",
                _ => "syntax error",
            };
            DecryptError::Format(format!(
                "invalid JSON: {what} at line {} column {}",
                e.line(),
                e.column()
            ))
        })?;
        let Json::Object(map) = &json else {
            return Err(DecryptError::Format("not a JSON object".into()));
        };
        let field = |name: &str| -> Result<Vec<u8>, DecryptError> {
            let value = map
                .get(name)
                .ok_or_else(|| DecryptError::Format(format!("field `{name}` is missing")))?;
            buffer(name, value)
        };
        let parts = Parts {
            iv: field("iv")?,
            ephem_public_key: field("ephemPublicKey")?,
            ciphertext: field("ciphertext")?,
            mac: field("mac")?,
        };
        let bad_len = |name: &str, want: &str, found: usize| {
            DecryptError::Format(format!("`{name}` is {found} bytes, want {want}"))
        };
        if parts.iv.len() != IV_LEN {
            return Err(bad_len("iv", "16", parts.iv.len()));
        }
        match (parts.ephem_public_key.len(), parts.ephem_public_key.first()) {
            (65, Some(4)) | (33, Some(2 | 3)) => {}
            (n @ (65 | 33), _) => {
                return Err(DecryptError::Format(format!(
                    "`ephemPublicKey` ({n} bytes) does not start with a SEC1 point tag"
                )));
            }
            (n, _) => return Err(bad_len("ephemPublicKey", "65 (or 33 compressed)", n)),
        }
        if parts.mac.len() != MAC_LEN {
            return Err(bad_len("mac", "32", parts.mac.len()));
        }
        let n = parts.ciphertext.len();
        if n == 0 || n % BLOCK != 0 {
            return Err(bad_len("ciphertext", "a non-zero multiple of 16", n));
        }
        Ok(parts)
    }
}

/// A Node `Buffer` as `JSON.stringify` writes it: `{"type":"Buffer","data":[0..255,...]}`.
fn buffer(name: &str, value: &Json) -> Result<Vec<u8>, DecryptError> {
    let not_buffer = || {
        DecryptError::Format(format!(
            "`{name}` is not a {{\"type\":\"Buffer\",\"data\":[...]}}"
        ))
    };
    let Json::Object(obj) = value else {
        return Err(not_buffer());
    };
    if obj.get("type").and_then(Json::as_str) != Some("Buffer") {
        return Err(not_buffer());
    }
    let Some(Json::Array(data)) = obj.get("data") else {
        return Err(not_buffer());
    };
    data.iter()
        .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(|| DecryptError::Format(format!("`{name}` has an element that is not a byte")))
}

/// The x-coordinate of ECDH(key, ephemeral public key), 32 bytes, wiped on drop.
pub(crate) fn shared_x(
    key: &PrivateKey,
    ephem_public_key: &[u8],
) -> Result<Zeroizing<[u8; 32]>, DecryptError> {
    let public = PublicKey::from_sec1_bytes(ephem_public_key)
        .map_err(|_| DecryptError::Format("`ephemPublicKey` is not a point on secp256k1".into()))?;
    let shared = k256::ecdh::diffie_hellman(key.0.to_nonzero_scalar(), public.as_affine());
    let mut x = Zeroizing::new([0u8; 32]);
    x.copy_from_slice(shared.raw_secret_bytes());
    Ok(x)
}

/// Check the MAC and decrypt with one form of the shared secret.
pub(crate) fn decrypt_with(
    x: &[u8; 32],
    form: SharedForm,
    parts: &Parts,
) -> Result<Vec<u8>, DecryptError> {
    let hashed: &[u8] = match form {
        SharedForm::Full => x,
        SharedForm::Stripped => {
            let zeros = x.iter().take_while(|b| **b == 0).count();
            &x[zeros..]
        }
    };
    let mut h = Zeroizing::new([0u8; 64]);
    h.copy_from_slice(&Sha512::digest(hashed));
    let (enc_key, mac_key) = h.split_at(32);

    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(mac_key)
        .map_err(|_| DecryptError::Format("MAC key length".into()))?;
    mac.update(&parts.iv);
    mac.update(&parts.ephem_public_key);
    mac.update(&parts.ciphertext);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&parts.mac)
        .map_err(|_| DecryptError::BadMac)?;

    cbc::Decryptor::<aes::Aes256>::new_from_slices(enc_key, &parts.iv)
        .map_err(|_| DecryptError::Format("AES key or iv length".into()))?
        .decrypt_padded_vec_mut::<Pkcs7>(&parts.ciphertext)
        .map_err(|_| DecryptError::BadPadding)
}

#[cfg(test)]
#[path = "crypto_tests.rs"]
mod tests;
