//! Accounts and sessions: registration, login, logout (one session, one by id, all), the
//! session list, password changes, and who the caller is.

use super::{App, Route, SESSION_COOKIE};
use crate::http::{Body, Reply, RequestBody, empty, json, read_json};
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use im_limits::{Key, Limit};
use im_protocol::{ApiError, ErrorCode};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    username: String,
    password: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordChange {
    current_password: String,
    new_password: String,
}

/// 204 that also clears the session cookie: the caller's own session has ended.
fn logged_out() -> Response<Body> {
    let mut res = empty(StatusCode::NO_CONTENT);
    let gone = format!("{SESSION_COOKIE}=; HttpOnly; SameSite=Lax; Path=/; Max-Age=0");
    if let Ok(v) = HeaderValue::from_str(&gone) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    res
}

impl App {
    /// `/auth/…` and `/me`.
    pub(super) async fn accounts(&self, route: Route, req: Request<RequestBody>) -> Reply {
        match route {
            Route::Register => {
                self.limit_address(Limit::RegisterPerAddress, &req).await?;
                let body: Login = read_json(req, self.config.max_json_bytes).await?;
                let user = self.users.register(&body.username, &body.password).await?;
                Ok(json(StatusCode::CREATED, &json!({ "user": user })))
            }
            Route::Login => {
                // Both budgets are spent before any hashing, so a refused guess costs nothing.
                self.limit_address(Limit::LoginPerAddress, &req).await?;
                let agent = req
                    .headers()
                    .get(header::USER_AGENT)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let body: Login = read_json(req, self.config.max_json_bytes).await?;
                self.limit(Limit::LoginPerAccount, Key::Name(&body.username))
                    .await?;
                let out = self
                    .users
                    .login(&body.username, &body.password, &agent)
                    .await
                    .map_err(|e| {
                        let e = ApiError::from(e);
                        metrics::counter!("im_login_failures_total", "code" => e.code.to_string())
                            .increment(1);
                        e
                    })?;
                let mut res = json(
                    StatusCode::OK,
                    &json!({ "token": out.token, "user": out.user }),
                );
                let secure = if self.config.cookie_is_secure() {
                    "; Secure"
                } else {
                    ""
                };
                // The cookie lives as long as the session may (its absolute expiry).
                let max_age = self
                    .users
                    .session_lifetime()
                    .map_or(String::new(), |d| format!("; Max-Age={}", d.as_secs()));
                let cookie = format!(
                    "{SESSION_COOKIE}={}; HttpOnly; SameSite=Lax; Path=/{max_age}{secure}",
                    out.token
                );
                if let Ok(v) = HeaderValue::from_str(&cookie) {
                    res.headers_mut().insert(header::SET_COOKIE, v);
                }
                Ok(res)
            }
            Route::Logout => {
                let who = self.principal(&req).await?;
                // Revoked through the log: every node, this one included, drops the session
                // from its cache and ends its streams as its follower applies it.
                self.users.logout(who).await?;
                Ok(logged_out())
            }
            Route::Sessions => {
                let who = self.principal(&req).await?;
                let sessions = self.users.session_list(who).await?;
                Ok(json(StatusCode::OK, &json!({ "sessions": sessions })))
            }
            Route::EndSession(id) => {
                let who = self.principal(&req).await?;
                self.users.end_session(who, id).await?;
                Ok(if id == who.session {
                    logged_out()
                } else {
                    empty(StatusCode::NO_CONTENT)
                })
            }
            Route::LogoutAll => {
                let who = self.principal(&req).await?;
                self.users.logout_all(who).await?;
                Ok(logged_out())
            }
            Route::Password => {
                let who = self.principal(&req).await?;
                // Guessing the current password with a stolen token spends the account's
                // login budget, as a login would.
                let name = self.users.user(who.user)?.username;
                self.limit(Limit::LoginPerAccount, Key::Name(&name)).await?;
                let body: PasswordChange = read_json(req, self.config.max_json_bytes).await?;
                self.users
                    .change_password(who, &body.current_password, &body.new_password)
                    .await?;
                Ok(empty(StatusCode::NO_CONTENT))
            }
            Route::Session => {
                // Like /me, but "not logged in" is an answer rather than an error, so a page
                // can ask without a failed request in its console.
                let creds = self.credentials(&req);
                let user = match self.auth.authenticate(creds).await? {
                    Some(p) => self.users.settled(|| self.users.user(p.user)).await.ok(),
                    None => None,
                };
                Ok(json(StatusCode::OK, &json!({ "user": user })))
            }
            Route::Me => {
                let who = self.principal(&req).await?;
                let user = self.users.settled(|| self.users.user(who.user)).await?;
                Ok(json(StatusCode::OK, &json!({ "user": user })))
            }
            _ => Err(ApiError::new(ErrorCode::NotFound, "no such route")),
        }
    }
}
