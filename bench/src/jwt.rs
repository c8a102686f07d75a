//! HS256 access tokens with simplejwt's claims (`user_id`, `token_type`, `exp`, `jti`,
//! `iat`), so one token works against hablar-server and the Django baseline alike. Signed
//! by the server's minter, the one the tests use too.

use std::time::{SystemTime, UNIX_EPOCH};

use hablar_server::auth::mint_hs256;

/// Mints an access token for `user_id`, valid for `ttl_secs`; `jti` must be unique.
pub fn mint(secret: &str, user_id: &str, ttl_secs: u64, jti: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claims = serde_json::json!({
        "token_type": "access",
        "exp": now + ttl_secs,
        "iat": now,
        "jti": format!("bench{jti:016x}"),
        "user_id": user_id,
    });
    // `--secret` has a non-empty default; an empty one is refused by the server anyway.
    mint_hs256(secret.as_bytes(), &claims).expect("the bench's JWT secret is not empty")
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use hmac::{Hmac, Mac};
    use sha2::Sha256;

    use super::*;

    #[test]
    fn token_has_simplejwt_claims_and_a_verifiable_signature() {
        let token = mint("k", "u7", 60, 1);
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("b64")).expect("json");
        assert_eq!(claims["user_id"], "u7");
        assert_eq!(claims["token_type"], "access");
        assert!(claims["exp"].as_u64().expect("exp") > claims["iat"].as_u64().expect("iat"));
        let mut mac = Hmac::<Sha256>::new_from_slice(b"k").expect("key");
        mac.update(format!("{}.{}", parts[0], parts[1]).as_bytes());
        let sig = URL_SAFE_NO_PAD.decode(parts[2]).expect("b64");
        assert!(mac.verify_slice(&sig).is_ok());
    }
}
