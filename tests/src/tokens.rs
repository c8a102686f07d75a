//! JWT minting for tests. Valid tokens come from the one HS256 minter the server's dev
//! endpoint and the bench use too (`hablar_server::auth::mint_hs256`); the tokens that a
//! minter must never produce (another algorithm, `alg: none`, a forged header) are
//! assembled here by hand. The simplejwt interop tests check the minter against tokens
//! Django issued. Every token minted here is remembered for the log check.

use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hablar_server::auth::mint_hs256;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::{Sha256, Sha512};

/// The JWT key every [`crate::TestServer`] uses.
pub const SECRET: &str = "hablar-test-secret";

fn minted() -> &'static Mutex<Vec<String>> {
    static MINTED: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    MINTED.get_or_init(Mutex::default)
}

/// Every token minted so far in this process.
pub fn all_minted() -> Vec<String> {
    minted().lock().map(|m| m.clone()).unwrap_or_default()
}

fn remember(token: String) -> String {
    if let Ok(mut m) = minted().lock() {
        m.push(token.clone());
    }
    token
}

/// Now, in Unix seconds.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// simplejwt-like access claims for `user_id` valid for an hour.
pub fn access_claims(user_id: impl Into<Value>) -> Value {
    let now = now();
    json!({
        "token_type": "access",
        "exp": now + 3600,
        "iat": now,
        "jti": format!("{:x}", rand_u64()),
        "user_id": user_id.into(),
    })
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::Instant::now())
}

/// A valid access token for `user_id`.
pub fn token(user_id: &str) -> String {
    hs256(&access_claims(user_id))
}

/// A valid access token that expires `secs` from now.
pub fn token_expiring_in(user_id: &str, secs: u64) -> String {
    let mut claims = access_claims(user_id);
    claims["exp"] = json!(now() + secs);
    hs256(&claims)
}

/// Signs `claims` with HS256 and [`SECRET`].
pub fn hs256(claims: &Value) -> String {
    hs256_with_key(claims, SECRET.as_bytes())
}

/// Signs `claims` with HS256 and another key.
pub fn hs256_with_key(claims: &Value, key: &[u8]) -> String {
    remember(mint_hs256(key, claims).expect("a test signing key is never empty"))
}

/// Signs `claims` with HS512 and [`SECRET`] (the server must refuse the algorithm).
pub fn hs512(claims: &Value) -> String {
    let (h, p) = encode_parts(r#"{"alg":"HS512","typ":"JWT"}"#, claims);
    let mut mac = Hmac::<Sha512>::new_from_slice(SECRET.as_bytes()).expect("any key length");
    mac.update(format!("{h}.{p}").as_bytes());
    remember(format!(
        "{h}.{p}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    ))
}

/// An unsigned `alg: none` token.
pub fn alg_none(claims: &Value) -> String {
    let (h, p) = encode_parts(r#"{"alg":"none","typ":"JWT"}"#, claims);
    remember(format!("{h}.{p}."))
}

/// A token with any header, signed with HS256 over it (e.g. `"alg":"RS256"`): a forgery
/// no minter makes, so by hand.
pub fn with_header(header: &str, claims: &Value) -> String {
    let (h, p) = encode_parts(header, claims);
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
    mac.update(format!("{h}.{p}").as_bytes());
    remember(format!(
        "{h}.{p}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    ))
}

fn encode_parts(header: &str, claims: &Value) -> (String, String) {
    (
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
    )
}

/// A valid access token for `user_id` whose `exp` is `exp` as given (an integer, a float,
/// anything JSON), for the edges of the NumericDate.
pub fn token_with_exp(user_id: &str, exp: Value) -> String {
    let mut claims = access_claims(user_id);
    claims["exp"] = exp;
    hs256(&claims)
}
