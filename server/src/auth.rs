//! HS256 JWT access tokens as djangorestframework-simplejwt issues them, verified by hand
//! (hmac + sha2, constant-time comparison) so that no heavy crypto backend is compiled.
//!
//! Only `alg: HS256` is accepted: `none`, HS384/HS512, RS256 and everything else are
//! refused before the signature is looked at, so a key can never be used with an
//! algorithm it was not meant for.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hablar_protocol::{names, UserId};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::Value;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Why a token was refused. The texts never contain the token or any claim value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token was given.
    #[error("token missing")]
    Missing,
    /// Not three base64url parts of JSON.
    #[error("token malformed")]
    Malformed,
    /// The header names an algorithm other than HS256 (or a `crit` extension).
    #[error("token algorithm not accepted")]
    Algorithm,
    /// The signature does not match the key.
    #[error("token signature invalid")]
    Signature,
    /// `exp` is in the past (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("token not yet valid")]
    NotYetValid,
    /// `token_type` is not `access` (a refresh token, say).
    #[error("not an access token")]
    NotAccess,
    /// A required claim (`exp`, `user_id`) is missing or of the wrong type.
    #[error("token claim missing or invalid: {0}")]
    Claim(&'static str),
}

/// The claims the server uses from a verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// `user_id`, a string or an integer, as a string.
    pub user_id: UserId,
    /// `exp`, in Unix seconds.
    pub exp: u64,
    /// `display_name`, when the issuer adds it.
    pub display_name: Option<String>,
    /// `username`, when the issuer adds it.
    pub username: Option<String>,
}

impl Claims {
    /// The name to show when the store has no profile: `display_name`, `username`, then
    /// the user id, the first that is not empty once cleaned ([`names::clean`]: no
    /// control or bidi characters, at most 64 characters).
    pub fn fallback_name(&self) -> String {
        [&self.display_name, &self.username]
            .into_iter()
            .find_map(|claim| claim.as_deref().and_then(names::clean))
            .unwrap_or_else(|| names::fallback(&self.user_id))
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    crit: Option<Value>,
}

/// Verifies access tokens with one HS256 key.
#[derive(Clone)]
pub struct Verifier {
    /// The keyed MAC, cloned per verification so the key schedule runs once.
    mac: HmacSha256,
    /// Seconds of clock skew accepted on `exp` and `nbf`.
    leeway: u64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("leeway", &self.leeway)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier for `secret` with `leeway` seconds of clock skew.
    pub fn new(secret: &[u8], leeway: u64) -> Self {
        Self {
            mac: HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length"),
            leeway,
        }
    }

    /// Checks `token` at `now` (Unix seconds) and returns its claims.
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, AuthError> {
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(sig_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed);
        };
        let header: Header = decode_json(header_b64)?;
        if header.alg != "HS256" || header.crit.is_some() {
            return Err(AuthError::Algorithm);
        }
        let signature = URL_SAFE_NO_PAD
            .decode(sig_b64.trim_end_matches('='))
            .map_err(|_| AuthError::Malformed)?;
        let mut mac = self.mac.clone();
        mac.update(&token.as_bytes()[..header_b64.len() + 1 + payload_b64.len()]);
        mac.verify_slice(&signature).map_err(|_| AuthError::Signature)?;

        let claims: serde_json::Map<String, Value> = decode_json(payload_b64)?;
        if claims.get("token_type").and_then(Value::as_str) != Some("access") {
            return Err(AuthError::NotAccess);
        }
        let exp = numeric_date(claims.get("exp")).ok_or(AuthError::Claim("exp"))?;
        // PyJWT: expired when `exp <= now - leeway`.
        if exp.saturating_add(self.leeway) <= now {
            return Err(AuthError::Expired);
        }
        if let Some(nbf) = claims.get("nbf") {
            let nbf = numeric_date(Some(nbf)).ok_or(AuthError::Claim("nbf"))?;
            if nbf > now.saturating_add(self.leeway) {
                return Err(AuthError::NotYetValid);
            }
        }
        let user_id = match claims.get("user_id") {
            Some(Value::String(s)) => UserId::new(s.clone()),
            Some(Value::Number(n)) if n.is_i64() || n.is_u64() => UserId::new(n.to_string()),
            _ => return Err(AuthError::Claim("user_id")),
        }
        .map_err(|_| AuthError::Claim("user_id"))?;
        let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
        Ok(Claims {
            user_id,
            exp,
            display_name: text("display_name"),
            username: text("username"),
        })
    }
}

/// Reads a NumericDate (an integer or a float of seconds; PyJWT accepts both).
fn numeric_date(value: Option<&Value>) -> Option<u64> {
    let n = value?.as_number()?;
    n.as_u64().or_else(|| {
        n.as_f64()
            .filter(|f| *f >= 0.0 && f.is_finite())
            .map(|f| f as u64)
    })
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, AuthError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|_| AuthError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)
}

/// Signs `claims` as an HS256 JWT (the dev token endpoint uses it).
pub fn mint_hs256(secret: &[u8], claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{header}.{payload}");
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

/// Compares a given secret with the expected one in constant time. Both are MACed to
/// fixed-size digests first, so that neither the contents nor the length of the
/// expected secret shows in the timing (a plain length check returns early), and the
/// digests are compared with `subtle` (via `verify_slice`), which the optimiser cannot
/// turn into an early exit.
pub fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    let digest = |bytes: &[u8]| {
        let mut mac =
            HmacSha256::new_from_slice(b"hablar secret comparison").expect("HMAC accepts keys of any length");
        mac.update(bytes);
        mac
    };
    let expected = digest(expected).finalize().into_bytes();
    digest(given).verify_slice(&expected).is_ok()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const KEY: &[u8] = b"test-key";
    const NOW: u64 = 1_700_000_000;

    fn token(header: &str, claims: &Value, key: &[u8]) -> String {
        let h = URL_SAFE_NO_PAD.encode(header);
        let p = URL_SAFE_NO_PAD.encode(claims.to_string());
        let mut mac = HmacSha256::new_from_slice(key).expect("key");
        mac.update(format!("{h}.{p}").as_bytes());
        format!("{h}.{p}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }

    fn access(user_id: Value, exp: u64) -> Value {
        json!({"token_type": "access", "exp": exp, "iat": NOW - 10, "jti": "abc", "user_id": user_id})
    }

    #[test]
    fn accepts_a_simplejwt_access_token_with_string_or_integer_user_id() {
        let v = Verifier::new(KEY, 0);
        let claims = v
            .verify(&mint_hs256(KEY, &access(json!("alice"), NOW + 60)), NOW)
            .expect("valid");
        assert_eq!(claims.user_id.as_str(), "alice");
        let claims = v
            .verify(&mint_hs256(KEY, &access(json!(42), NOW + 60)), NOW)
            .expect("valid");
        assert_eq!(claims.user_id.as_str(), "42");
        assert_eq!(claims.exp, NOW + 60);
    }

    #[test]
    fn refuses_a_wrong_key() {
        let v = Verifier::new(KEY, 0);
        let t = mint_hs256(b"other-key", &access(json!("alice"), NOW + 60));
        assert_eq!(v.verify(&t, NOW), Err(AuthError::Signature));
    }

    #[test]
    fn refuses_every_algorithm_but_hs256() {
        let v = Verifier::new(KEY, 0);
        let claims = access(json!("alice"), NOW + 60);
        for alg in ["none", "HS512", "HS384", "RS256", "ES256", "hs256"] {
            let t = token(&format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#), &claims, KEY);
            assert_eq!(v.verify(&t, NOW), Err(AuthError::Algorithm), "{alg}");
        }
        // alg none with an empty signature, the classic forgery.
        let h = URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#);
        let p = URL_SAFE_NO_PAD.encode(claims.to_string());
        assert_eq!(v.verify(&format!("{h}.{p}."), NOW), Err(AuthError::Algorithm));
        let crit = token(r#"{"alg":"HS256","crit":["b64"]}"#, &claims, KEY);
        assert_eq!(v.verify(&crit, NOW), Err(AuthError::Algorithm));
    }

    #[test]
    fn refuses_refresh_tokens_and_missing_claims() {
        let v = Verifier::new(KEY, 0);
        let refresh = json!({"token_type": "refresh", "exp": NOW + 60, "user_id": "alice"});
        assert_eq!(
            v.verify(&mint_hs256(KEY, &refresh), NOW),
            Err(AuthError::NotAccess)
        );
        let no_type = json!({"exp": NOW + 60, "user_id": "alice"});
        assert_eq!(
            v.verify(&mint_hs256(KEY, &no_type), NOW),
            Err(AuthError::NotAccess)
        );
        let no_exp = json!({"token_type": "access", "user_id": "alice"});
        assert_eq!(
            v.verify(&mint_hs256(KEY, &no_exp), NOW),
            Err(AuthError::Claim("exp"))
        );
        let no_user = json!({"token_type": "access", "exp": NOW + 60});
        assert_eq!(
            v.verify(&mint_hs256(KEY, &no_user), NOW),
            Err(AuthError::Claim("user_id"))
        );
        let bad_user = access(json!(["alice"]), NOW + 60);
        assert_eq!(
            v.verify(&mint_hs256(KEY, &bad_user), NOW),
            Err(AuthError::Claim("user_id"))
        );
    }

    #[test]
    fn expiry_has_zero_leeway_by_default_and_configurable_leeway() {
        let strict = Verifier::new(KEY, 0);
        let t = mint_hs256(KEY, &access(json!("alice"), NOW));
        assert_eq!(strict.verify(&t, NOW), Err(AuthError::Expired));
        assert!(strict.verify(&t, NOW - 1).is_ok());
        let lenient = Verifier::new(KEY, 30);
        assert!(lenient.verify(&t, NOW + 29).is_ok());
        assert_eq!(lenient.verify(&t, NOW + 30), Err(AuthError::Expired));
        let future = json!({"token_type": "access", "exp": NOW + 60, "nbf": NOW + 10, "user_id": "a"});
        assert_eq!(
            strict.verify(&mint_hs256(KEY, &future), NOW),
            Err(AuthError::NotYetValid)
        );
    }

    #[test]
    fn refuses_malformed_tokens_and_tampered_payloads() {
        let v = Verifier::new(KEY, 0);
        for bad in ["", "a", "a.b", "a.b.c.d", "!!.??.**", "e30.e30.e30"] {
            assert!(v.verify(bad, NOW).is_err(), "{bad:?}");
        }
        let good = mint_hs256(KEY, &access(json!("alice"), NOW + 60));
        let mut parts: Vec<&str> = good.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(access(json!("admin"), NOW + 60).to_string());
        parts[1] = &forged;
        assert_eq!(v.verify(&parts.join("."), NOW), Err(AuthError::Signature));
    }

    #[test]
    fn error_texts_never_contain_the_token() {
        let v = Verifier::new(KEY, 0);
        let t = mint_hs256(b"wrong", &access(json!("alice"), NOW + 60));
        let err = v.verify(&t, NOW).expect_err("wrong key");
        assert!(!err.to_string().contains(&t[..10]));
    }

    #[test]
    fn fallback_name_prefers_display_name_then_username_then_id() {
        let mut c = Claims {
            user_id: UserId::new("7").expect("id"),
            exp: 0,
            display_name: Some("Ada".into()),
            username: Some("ada".into()),
        };
        assert_eq!(c.fallback_name(), "Ada");
        c.display_name = None;
        assert_eq!(c.fallback_name(), "ada");
        c.username = None;
        assert_eq!(c.fallback_name(), "7");
    }

    #[test]
    fn fallback_name_is_cleaned_and_cut_and_skips_claims_left_empty() {
        let mut c = Claims {
            user_id: UserId::new("7").expect("id"),
            exp: 0,
            display_name: Some(format!("\u{202E}evil\u{0007}{}", "x".repeat(500))),
            username: Some("ada".into()),
        };
        assert_eq!(c.fallback_name(), format!("evil{}", "x".repeat(60)));
        c.display_name = Some("\u{200B}\u{202E} \n".into());
        assert_eq!(
            c.fallback_name(),
            "ada",
            "an unusable display_name falls to username"
        );
        c.username = Some("\u{2066}".into());
        assert_eq!(c.fallback_name(), "7");
    }

    #[test]
    fn constant_time_eq_compares_contents_and_lengths() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"abc"));
        assert!(constant_time_eq(b"", b""));
    }
}
