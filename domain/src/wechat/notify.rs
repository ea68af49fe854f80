//! A WeChat Pay notification (the callback to `notify_url`), read as the official SDKs read it:
//! the signature is verified over the raw body **before** anything else, then the envelope is
//! parsed and its `resource` decrypted with the APIv3 key into the transaction it reports.

use super::apiv3::{DecryptError, PlatformVerifier, SignedHeaders, VerifyError, decrypt_resource};
use super::client::Transaction;
use serde::Deserialize;

/// A verified, decrypted notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// WeChat's notification id (for dedupe and audit).
    pub id: String,
    /// `TRANSACTION.SUCCESS` for a payment.
    pub event_type: String,
    /// The transaction it reports.
    pub transaction: Transaction,
}

/// Why a notification is refused (the callback then answers 4xx so WeChat sends it again).
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// Not signed by WeChat Pay (probes included).
    #[error("notification refused: {0}")]
    Forged(#[from] VerifyError),
    /// Not a notification envelope, or not a transaction inside.
    #[error("malformed notification: {0}")]
    Malformed(String),
    /// The resource does not decrypt with the APIv3 key.
    #[error("notification resource: {0}")]
    Decrypt(#[from] DecryptError),
}

#[derive(Deserialize)]
struct Envelope {
    id: String,
    event_type: String,
    resource: Resource,
}

#[derive(Deserialize)]
struct Resource {
    algorithm: String,
    ciphertext: String,
    #[serde(default)]
    associated_data: String,
    nonce: String,
}

/// Verifies, parses and decrypts a notification received at `now` (Unix seconds).
pub fn read(
    verifier: &PlatformVerifier,
    apiv3_key: &str,
    headers: &SignedHeaders,
    body: &[u8],
    now: i64,
) -> Result<Notification, NotifyError> {
    verifier.verify(headers, body, now)?;
    let envelope: Envelope =
        serde_json::from_slice(body).map_err(|error| NotifyError::Malformed(error.to_string()))?;
    if envelope.resource.algorithm != "AEAD_AES_256_GCM" {
        return Err(NotifyError::Malformed(format!(
            "unknown algorithm `{}`",
            envelope.resource.algorithm
        )));
    }
    let plaintext = decrypt_resource(
        apiv3_key,
        &envelope.resource.nonce,
        &envelope.resource.associated_data,
        &envelope.resource.ciphertext,
    )?;
    let transaction = serde_json::from_slice(&plaintext)
        .map_err(|error| NotifyError::Malformed(format!("the resource: {error}")))?;
    Ok(Notification {
        id: envelope.id,
        event_type: envelope.event_type,
        transaction,
    })
}
