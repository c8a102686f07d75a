//! HS256 JWT access tokens as djangorestframework-simplejwt issues them: the JWS (parts,
//! header, algorithm, signature) through `jsonwebtoken`, the claims checked here.
//!
//! Only `alg: HS256` is accepted: `none`, HS384/HS512, RS256 and everything else are
//! refused before the signature is looked at, so a key can never be used with an
//! algorithm it was not meant for.
//!
//! The dates (`exp`, `nbf`, with the leeway) are checked here rather than by
//! `jsonwebtoken`'s `Validation`, for four reasons found by reading its version 12: it
//! reads the wall clock itself (the server and its tests pass one `now`); it accepts a
//! token at `exp == now`, a second longer than PyJWT, which simplejwt uses; it computes
//! `now - leeway` unchecked (a huge leeway panics in a debug build); and it refuses a
//! float `exp` beyond `u64`, which PyJWT accepts.

use hablar_protocol::{names, UserId};
use hmac::{Hmac, Mac};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
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
    /// The key is empty: `jsonwebtoken` refuses to sign or verify with it.
    #[error("token key empty")]
    EmptyKey,
}

impl AuthError {
    /// The reason for a `jsonwebtoken` error while decoding a token whose header is HS256.
    fn from_decode(err: &jsonwebtoken::errors::Error) -> Self {
        match err.kind() {
            ErrorKind::InvalidSignature => Self::Signature,
            ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => Self::Algorithm,
            _ => Self::Malformed,
        }
    }

    /// The reason for a `jsonwebtoken` error while reading a token's header alone.
    fn from_header(err: &jsonwebtoken::errors::Error) -> Self {
        match err.kind() {
            // JSON of the wrong shape: in a header, an `alg` missing or not one
            // `jsonwebtoken` knows (`none`, `hs256`…).
            ErrorKind::Json(json) if json.classify() == serde_json::error::Category::Data => Self::Algorithm,
            _ => Self::Malformed,
        }
    }
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

/// Verifies access tokens with one HS256 key.
#[derive(Clone)]
pub struct Verifier {
    /// The key, or `None` when it is empty: then every token is refused (the
    /// configuration refuses an empty key before it gets here).
    key: Option<DecodingKey>,
    /// HS256 only; the dates are checked in [`Verifier::verify`] (see the module doc).
    validation: Validation,
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
        let mut validation = Validation::new(Algorithm::HS256);
        // `exp` is required and read below, as PyJWT reads it.
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        // simplejwt adds `aud` only when configured with an audience, and the server has
        // none to check it against: it is ignored, as it always was.
        validation.validate_aud = false;
        Self {
            key: DecodingKey::from_secret(secret).ok(),
            validation,
            leeway,
        }
    }

    /// Checks `token` at `now` (Unix seconds) and returns its claims.
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, AuthError> {
        // The header is read first, alone, so that an algorithm `jsonwebtoken` does not
        // know (`none`) is told apart from a token that is not a JWT at all.
        let header = jsonwebtoken::decode_header(token).map_err(|err| AuthError::from_header(&err))?;
        // No extension is understood, so none may be critical (`jsonwebtoken` would
        // take `b64`).
        if header.alg != Algorithm::HS256 || header.crit.is_some() {
            return Err(AuthError::Algorithm);
        }
        let key = self.key.as_ref().ok_or(AuthError::Signature)?;
        let claims = jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, key, &self.validation)
            .map_err(|err| AuthError::from_decode(&err))?
            .claims;

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

/// Reads a NumericDate as PyJWT does (`int(exp)`): an integer, or a float of seconds cut
/// to whole seconds; one beyond `u64` is the end of time, not an error.
fn numeric_date(value: Option<&Value>) -> Option<u64> {
    let n = value?.as_number()?;
    n.as_u64().or_else(|| {
        n.as_f64()
            .filter(|f| *f >= 0.0 && f.is_finite())
            .map(|f| f as u64)
    })
}

/// Signs `claims` as an HS256 JWT (the dev token endpoint uses it).
pub fn mint_hs256(secret: &[u8], claims: &Value) -> Result<String, AuthError> {
    let key = EncodingKey::from_secret(secret).map_err(|_| AuthError::EmptyKey)?;
    // `Header::default()` is `{"typ":"JWT","alg":"HS256"}`.
    Ok(jsonwebtoken::encode(&Header::default(), claims, &key)
        .expect("an HMAC key signs HS256, and a JSON value always serialises"))
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

    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;

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

    fn mint(key: &[u8], claims: &Value) -> String {
        mint_hs256(key, claims).expect("a non-empty key signs")
    }

    fn access(user_id: Value, exp: u64) -> Value {
        json!({"token_type": "access", "exp": exp, "iat": NOW - 10, "jti": "abc", "user_id": user_id})
    }

    #[test]
    fn accepts_a_simplejwt_access_token_with_string_or_integer_user_id() {
        let v = Verifier::new(KEY, 0);
        let claims = v
            .verify(&mint(KEY, &access(json!("alice"), NOW + 60)), NOW)
            .expect("valid");
        assert_eq!(claims.user_id.as_str(), "alice");
        let claims = v
            .verify(&mint(KEY, &access(json!(42), NOW + 60)), NOW)
            .expect("valid");
        assert_eq!(claims.user_id.as_str(), "42");
        assert_eq!(claims.exp, NOW + 60);
    }

    #[test]
    fn refuses_a_wrong_key() {
        let v = Verifier::new(KEY, 0);
        let t = mint(b"other-key", &access(json!("alice"), NOW + 60));
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
        assert_eq!(v.verify(&mint(KEY, &refresh), NOW), Err(AuthError::NotAccess));
        let no_type = json!({"exp": NOW + 60, "user_id": "alice"});
        assert_eq!(v.verify(&mint(KEY, &no_type), NOW), Err(AuthError::NotAccess));
        let no_exp = json!({"token_type": "access", "user_id": "alice"});
        assert_eq!(v.verify(&mint(KEY, &no_exp), NOW), Err(AuthError::Claim("exp")));
        let no_user = json!({"token_type": "access", "exp": NOW + 60});
        assert_eq!(
            v.verify(&mint(KEY, &no_user), NOW),
            Err(AuthError::Claim("user_id"))
        );
        let bad_user = access(json!(["alice"]), NOW + 60);
        assert_eq!(
            v.verify(&mint(KEY, &bad_user), NOW),
            Err(AuthError::Claim("user_id"))
        );
    }

    #[test]
    fn expiry_has_zero_leeway_by_default_and_configurable_leeway() {
        let strict = Verifier::new(KEY, 0);
        let t = mint(KEY, &access(json!("alice"), NOW));
        assert_eq!(strict.verify(&t, NOW), Err(AuthError::Expired));
        assert!(strict.verify(&t, NOW - 1).is_ok());
        let lenient = Verifier::new(KEY, 30);
        assert!(lenient.verify(&t, NOW + 29).is_ok());
        assert_eq!(lenient.verify(&t, NOW + 30), Err(AuthError::Expired));
        let future = json!({"token_type": "access", "exp": NOW + 60, "nbf": NOW + 10, "user_id": "a"});
        assert_eq!(
            strict.verify(&mint(KEY, &future), NOW),
            Err(AuthError::NotYetValid)
        );
    }

    #[test]
    fn refuses_malformed_tokens_and_tampered_payloads() {
        let v = Verifier::new(KEY, 0);
        for bad in ["", "a", "a.b", "a.b.c.d", "!!.??.**", "e30.e30.e30"] {
            assert!(v.verify(bad, NOW).is_err(), "{bad:?}");
        }
        let good = mint(KEY, &access(json!("alice"), NOW + 60));
        let mut parts: Vec<&str> = good.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(access(json!("admin"), NOW + 60).to_string());
        parts[1] = &forged;
        assert_eq!(v.verify(&parts.join("."), NOW), Err(AuthError::Signature));
    }

    #[test]
    fn error_texts_never_contain_the_token() {
        let v = Verifier::new(KEY, 0);
        let t = mint(b"wrong", &access(json!("alice"), NOW + 60));
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
    fn an_exp_is_read_as_pyjwt_reads_it_whatever_its_size() {
        let v = Verifier::new(KEY, 0);
        let exps = [
            (json!(1u64 << 63), 1u64 << 63),
            (json!(u64::MAX), u64::MAX),
            // Beyond `u64` (`jsonwebtoken`'s own check refuses it; PyJWT takes it).
            (json!(1e300), u64::MAX),
            // Cut, not rounded: PyJWT's `int(exp)`.
            (json!(NOW as f64 + 60.9), NOW + 60),
            (json!(NOW as f64 + 60.0), NOW + 60),
        ];
        for (exp, read) in exps {
            let claims = json!({"token_type": "access", "exp": exp, "user_id": "a"});
            let verified = v.verify(&mint(KEY, &claims), NOW);
            assert_eq!(verified.map(|c| c.exp), Ok(read), "{exp}");
        }
        for exp in [json!(-1), json!("soon"), json!(null)] {
            let claims = json!({"token_type": "access", "exp": exp, "user_id": "a"});
            assert_eq!(
                v.verify(&mint(KEY, &claims), NOW),
                Err(AuthError::Claim("exp")),
                "{exp}"
            );
        }
    }

    #[test]
    fn the_dates_are_judged_at_the_given_time_with_any_leeway() {
        // At a time long past (the wall clock would call the token expired) and with a
        // leeway beyond any clock (`now - leeway` must not overflow).
        let t = mint(KEY, &access(json!("alice"), NOW));
        assert!(Verifier::new(KEY, 0).verify(&t, NOW - 1).is_ok());
        assert!(Verifier::new(KEY, u64::MAX).verify(&t, NOW * 10).is_ok());
        let future = json!({"token_type": "access", "exp": NOW + 60, "nbf": u64::MAX, "user_id": "a"});
        assert!(Verifier::new(KEY, u64::MAX)
            .verify(&mint(KEY, &future), NOW)
            .is_ok());
        let bad_nbf = json!({"token_type": "access", "exp": NOW + 60, "nbf": "now", "user_id": "a"});
        assert_eq!(
            Verifier::new(KEY, 0).verify(&mint(KEY, &bad_nbf), NOW),
            Err(AuthError::Claim("nbf"))
        );
    }

    #[test]
    fn an_audience_is_ignored_and_any_crit_header_refused() {
        let v = Verifier::new(KEY, 0);
        let mut claims = access(json!("alice"), NOW + 60);
        claims["aud"] = json!("somebody-else");
        assert!(v.verify(&mint(KEY, &claims), NOW).is_ok());
        // `b64: true` is the default encoding, but no extension is understood here.
        let crit = token(r#"{"alg":"HS256","b64":true,"crit":["b64"]}"#, &claims, KEY);
        assert_eq!(v.verify(&crit, NOW), Err(AuthError::Algorithm));
    }

    #[test]
    fn minted_tokens_carry_the_simplejwt_header_and_an_empty_key_signs_nothing() {
        let t = mint(KEY, &access(json!("alice"), NOW + 60));
        let header = t.split('.').next().expect("a header");
        let header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).expect("base64")).expect("json");
        assert_eq!(header, json!({"alg": "HS256", "typ": "JWT"}));
        assert_eq!(
            mint_hs256(b"", &access(json!("alice"), NOW + 60)),
            Err(AuthError::EmptyKey)
        );
        let forged = token(r#"{"alg":"HS256"}"#, &access(json!("alice"), NOW + 60), b"");
        assert_eq!(
            Verifier::new(b"", 0).verify(&forged, NOW),
            Err(AuthError::Signature)
        );
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
