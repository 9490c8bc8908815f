//! One signing key, HS256 or ES256: how it signs, how it checks a signature, and what of
//! it is published.
//!
//! ES256 is ECDSA on P-256 with `ring` (the crate rustls already brings): signing costs
//! about 15 µs and verifying about 42 µs on the machine of BENCHMARKS.md, against 171 µs
//! for either with the pure-Rust `p256` behind jsonwebtoken (`examples/es256_bench.rs`).
//! Private keys are PKCS#8 documents made from the OS CSPRNG; signatures are the fixed
//! 64-byte `r ‖ s` form JWS asks for (RFC 7518 §3.4).

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
    UnparsedPublicKey,
};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::model::KeyAlgorithm;
use crate::primitives::{hex, random_bytes, sha256};

/// How a key signs and checks signatures.
enum Signer {
    /// HMAC-SHA256 with the key already absorbed, cloned for each use.
    Hs(Hmac<Sha256>),
    /// A P-256 key pair and its public point (uncompressed SEC1: `04 ‖ x ‖ y`).
    Es { pair: EcdsaKeyPair, public: Vec<u8> },
}

/// A signing key ready to use.
pub(crate) struct SigningKey {
    kid: String,
    algorithm: KeyAlgorithm,
    signer: Signer,
    /// The exact first segment of every token this key signs (base64url of
    /// `{"typ":"JWT","alg":"…","kid":"…"}`): verification compares bytes instead of
    /// parsing a header, which pins the algorithm and the key in one comparison and
    /// leaves no room for `jwk`, `jku`, `x5u`, `x5c` or any other header field.
    header: String,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// Why stored key material could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyMaterialError {
    /// The bytes are not a P-256 PKCS#8 document (or not a usable HMAC key).
    #[error("the {0} key is not usable")]
    Unusable(&'static str),
}

impl SigningKey {
    /// An HS256 key of `secret`, with the kid [`kid_of`] gives it.
    pub(crate) fn hs256(secret: &[u8]) -> Self {
        let kid = kid_of(secret);
        Self::hs256_with_kid(secret, kid)
    }

    fn hs256_with_kid(secret: &[u8], kid: String) -> Self {
        SigningKey {
            header: header_for(KeyAlgorithm::HS256, &kid),
            kid,
            algorithm: KeyAlgorithm::HS256,
            signer: Signer::Hs(Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key")),
        }
    }

    /// An ES256 key of a PKCS#8 document, with the kid [`es256_kid`] gives it.
    pub(crate) fn es256(pkcs8: &[u8]) -> Result<Self, KeyMaterialError> {
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng())
            .map_err(|_| KeyMaterialError::Unusable("ES256"))?;
        let public = pair.public_key().as_ref().to_vec();
        let kid = es256_kid(&public);
        Ok(SigningKey {
            header: header_for(KeyAlgorithm::ES256, &kid),
            kid,
            algorithm: KeyAlgorithm::ES256,
            signer: Signer::Es { pair, public },
        })
    }

    /// The key that stored material of `algorithm` describes.
    pub(crate) fn from_private(
        algorithm: KeyAlgorithm,
        private: &[u8],
    ) -> Result<Self, KeyMaterialError> {
        match algorithm {
            KeyAlgorithm::ES256 => Self::es256(private),
            KeyAlgorithm::HS256 if private.is_empty() => Err(KeyMaterialError::Unusable("HS256")),
            KeyAlgorithm::HS256 => Ok(Self::hs256(private)),
        }
    }

    pub(crate) fn kid(&self) -> &str {
        &self.kid
    }

    pub(crate) fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    pub(crate) fn header(&self) -> &str {
        &self.header
    }

    /// `signing_input.signature`, the signature over `signing_input` (`header.payload`).
    pub(crate) fn sign(&self, signing_input: String) -> String {
        let mut token = signing_input;
        let signature = match &self.signer {
            Signer::Hs(mac) => {
                let mut mac = mac.clone();
                mac.update(token.as_bytes());
                mac.finalize().into_bytes().to_vec()
            }
            Signer::Es { pair, .. } => pair
                .sign(&rng(), token.as_bytes())
                .expect("ECDSA signing fails only when the system's randomness does")
                .as_ref()
                .to_vec(),
        };
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut token);
        token
    }

    /// Whether `signature` is this key's over `signed` (HMAC compared in constant time).
    pub(crate) fn verifies(&self, signed: &[u8], signature: &[u8]) -> bool {
        match &self.signer {
            Signer::Hs(mac) => {
                let mut mac = mac.clone();
                mac.update(signed);
                mac.verify_slice(signature).is_ok()
            }
            Signer::Es { public, .. } => UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, public)
                .verify(signed, signature)
                .is_ok(),
        }
    }

    /// The public key as a JWK (RFC 7517), for the JWKS; `None` for an HS256 key, which
    /// has no public part.
    pub(crate) fn public_jwk(&self) -> Option<Value> {
        match &self.signer {
            Signer::Hs(_) => None,
            Signer::Es { public, .. } => Some(json!({
                "kty": "EC",
                "crv": "P-256",
                "alg": "ES256",
                "use": "sig",
                "kid": self.kid,
                "x": URL_SAFE_NO_PAD.encode(&public[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&public[33..65]),
            })),
        }
    }
}

fn rng() -> SystemRandom {
    SystemRandom::new()
}

/// New private key material of `algorithm` from the OS CSPRNG: a PKCS#8 document
/// (ES256) or 32 random bytes (HS256).
pub(crate) fn generate(algorithm: KeyAlgorithm) -> Vec<u8> {
    match algorithm {
        KeyAlgorithm::ES256 => {
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng())
                .expect("key generation fails only when the system's randomness does")
                .as_ref()
                .to_vec()
        }
        KeyAlgorithm::HS256 => random_bytes::<32>().to_vec(),
    }
}

/// The base64url header every token of the key `kid` carries. The JSON is written out
/// here, not serialised from a map, so its bytes are fixed: `typ`, `alg`, `kid`.
fn header_for(algorithm: KeyAlgorithm, kid: &str) -> String {
    let json = format!(
        r#"{{"typ":"JWT","alg":"{}","kid":"{kid}"}}"#,
        algorithm.name()
    );
    URL_SAFE_NO_PAD.encode(json)
}

/// The key id (`kid` header) of an HS256 secret: a short hash of the key, stable across
/// restarts, revealing nothing about the key.
pub fn kid_of(secret: &[u8]) -> String {
    let mut tagged = b"liveuser-kid:".to_vec();
    tagged.extend_from_slice(secret);
    hex(&sha256(&tagged)[..8])
}

/// The key id of an ES256 key: a short hash of its public point, under a label of its
/// own so that it never equals an HS256 kid.
pub fn es256_kid(public: &[u8]) -> String {
    let mut tagged = b"liveuser-es256-kid:".to_vec();
    tagged.extend_from_slice(public);
    hex(&sha256(&tagged)[..8])
}

/// The kid of stored private material of `algorithm`, or why it is unusable.
pub fn kid_of_private(algorithm: KeyAlgorithm, private: &[u8]) -> Result<String, KeyMaterialError> {
    SigningKey::from_private(algorithm, private).map(|k| k.kid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_es256_key_signs_what_it_verifies_and_publishes_only_its_public_point() {
        let pkcs8 = generate(KeyAlgorithm::ES256);
        let key = SigningKey::es256(&pkcs8).unwrap();
        let token = key.sign(format!("{}.e30", key.header()));
        let (signed, signature) = token.rsplit_once('.').unwrap();
        let signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
        assert_eq!(signature.len(), 64, "JWS's r ‖ s, not DER");
        assert!(key.verifies(signed.as_bytes(), &signature));
        assert!(!key.verifies(b"other.input", &signature));
        let other = SigningKey::es256(&generate(KeyAlgorithm::ES256)).unwrap();
        assert!(!other.verifies(signed.as_bytes(), &signature));
        assert_ne!(other.kid(), key.kid());

        let jwk = key.public_jwk().unwrap();
        assert_eq!(jwk["kid"], key.kid());
        assert_eq!(
            jwk.as_object().unwrap().keys().collect::<Vec<_>>(),
            ["alg", "crv", "kid", "kty", "use", "x", "y"],
            "no private part (d)"
        );
        assert_eq!(
            SigningKey::es256(&pkcs8).unwrap().kid(),
            key.kid(),
            "stable"
        );
    }

    #[test]
    fn an_hs256_key_has_no_public_part_and_bad_material_is_refused() {
        let key = SigningKey::hs256(&[7; 32]);
        assert!(key.public_jwk().is_none());
        assert_eq!(key.kid(), kid_of(&[7; 32]));
        assert!(SigningKey::es256(b"not a key").is_err());
        assert!(SigningKey::from_private(KeyAlgorithm::HS256, b"").is_err());
        let header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(key.header()).unwrap()).unwrap();
        assert_eq!(
            header,
            json!({"typ": "JWT", "alg": "HS256", "kid": key.kid()})
        );
        assert!(!format!("{key:?}").contains("mac"), "{key:?}");
    }
}
