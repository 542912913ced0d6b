//! Who is asking: Hub tokens for API clients, the Hub's OAuth for browsers, and build
//! tokens so that only the service's own launch page starts builds from a browser
//! (`reference/reliability.md` §5.2–5.3).
//!
//! - `Authorization: token <t>` (or `Bearer`) is resolved with `GET <hub api>/user`,
//!   cached for [`TOKEN_CACHE`] under the token's SHA-256 (the token itself is not kept).
//! - A browser without a session goes through the authorization-code flow: a random
//!   `state` in a cookie scoped to the prefix and in memory, checked on return; the code
//!   is exchanged at `<hub api>/oauth2/token`; the session cookie holds a random id, never
//!   the Hub token (HttpOnly, SameSite=Lax, Secure when the proxy says https).
//! - Users need `access:services!service=<name>` (or `access:services`); others get 403.
//! - A cookie-authenticated build request needs a build token minted by the launch page:
//!   an HMAC over (user, `provider/spec`, origin, expiry) with a secret made at start
//!   (one service process; a restart invalidates open pages, which fetch a new one).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::config::ServeConfig;

/// How long a token's user is reused before the Hub is asked again.
pub const TOKEN_CACHE: Duration = Duration::from_secs(60);
/// How long a browser session lasts.
const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// How long a login may take.
const STATE_LIFETIME: Duration = Duration::from_secs(600);
/// The session cookie's name.
pub const SESSION_COOKIE: &str = "hpcbinder-session";
/// The OAuth state cookie's name.
pub const STATE_COOKIE: &str = "hpcbinder-oauth-state";

/// A Hub user, as `GET /hub/api/user` describes them.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct User {
    /// The user name.
    pub name: String,
    /// The scopes of the token that identified them.
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// When a token was looked up, and whose it was.
type CachedUser = (Instant, Option<User>);

struct Session {
    user: String,
    token: String,
    created: Instant,
    xsrf: String,
}

/// Why a request is not let in.
#[derive(Debug)]
pub enum Denied {
    /// No credentials, or credentials the Hub does not know: 403 for API requests.
    Anonymous,
    /// A known user without the service's access scope: 403.
    NoAccess(String),
    /// The Hub could not be asked: 503.
    HubDown(String),
}

/// The service's authentication state.
pub struct Auth {
    config: std::sync::Arc<ServeConfig>,
    http: reqwest::Client,
    tokens: Mutex<HashMap<[u8; 32], CachedUser>>,
    sessions: Mutex<HashMap<String, Session>>,
    states: Mutex<HashMap<String, (Instant, String)>>,
    secret: [u8; 32],
}

fn random_hex() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

fn now_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Auth {
    /// Authentication against the Hub of `config`.
    pub fn new(config: std::sync::Arc<ServeConfig>) -> Self {
        let mut secret = [0u8; 32];
        secret[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        secret[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        Self {
            config,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .no_proxy()
                .build()
                .unwrap_or_default(),
            tokens: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            states: Mutex::new(HashMap::new()),
            secret,
        }
    }

    /// Whether a user may use the service.
    pub fn has_access(&self, user: &User) -> bool {
        let scope = self.config.access_scope();
        user.scopes
            .iter()
            .any(|s| s == &scope || s == "access:services")
    }

    /// The user a Hub token belongs to; `Ok(None)` when the Hub does not know it.
    pub async fn user_for_token(&self, token: &str) -> Result<Option<User>, Denied> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some((when, user)) = self
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&digest)
        {
            if when.elapsed() < TOKEN_CACHE {
                return Ok(user.clone());
            }
        }
        let api = self
            .config
            .hub_api
            .as_deref()
            .ok_or_else(|| Denied::HubDown("JUPYTERHUB_API_URL is not set".into()))?;
        let response = self
            .http
            .get(format!("{api}/user"))
            .header("Authorization", format!("token {token}"))
            .send()
            .await
            .map_err(|e| Denied::HubDown(format!("the Hub API did not answer: {e}")))?;
        let user = match response.status().as_u16() {
            200 => {
                let body = response
                    .bytes()
                    .await
                    .map_err(|e| Denied::HubDown(e.to_string()))?;
                Some(
                    serde_json::from_slice::<User>(&body)
                        .map_err(|e| Denied::HubDown(format!("the Hub's user model: {e}")))?,
                )
            }
            401 | 403 | 404 => None,
            status => return Err(Denied::HubDown(format!("the Hub API answered {status}"))),
        };
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        if tokens.len() > 10_000 {
            tokens.retain(|_, (when, _)| when.elapsed() < TOKEN_CACHE);
        }
        tokens.insert(digest, (Instant::now(), user.clone()));
        Ok(user)
    }

    /// An API client's user, from its `Authorization` header.
    pub async fn user_of_header(&self, header: Option<&str>) -> Result<Option<User>, Denied> {
        let Some(header) = header else {
            return Ok(None);
        };
        let token = header
            .strip_prefix("token ")
            .or_else(|| header.strip_prefix("Token "))
            .or_else(|| header.strip_prefix("Bearer "))
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim);
        match token {
            Some(token) if !token.is_empty() => self.user_for_token(token).await,
            _ => Ok(None),
        }
    }

    /// A browser's user, from its session cookie: the session's Hub token is checked
    /// again (cached), so a token revoked in the Hub ends the session.
    pub async fn user_of_session(&self, session: &str) -> Result<Option<(User, String)>, Denied> {
        let found = {
            let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            sessions.retain(|_, s| s.created.elapsed() < SESSION_LIFETIME);
            sessions
                .get(session)
                .map(|s| (s.token.clone(), s.xsrf.clone(), s.user.clone()))
        };
        let Some((token, xsrf, name)) = found else {
            return Ok(None);
        };
        match self.user_for_token(&token).await? {
            Some(user) if user.name == name => Ok(Some((user, xsrf))),
            _ => {
                self.sessions
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(session);
                Ok(None)
            }
        }
    }

    /// Start a login: remember `next` under a fresh state; returns the state and the
    /// Hub's authorize URL.
    pub fn begin_login(&self, next: &str) -> (String, String) {
        let state = random_hex();
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        states.retain(|_, (when, _)| when.elapsed() < STATE_LIFETIME);
        states.insert(state.clone(), (Instant::now(), next.to_string()));
        let mut authorize = url::form_urlencoded::Serializer::new(String::new());
        authorize
            .append_pair("client_id", &self.config.client_id)
            .append_pair("redirect_uri", &self.config.callback)
            .append_pair("response_type", "code")
            .append_pair("state", &state);
        let base = self.config.hub_base.trim_end_matches('/');
        (
            state,
            format!("{base}/hub/api/oauth2/authorize?{}", authorize.finish()),
        )
    }

    /// Finish a login: the state must be the one this browser started with; the code is
    /// exchanged for a token. Returns the new session id and where to go next.
    pub async fn finish_login(
        &self,
        code: &str,
        state: &str,
        cookie_state: Option<&str>,
    ) -> Result<(String, String), Denied> {
        if cookie_state != Some(state) {
            return Err(Denied::Anonymous);
        }
        let next = {
            let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
            match states.remove(state) {
                Some((when, next)) if when.elapsed() < STATE_LIFETIME => next,
                _ => return Err(Denied::Anonymous),
            }
        };
        let api = self
            .config
            .hub_api
            .as_deref()
            .ok_or_else(|| Denied::HubDown("JUPYTERHUB_API_URL is not set".into()))?;
        let secret = self.config.hub_token.clone().unwrap_or_default();
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("client_id", &self.config.client_id)
            .append_pair("client_secret", &secret)
            .append_pair("grant_type", "authorization_code")
            .append_pair("code", code)
            .append_pair("redirect_uri", &self.config.callback)
            .finish();
        let response = self
            .http
            .post(format!("{api}/oauth2/token"))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| {
                Denied::HubDown(format!("the Hub's token endpoint did not answer: {e}"))
            })?;
        if !response.status().is_success() {
            return Err(Denied::Anonymous);
        }
        #[derive(serde::Deserialize)]
        struct Token {
            access_token: String,
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| Denied::HubDown(e.to_string()))?;
        let token: Token = serde_json::from_slice(&body).map_err(|_| Denied::Anonymous)?;
        let user = self
            .user_for_token(&token.access_token)
            .await?
            .ok_or(Denied::Anonymous)?;
        if !self.has_access(&user) {
            return Err(Denied::NoAccess(user.name));
        }
        let session = random_hex();
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                session.clone(),
                Session {
                    user: user.name,
                    token: token.access_token,
                    created: Instant::now(),
                    xsrf: random_hex(),
                },
            );
        Ok((session, next))
    }

    fn sign(&self, user: &str, audience: &str, origin: &str, expires: u64) -> String {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.secret) else {
            return String::new();
        };
        for part in [user, audience, origin, &expires.to_string()] {
            mac.update(part.as_bytes());
            mac.update(&[0]);
        }
        hex::encode(mac.finalize().into_bytes())
    }

    /// A build token for `user` to build `audience` (`provider/spec`) from `origin`.
    pub fn build_token(&self, user: &str, audience: &str, origin: &str) -> String {
        let expires = now_seconds() + self.config.build_token_expires.as_secs();
        format!("{expires}.{}", self.sign(user, audience, origin, expires))
    }

    /// Whether `token` is a valid, unexpired build token for this user, spec and origin.
    pub fn check_build_token(&self, token: &str, user: &str, audience: &str, origin: &str) -> bool {
        let Some((expires, signature)) = token.split_once('.') else {
            return false;
        };
        let Ok(expires) = expires.parse::<u64>() else {
            return false;
        };
        if expires < now_seconds() {
            return false;
        }
        let expected = self.sign(user, audience, origin, expires);
        // Constant-time comparison of equal-length hex strings.
        expected.len() == signature.len()
            && expected
                .bytes()
                .zip(signature.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }

    /// Whether `value` is the session's XSRF token (for scripts that set `X-XSRFToken`).
    pub fn check_xsrf(expected: &str, value: Option<&str>) -> bool {
        value.is_some_and(|v| v.len() == expected.len() && v == expected)
    }
}

/// A cookie's value from a `Cookie` header.
pub fn cookie<'a>(header: Option<&'a str>, name: &str) -> Option<&'a str> {
    header?.split(';').find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        (key == name).then_some(value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        let config = super::super::config::ServeConfig::resolve(
            &Default::default(),
            Some("127.0.0.1"),
            Some(1),
        )
        .unwrap();
        Auth::new(std::sync::Arc::new(config))
    }

    #[test]
    fn build_tokens_are_bound_to_user_spec_and_origin() {
        let auth = auth();
        let token = auth.build_token("alice", "gh/org/repo/HEAD", "hub.example");
        assert!(auth.check_build_token(&token, "alice", "gh/org/repo/HEAD", "hub.example"));
        assert!(!auth.check_build_token(&token, "bob", "gh/org/repo/HEAD", "hub.example"));
        assert!(!auth.check_build_token(&token, "alice", "gh/org/other/HEAD", "hub.example"));
        assert!(!auth.check_build_token(&token, "alice", "gh/org/repo/HEAD", "evil.example"));
        let (_, signature) = token.split_once('.').unwrap();
        let expired = format!("{}.{signature}", now_seconds() - 1);
        assert!(!auth.check_build_token(&expired, "alice", "gh/org/repo/HEAD", "hub.example"));
        assert!(!auth.check_build_token("garbage", "alice", "gh/org/repo/HEAD", "hub.example"));
    }

    #[test]
    fn login_state_must_match_the_browsers_cookie() {
        let auth = auth();
        let (state, url) = auth.begin_login("/v2/gh/a/b/HEAD");
        assert!(
            url.contains("/hub/api/oauth2/authorize?client_id=service-binder"),
            "{url}"
        );
        assert!(url.contains(&format!("state={state}")));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let wrong = runtime.block_on(auth.finish_login("code", &state, Some("other")));
        assert!(matches!(wrong, Err(Denied::Anonymous)));
        let missing = runtime.block_on(auth.finish_login("code", &state, None));
        assert!(matches!(missing, Err(Denied::Anonymous)));
    }

    #[test]
    fn cookies_are_found_by_name() {
        let header = Some("a=1; hpcbinder-session=abc; b=2");
        assert_eq!(cookie(header, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(header, "c"), None);
    }
}
