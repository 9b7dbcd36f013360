//! Published Alibaba Cloud RPC signing cases (the signature documentation's examples and the
//! official SDKs' unit tests), in `devkit/signature-vectors.json`: the worker's signer and the
//! simulator's verifier are each tested against them, two implementations written apart on
//! purpose, the cases once.

use serde::Deserialize;

/// One signing case.
#[derive(Debug, Deserialize)]
pub struct SigningVector {
    /// Where the case comes from.
    pub name: String,
    pub method: String,
    pub secret: String,
    /// The request's parameters, in the order the source lists them (signing sorts them).
    pub params: Vec<(String, String)>,
    /// The canonical string to sign, where the source prints it.
    pub string_to_sign: Option<String>,
    /// The Base64 HMAC-SHA1 signature.
    pub signature: String,
}

impl SigningVector {
    /// The parameters as borrowed pairs.
    pub fn pairs(&self) -> Vec<(&str, &str)> {
        self.params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }
}

/// Every case.
pub fn signing_vectors() -> Vec<SigningVector> {
    serde_json::from_str(include_str!("../signature-vectors.json"))
        .unwrap_or_else(|e| panic!("devkit/signature-vectors.json does not parse: {e}"))
}
