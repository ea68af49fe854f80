//! WeChat Pay APIv3 primitives, from both sides of the wire:
//!
//! - **Signing** a merchant request (`WECHATPAY2-SHA256-RSA2048`): the five-line string
//!   `METHOD\nPATH?QUERY\nTIMESTAMP\nNONCE\nBODY\n` signed RSASSA-PKCS1-v1_5 / SHA-256 with the
//!   merchant's PKCS#8 key (by `ring`, whose RSA private-key operations are constant-time), and the
//!   `Authorization` header carrying it.
//! - **Verifying** a WeChat answer or callback: all four `Wechatpay-*` headers present, the
//!   timestamp within 300 s, the serial the configured public key's id, the signature over
//!   `TIMESTAMP\nNONCE\nBODY\n` of the raw body bytes. A `WECHATPAY/SIGNTEST/` probe fails like any
//!   other bad signature. Public-key operations only (`rsa`, unaffected by RUSTSEC-2023-0071).
//! - **Decrypting** a notification's `resource`: AES-256-GCM, key = the 32 bytes of the APIv3
//!   key, nonce = the 12 ASCII bytes of `resource.nonce`, AAD = `resource.associated_data`, the
//!   last 16 bytes of the base64-decoded ciphertext being the tag.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::DecodePublicKey;
use rsa::signature::Verifier;
use sha2::Sha256;
use std::fmt;

/// The signature scheme of requests, answers and callbacks.
pub const SCHEME: &str = "WECHATPAY2-SHA256-RSA2048";

/// Largest |now − Wechatpay-Timestamp| accepted, in seconds (rejected at or beyond).
pub const MAX_CLOCK_SKEW_SECS: i64 = 300;

/// The string a merchant signs: five lines, each ending with `\n` (the body's too, even empty).
pub fn request_message(
    method: &str,
    canonical_url: &str,
    timestamp: i64,
    nonce: &str,
    body: &[u8],
) -> Vec<u8> {
    let mut message = format!("{method}\n{canonical_url}\n{timestamp}\n{nonce}\n").into_bytes();
    message.extend_from_slice(body);
    message.push(b'\n');
    message
}

/// The string WeChat signs in an answer or callback: `TIMESTAMP\nNONCE\nBODY\n`.
pub fn answer_message(timestamp: &str, nonce: &str, body: &[u8]) -> Vec<u8> {
    let mut message = format!("{timestamp}\n{nonce}\n").into_bytes();
    message.extend_from_slice(body);
    message.push(b'\n');
    message
}

/// Why a key or a signature could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The PEM is not a key of the expected kind.
    #[error("{0}")]
    Invalid(String),
    /// Signing failed.
    #[error("signing failed")]
    Signing,
}

/// The merchant's signer: its id, its API certificate's serial and its private key.
pub struct MerchantSigner {
    mchid: String,
    serial_no: String,
    key: ring::signature::RsaKeyPair,
    rng: ring::rand::SystemRandom,
}

impl fmt::Debug for MerchantSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MerchantSigner")
            .field("mchid", &self.mchid)
            .field("serial_no", &self.serial_no)
            .finish_non_exhaustive()
    }
}

impl MerchantSigner {
    /// A signer from the merchant's PKCS#8 private key PEM (`apiclient_key.pem`).
    pub fn from_pem(mchid: &str, serial_no: &str, private_key_pem: &str) -> Result<Self, KeyError> {
        let (label, der) = pem_rfc7468::decode_vec(private_key_pem.trim().as_bytes())
            .map_err(|error| KeyError::Invalid(format!("the private key is not PEM: {error}")))?;
        if label != "PRIVATE KEY" {
            return Err(KeyError::Invalid(format!(
                "expected a PKCS#8 `PRIVATE KEY`, got `{label}`"
            )));
        }
        let key = ring::signature::RsaKeyPair::from_pkcs8(&der)
            .map_err(|error| KeyError::Invalid(format!("not an RSA PKCS#8 key: {error}")))?;
        Ok(Self {
            mchid: mchid.to_owned(),
            serial_no: serial_no.to_owned(),
            key,
            rng: ring::rand::SystemRandom::new(),
        })
    }

    /// The base64 (standard, padded) RSASSA-PKCS1-v1_5 SHA-256 signature of `message`.
    pub fn sign(&self, message: &[u8]) -> Result<String, KeyError> {
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &self.rng,
                message,
                &mut signature,
            )
            .map_err(|_| KeyError::Signing)?;
        Ok(STANDARD.encode(signature))
    }

    /// The `Authorization` header of a request.
    pub fn authorization(
        &self,
        method: &str,
        canonical_url: &str,
        body: &[u8],
        timestamp: i64,
        nonce: &str,
    ) -> Result<String, KeyError> {
        let signature = self.sign(&request_message(
            method,
            canonical_url,
            timestamp,
            nonce,
            body,
        ))?;
        Ok(format!(
            "{SCHEME} mchid=\"{}\",nonce_str=\"{nonce}\",timestamp=\"{timestamp}\",serial_no=\"{}\",signature=\"{signature}\"",
            self.mchid, self.serial_no
        ))
    }
}

/// The `Wechatpay-*` headers of an answer or callback, as received.
#[derive(Debug, Clone, Default)]
pub struct SignedHeaders {
    /// `Wechatpay-Timestamp`.
    pub timestamp: Option<String>,
    /// `Wechatpay-Nonce`.
    pub nonce: Option<String>,
    /// `Wechatpay-Signature`.
    pub signature: Option<String>,
    /// `Wechatpay-Serial`.
    pub serial: Option<String>,
}

/// Why an answer or callback is not WeChat's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A `Wechatpay-*` header is missing (a signed answer without it is forged).
    #[error("the `{0}` header is missing")]
    MissingHeader(&'static str),
    /// The timestamp is unreadable or too far from now.
    #[error("the timestamp is stale or unreadable")]
    StaleTimestamp,
    /// Signed with a key this merchant does not know.
    #[error("unknown Wechatpay-Serial `{0}`")]
    UnknownSerial(String),
    /// The signature does not match (probes `WECHATPAY/SIGNTEST/…` included).
    #[error("the signature does not match")]
    BadSignature,
}

/// WeChat Pay's public key (public-key mode): its id (`PUB_KEY_ID_…`) and the key.
pub struct PlatformVerifier {
    key_id: String,
    key: VerifyingKey<Sha256>,
}

impl fmt::Debug for PlatformVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlatformVerifier")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl PlatformVerifier {
    /// A verifier from WeChat Pay's public key PEM (`pub_key.pem`, SPKI) and its id.
    pub fn from_pem(key_id: &str, public_key_pem: &str) -> Result<Self, KeyError> {
        let key = rsa::RsaPublicKey::from_public_key_pem(public_key_pem.trim())
            .map_err(|error| KeyError::Invalid(format!("not an RSA public key: {error}")))?;
        Ok(Self {
            key_id: key_id.to_owned(),
            key: VerifyingKey::new(key),
        })
    }

    /// Checks that `body` (the raw bytes) with `headers` was signed by WeChat Pay at about `now`
    /// (Unix seconds).
    pub fn verify(
        &self,
        headers: &SignedHeaders,
        body: &[u8],
        now: i64,
    ) -> Result<(), VerifyError> {
        let timestamp = headers
            .timestamp
            .as_deref()
            .ok_or(VerifyError::MissingHeader("Wechatpay-Timestamp"))?;
        let nonce = headers
            .nonce
            .as_deref()
            .ok_or(VerifyError::MissingHeader("Wechatpay-Nonce"))?;
        let signature = headers
            .signature
            .as_deref()
            .ok_or(VerifyError::MissingHeader("Wechatpay-Signature"))?;
        let serial = headers
            .serial
            .as_deref()
            .ok_or(VerifyError::MissingHeader("Wechatpay-Serial"))?;
        let at: i64 = timestamp.parse().map_err(|_| VerifyError::StaleTimestamp)?;
        if at.abs_diff(now) >= MAX_CLOCK_SKEW_SECS.unsigned_abs() {
            return Err(VerifyError::StaleTimestamp);
        }
        if serial != self.key_id {
            return Err(VerifyError::UnknownSerial(serial.to_owned()));
        }
        let bytes = STANDARD
            .decode(signature)
            .map_err(|_| VerifyError::BadSignature)?;
        let signature =
            Signature::try_from(bytes.as_slice()).map_err(|_| VerifyError::BadSignature)?;
        self.key
            .verify(&answer_message(timestamp, nonce, body), &signature)
            .map_err(|_| VerifyError::BadSignature)
    }
}

/// An RSA public key checking RSASSA-PKCS1-v1_5 SHA-256 signatures: WeChat's key on the merchant
/// side, the merchant's on the sandbox's side.
pub struct PublicKey {
    key: VerifyingKey<Sha256>,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PublicKey(..)")
    }
}

impl PublicKey {
    /// From an SPKI PEM (`-----BEGIN PUBLIC KEY-----`).
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let key = rsa::RsaPublicKey::from_public_key_pem(pem.trim())
            .map_err(|error| KeyError::Invalid(format!("not an RSA public key: {error}")))?;
        Ok(Self {
            key: VerifyingKey::new(key),
        })
    }

    /// Whether `signature_base64` signs `message`.
    pub fn verifies(&self, message: &[u8], signature_base64: &str) -> bool {
        let Ok(bytes) = STANDARD.decode(signature_base64) else {
            return false;
        };
        let Ok(signature) = Signature::try_from(bytes.as_slice()) else {
            return false;
        };
        self.key.verify(message, &signature).is_ok()
    }
}

/// The parameters of an `Authorization: WECHATPAY2-SHA256-RSA2048 k="v",…` header, in any order.
pub fn parse_authorization(header: &str) -> Option<std::collections::BTreeMap<String, String>> {
    let params = header.strip_prefix(SCHEME)?.trim();
    let mut parsed = std::collections::BTreeMap::new();
    for pair in params.split(',') {
        let (name, value) = pair.trim().split_once('=')?;
        let value = value.strip_prefix('"')?.strip_suffix('"')?;
        parsed.insert(name.to_owned(), value.to_owned());
    }
    Some(parsed)
}

/// Why a notification resource could not be decrypted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    /// The APIv3 key is not 32 bytes, or the nonce not 12.
    #[error("{0}")]
    Parameters(&'static str),
    /// The ciphertext is not base64.
    #[error("the ciphertext is not base64")]
    Encoding,
    /// The tag does not match: wrong key, nonce or associated data, or tampered.
    #[error("the resource does not decrypt (wrong key or tampered)")]
    Authentication,
}

/// Decrypts a notification `resource` with the merchant's APIv3 key.
pub fn decrypt_resource(
    apiv3_key: &str,
    nonce: &str,
    associated_data: &str,
    ciphertext_base64: &str,
) -> Result<Vec<u8>, DecryptError> {
    if apiv3_key.len() != 32 {
        return Err(DecryptError::Parameters("the APIv3 key must be 32 bytes"));
    }
    if nonce.len() != 12 {
        return Err(DecryptError::Parameters("the nonce must be 12 bytes"));
    }
    let ciphertext = STANDARD
        .decode(ciphertext_base64)
        .map_err(|_| DecryptError::Encoding)?;
    let cipher = Aes256Gcm::new_from_slice(apiv3_key.as_bytes())
        .map_err(|_| DecryptError::Parameters("the APIv3 key must be 32 bytes"))?;
    cipher
        .decrypt(
            Nonce::from_slice(nonce.as_bytes()),
            Payload {
                msg: &ciphertext,
                aad: associated_data.as_bytes(),
            },
        )
        .map_err(|_| DecryptError::Authentication)
}

/// Encrypts a notification `resource` as WeChat Pay does (the sandbox's side of
/// [`decrypt_resource`]): base64 of the ciphertext followed by the 16-byte tag.
pub fn encrypt_resource(
    apiv3_key: &str,
    nonce: &str,
    associated_data: &str,
    plaintext: &[u8],
) -> Result<String, DecryptError> {
    if apiv3_key.len() != 32 {
        return Err(DecryptError::Parameters("the APIv3 key must be 32 bytes"));
    }
    if nonce.len() != 12 {
        return Err(DecryptError::Parameters("the nonce must be 12 bytes"));
    }
    let cipher = Aes256Gcm::new_from_slice(apiv3_key.as_bytes())
        .map_err(|_| DecryptError::Parameters("the APIv3 key must be 32 bytes"))?;
    let sealed = cipher
        .encrypt(
            Nonce::from_slice(nonce.as_bytes()),
            Payload {
                msg: plaintext,
                aad: associated_data.as_bytes(),
            },
        )
        .map_err(|_| DecryptError::Authentication)?;
    Ok(STANDARD.encode(sealed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// The known-answer vector of `shared/spec/wechat.md` §D.4.
    const KEY: &str = "0123456789abcdefghijklmnopqrstuv";
    const NONCE: &str = "fakeNonce123";
    const CIPHERTEXT: &str = "JP385t4K66NAFdtwQziOMx0kgnoAwEiwtUQCk13QWB1VYpXP5uLGFKZE6HbFNU3344B0u4VpNTnQBUasY/5pLYAIyMa5gmpFz1PVCuFOe3Rk75M6ONqrUB75qwfovmyiiCKMHPd0qvD09DswRWVuDTWg/J04+MKYHgK0M131qrYmY/Nh0t+AKy5hW5hzsn+r628FH6oWjWzbNH6QR8rPnX0EPeK6X0moPjstXNE+ItjqSccJAMin0bFUYLF3zTpKY0o6q5PbSjzHMCpXSMTHv8Yq80isI89nhuDAmDb7bVCDkHzZYpGfcN1bPghRVmIUmwkwqLEuHOEbJYYHw0wVgPTQd1f9hq/O46NGrLKwlPkr16dlVuTW56bO9AW2ws94jCKq0JXGckMcfzSX3+KB1agbDaWI8h2V3NExtZQ1DKwOzFSqBnJ7l6VtWU6AOEm/gUuDzij2e5gKUWuuHhZyRTD+beJPe8ACZne0WPBq1SNZDkK/3GHY+j6SbTjhHF4zVSG1r7eeo8DrFXP4vF8nXdtX9yKT/Lcf5bovyO3AVnC3WUkCjjYK5C6vdntI9rLaR0DXrg==";
    const PLAINTEXT: &str = r#"{"mchid":"1900000109","appid":"wxd678efh567hg6787","out_trade_no":"RC20240101000001","transaction_id":"4200000000202401010000000001","trade_type":"NATIVE","trade_state":"SUCCESS","trade_state_desc":"支付成功","bank_type":"OTHERS","attach":"","success_time":"2024-01-01T12:00:05+08:00","payer":{"openid":"oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},"amount":{"total":100,"payer_total":100,"currency":"CNY","payer_currency":"CNY"}}"#;

    #[test]
    fn the_known_answer_vector_decrypts_and_a_tampered_one_does_not() {
        let plaintext = decrypt_resource(KEY, NONCE, "transaction", CIPHERTEXT).expect("decrypts");
        assert_eq!(String::from_utf8(plaintext).expect("utf-8"), PLAINTEXT);

        assert_eq!(
            decrypt_resource(KEY, NONCE, "payscore", CIPHERTEXT),
            Err(DecryptError::Authentication),
            "another associated data"
        );
        let mut tampered = STANDARD.decode(CIPHERTEXT).expect("base64");
        tampered[10] ^= 1;
        assert_eq!(
            decrypt_resource(KEY, NONCE, "transaction", &STANDARD.encode(tampered)),
            Err(DecryptError::Authentication)
        );
        assert!(matches!(
            decrypt_resource("short", NONCE, "transaction", CIPHERTEXT),
            Err(DecryptError::Parameters(_))
        ));
        assert_eq!(
            decrypt_resource(KEY, NONCE, "transaction", "not base64!"),
            Err(DecryptError::Encoding)
        );
    }

    #[test]
    fn encrypting_the_known_plaintext_gives_the_known_ciphertext() {
        assert_eq!(
            encrypt_resource(KEY, NONCE, "transaction", PLAINTEXT.as_bytes()).expect("encrypts"),
            CIPHERTEXT
        );
    }

    #[test]
    fn the_signing_strings_have_five_and_three_lines_each_ending_with_a_newline() {
        assert_eq!(
            request_message(
                "GET",
                "/v3/certificates",
                1554208460,
                "593BEC0C930BF1AFEB40B4A08C8FB242",
                b""
            ),
            b"GET\n/v3/certificates\n1554208460\n593BEC0C930BF1AFEB40B4A08C8FB242\n\n"
        );
        assert_eq!(
            answer_message(
                "1722850421",
                "d824f2e086d3c1df967785d13fcd22ef",
                br#"{"code_url":"weixin://wxpay/bizpayurl?pr=JyC91EIz1"}"#
            ),
            b"1722850421\nd824f2e086d3c1df967785d13fcd22ef\n{\"code_url\":\"weixin://wxpay/bizpayurl?pr=JyC91EIz1\"}\n"
        );
        assert_eq!(answer_message("1", "n", b""), b"1\nn\n\n");
    }

    /// A fresh RSA key pair made by `openssl`, as PKCS#8 and SPKI PEM, in a scratch directory.
    fn openssl_keys() -> (std::path::PathBuf, String, String) {
        let dir = std::env::temp_dir().join(format!(
            "wechat-keys-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        let private = dir.join("apiclient_key.pem");
        let status = Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&private)
            .status()
            .expect("openssl runs");
        assert!(status.success());
        let public = Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&private)
            .output()
            .expect("openssl runs");
        assert!(public.status.success());
        (
            dir.clone(),
            std::fs::read_to_string(&private).expect("private key"),
            String::from_utf8(public.stdout).expect("public key"),
        )
    }

    #[test]
    fn a_signature_is_the_same_as_openssls_and_the_header_carries_it() {
        let (dir, private_pem, _) = openssl_keys();
        let message = request_message(
            "POST",
            "/v3/pay/transactions/native",
            1554208460,
            "593BEC0C930BF1AFEB40B4A08C8FB242",
            br#"{"mchid":"1900009191"}"#,
        );
        let message_file = dir.join("message");
        std::fs::write(&message_file, &message).expect("message");
        let openssl = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(dir.join("apiclient_key.pem"))
            .arg(&message_file)
            .output()
            .expect("openssl dgst");
        assert!(openssl.status.success());

        let signer = MerchantSigner::from_pem(
            "1900009191",
            "1DDE55AD98ED71D6EDD4A4A16996DE7B47773A8C",
            &private_pem,
        )
        .expect("signer");
        assert_eq!(
            signer.sign(&message).expect("sign"),
            STANDARD.encode(&openssl.stdout)
        );

        let header = signer
            .authorization(
                "POST",
                "/v3/pay/transactions/native",
                br#"{"mchid":"1900009191"}"#,
                1554208460,
                "593BEC0C930BF1AFEB40B4A08C8FB242",
            )
            .expect("authorization");
        assert!(header.starts_with("WECHATPAY2-SHA256-RSA2048 mchid=\"1900009191\",nonce_str=\"593BEC0C930BF1AFEB40B4A08C8FB242\",timestamp=\"1554208460\",serial_no=\"1DDE55AD98ED71D6EDD4A4A16996DE7B47773A8C\",signature=\""));
        assert!(header.ends_with(&format!(
            "signature=\"{}\"",
            STANDARD.encode(&openssl.stdout)
        )));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn answers_verify_only_when_fresh_signed_by_the_known_key_and_untouched() {
        let (dir, private_pem, public_pem) = openssl_keys();
        let wechat = MerchantSigner::from_pem(
            "wechat",
            "PUB_KEY_ID_0000000000000024101100397200000006",
            &private_pem,
        )
        .expect("signer");
        let verifier = PlatformVerifier::from_pem(
            "PUB_KEY_ID_0000000000000024101100397200000006",
            &public_pem,
        )
        .expect("verifier");
        let body = br#"{"code_url":"weixin://wxpay/bizpayurl?pr=JyC91EIz1"}"#;
        let now = 1722850421;
        let headers = SignedHeaders {
            timestamp: Some(now.to_string()),
            nonce: Some("d824f2e086d3c1df967785d13fcd22ef".into()),
            signature: Some(
                wechat
                    .sign(&answer_message(
                        &now.to_string(),
                        "d824f2e086d3c1df967785d13fcd22ef",
                        body,
                    ))
                    .expect("sign"),
            ),
            serial: Some("PUB_KEY_ID_0000000000000024101100397200000006".into()),
        };

        assert_eq!(verifier.verify(&headers, body, now + 10), Ok(()));
        assert_eq!(
            verifier.verify(&headers, br#"{"code_url":"weixin://other"}"#, now),
            Err(VerifyError::BadSignature),
            "a tampered body"
        );
        assert_eq!(
            verifier.verify(&headers, body, now + 300),
            Err(VerifyError::StaleTimestamp)
        );
        assert_eq!(
            verifier.verify(&headers, body, now - 300),
            Err(VerifyError::StaleTimestamp)
        );
        let probe = SignedHeaders {
            signature: Some("WECHATPAY/SIGNTEST/cGFzcw==".into()),
            ..headers.clone()
        };
        assert_eq!(
            verifier.verify(&probe, body, now),
            Err(VerifyError::BadSignature)
        );
        let other_key = SignedHeaders {
            serial: Some("PUB_KEY_ID_9999".into()),
            ..headers.clone()
        };
        assert_eq!(
            verifier.verify(&other_key, body, now),
            Err(VerifyError::UnknownSerial("PUB_KEY_ID_9999".into()))
        );
        let unsigned = SignedHeaders {
            signature: None,
            ..headers.clone()
        };
        assert_eq!(
            verifier.verify(&unsigned, body, now),
            Err(VerifyError::MissingHeader("Wechatpay-Signature")),
            "an unsigned 2xx is forged"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn keys_of_the_wrong_kind_are_refused_plainly() {
        assert!(matches!(
            MerchantSigner::from_pem("m", "s", "not a pem"),
            Err(KeyError::Invalid(_))
        ));
        assert!(matches!(
            PlatformVerifier::from_pem(
                "k",
                "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"
            ),
            Err(KeyError::Invalid(_))
        ));
    }
}
