//! Receipts: what a host signs about one expert's answer, so that anyone
//! holding the receipt can check which component, model and settings the
//! answer came from, and that the host's key vouched for it.
//!
//! A receipt is JSON: `{"body": {...}, "signature": "-----BEGIN SSH
//! SIGNATURE-----..."}`. The signature is an SSHSIG (namespace
//! [`RECEIPT_NAMESPACE`]) over the body serialized as compact JSON in the
//! field order of [`ReceiptBody`]; unknown fields are refused, so a
//! receipt that verifies says exactly what its body says. The body names
//! the host's public key, and the signature must be that key's.

use serde::{Deserialize, Serialize};

use super::{Digest, SamplingUsed, Trace};
use crate::bindings::types::{Request, Response};
use crate::bundle::sign::{self, SignatureError, SigningKey};

/// The SSHSIG namespace of receipts.
pub const RECEIPT_NAMESPACE: &str = "tessera-receipt";
/// The receipt format this host writes.
pub const RECEIPT_VERSION: u32 = 1;

/// What a receipt vouches for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptBody {
    /// [`RECEIPT_VERSION`].
    pub version: u32,
    /// The digest of the request the expert got (messages, sampling,
    /// metadata), label `tessera.request`.
    pub request_sha256: String,
    /// The digest of its response (content, metadata, confidence, usage),
    /// label `tessera.response`.
    pub response_sha256: String,
    /// The expert.
    pub expert: ReceiptExpert,
    /// The model it could use.
    pub model: ReceiptModel,
    /// The sampling of each generation it ran, in order, seeds included.
    pub sampling: Vec<SamplingUsed>,
    /// sha256 of the invocation's trace as compact JSON: every host call
    /// in order with its input and output digests, fuel and tokens.
    pub trace_sha256: String,
    /// When the invocation started, milliseconds since the Unix epoch.
    pub started_at_unix_ms: u64,
    /// How long it ran, microseconds.
    pub duration_us: u64,
    /// The signing host's public key, OpenSSH one-line form.
    pub host_key: String,
}

/// The expert a receipt is about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptExpert {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// sha256 of its component.
    pub component_sha256: String,
    /// The fingerprint of the key that signed its bundle, if it was signed.
    pub signer: Option<String>,
}

/// The model a receipt is about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptModel {
    /// Its name.
    pub name: String,
    /// sha256 of its weights, when the host knows them.
    pub weights_sha256: Option<String>,
}

/// A signed receipt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// What it vouches for.
    pub body: ReceiptBody,
    /// SSHSIG over the body.
    pub signature: String,
}

/// Why a receipt does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiptError {
    /// Not a receipt.
    #[error("not a Tessera receipt: {0}")]
    Malformed(String),
    /// The signature is bad or does not cover the body.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// Signed by another key than the one the body names.
    #[error("the receipt names host key {named} but was signed by {signer}")]
    WrongKey {
        /// The body's `host_key` fingerprint.
        named: String,
        /// Who signed.
        signer: String,
    },
}

impl Receipt {
    /// Sign `body` with `key` (whose public key the body must name).
    pub fn sign(body: ReceiptBody, key: &SigningKey) -> Receipt {
        let bytes = serde_json::to_vec(&body).expect("a receipt body serializes");
        Receipt {
            signature: key.sign(RECEIPT_NAMESPACE, &bytes),
            body,
        }
    }

    /// Parse a receipt from JSON.
    pub fn from_json(text: &str) -> Result<Receipt, ReceiptError> {
        serde_json::from_str(text).map_err(|e| ReceiptError::Malformed(e.to_string()))
    }

    /// Check the signature over the body, and that it is the key the body
    /// names; the signer's fingerprint.
    pub fn verify(&self) -> Result<String, ReceiptError> {
        let bytes = serde_json::to_vec(&self.body).expect("a receipt body serializes");
        let signer = sign::verify(RECEIPT_NAMESPACE, &bytes, &self.signature)?;
        let named = sign::fingerprint_of(&self.body.host_key)
            .map_err(|e| ReceiptError::Malformed(format!("host_key: {e}")))?;
        if named != signer.fingerprint {
            return Err(ReceiptError::WrongKey {
                named,
                signer: signer.fingerprint,
            });
        }
        Ok(signer.fingerprint)
    }
}

/// The digest of an expert request, as receipts name it.
pub fn request_sha256(req: &Request) -> String {
    crate::caps::request_digest("tessera.request", req).finish()
}

/// The digest of an expert response, as receipts name it.
pub fn response_sha256(resp: &Response) -> String {
    crate::caps::response_digest("tessera.response", resp)
}

/// sha256 of a trace as compact JSON.
pub fn trace_sha256(trace: &Trace) -> String {
    trace_json_sha256(&serde_json::to_string(trace).expect("a trace serializes"))
}

/// [`trace_sha256`] of a trace already serialized as compact JSON.
pub fn trace_json_sha256(json: &str) -> String {
    Digest::new("tessera.trace").bytes(json.as_bytes()).finish()
}

/// The sampling of every generation in `trace`, in order (nested calls
/// are in their own receipts' traces, not here).
pub fn sampling_of(trace: &Trace) -> Vec<SamplingUsed> {
    trace
        .host_calls
        .iter()
        .filter_map(|c| c.sampling.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt(key: &SigningKey) -> Receipt {
        let body = ReceiptBody {
            version: RECEIPT_VERSION,
            request_sha256: "a".repeat(64),
            response_sha256: "b".repeat(64),
            expert: ReceiptExpert {
                name: "calculator".into(),
                version: "0.1.0".into(),
                component_sha256: "c".repeat(64),
                signer: Some("SHA256:bundle-signer".into()),
            },
            model: ReceiptModel {
                name: "SmolLM2-135M-Instruct".into(),
                weights_sha256: Some("d".repeat(64)),
            },
            sampling: vec![SamplingUsed {
                temperature: 0.7,
                top_p: 0.9,
                top_k: Some(40),
                repetition_penalty: 1.0,
                max_tokens: 64,
                seed: 12345,
                stop: vec!["\n".into()],
            }],
            trace_sha256: "e".repeat(64),
            started_at_unix_ms: 1_700_000_000_000,
            duration_us: 1234,
            host_key: key.public_line(),
        };
        Receipt::sign(body, key)
    }

    #[test]
    fn a_receipt_verifies_through_json() {
        let key = SigningKey::generate("host");
        let json = serde_json::to_string_pretty(&receipt(&key)).unwrap();
        let parsed = Receipt::from_json(&json).unwrap();
        assert_eq!(parsed.verify(), Ok(key.signer().fingerprint));
    }

    /// Every leaf of the body, changed in the JSON, breaks the receipt.
    #[test]
    fn changing_any_field_fails_verification() {
        let key = SigningKey::generate("host");
        let original = serde_json::to_value(receipt(&key)).unwrap();
        let mut paths = Vec::new();
        leaves(&original["body"], "/body".into(), &mut paths);
        assert!(paths.len() >= 20, "{paths:?}");
        for path in paths {
            let mut changed = original.clone();
            let leaf = changed.pointer_mut(&path).unwrap();
            *leaf = match leaf.take() {
                serde_json::Value::String(s) => format!("{s}x").into(),
                serde_json::Value::Number(n) if n.is_u64() => (n.as_u64().unwrap() + 1).into(),
                serde_json::Value::Number(n) => (n.as_f64().unwrap() + 0.5).into(),
                serde_json::Value::Null => "x".into(),
                other => panic!("unexpected leaf {other}"),
            };
            let text = changed.to_string();
            let verdict = Receipt::from_json(&text).and_then(|r| r.verify());
            assert!(verdict.is_err(), "changing {path} still verifies");
        }
    }

    #[test]
    fn unknown_fields_and_another_hosts_key_are_refused() {
        let key = SigningKey::generate("host");
        let mut value = serde_json::to_value(receipt(&key)).unwrap();
        value["body"]["bonus"] = "free tokens".into();
        let err = Receipt::from_json(&value.to_string()).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");

        // Signed by one key while naming another.
        let other = SigningKey::generate("other");
        let mut forged = receipt(&key);
        forged.body.host_key = other.public_line();
        let forged = Receipt::sign(forged.body, &key);
        let err = forged.verify().unwrap_err();
        assert!(matches!(err, ReceiptError::WrongKey { .. }), "{err}");
    }

    fn leaves(value: &serde_json::Value, at: String, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    leaves(v, format!("{at}/{k}"), out);
                }
            }
            serde_json::Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    leaves(v, format!("{at}/{i}"), out);
                }
            }
            _ => out.push(at),
        }
    }
}
