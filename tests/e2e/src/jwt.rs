//! Reading the claims of a service-account token, to check what the API server put in it.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use crate::{HarnessError, Result};

/// The claims (payload) of a JWT, unverified: tests compare them with what they asked for.
pub fn jwt_claims(token: &str) -> Result<Value> {
    let bad = |why: String| HarnessError::Process(format!("not a JWT: {why}"));
    let payload = token
        .trim()
        .split('.')
        .nth(1)
        .ok_or_else(|| bad("no payload segment".into()))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|e| bad(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_payload_and_refuses_garbage() {
        let payload = URL_SAFE_NO_PAD.encode(br#"{"sub":"system:serviceaccount:ns:sa"}"#);
        let claims = jwt_claims(&format!("e30.{payload}.sig")).unwrap();
        assert_eq!(claims["sub"], "system:serviceaccount:ns:sa");
        assert!(jwt_claims("no-dots").is_err());
        assert!(jwt_claims("a.!!!.c").is_err());
    }
}
