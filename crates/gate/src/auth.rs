//! Logins (`POST /token?default`), the account (`/users/me`) and the project.

use crate::http::{bad, err, ok, Req, R};
use crate::shape::{shape, str_field};
use crate::{now, GateState, BOT_PASSWORD, BOT_USER, ORG_ID, PROJECT_NAME, USER_ID};
use serde_json::{json, Value};

/// The token endpoint sits at the gate's host, outside `/api/v1`, and takes no bearer.
pub(crate) fn token_route(st: &mut GateState, req: &mut Req, segs: &[&str]) -> Option<R> {
    if req.method != "POST" || segs != ["token"] {
        return None;
    }
    Some(token(st, req))
}

/// The agent's local proxy inside a Dataloop pod (`GET /get_jwt`, dtlpy's
/// `_renew_token_in_dual_agent`): a fresh JWT of the project's user, `{"jwt": ...}`, living
/// `proxy_token_ttl` seconds. With a `jwt_secret`, the `X-Get-Jwt-Secret` header must match.
pub(crate) fn proxy_route(st: &mut GateState, req: &mut Req, segs: &[&str]) -> Option<R> {
    if segs != ["get_jwt"] {
        return None;
    }
    if req.method != "GET" {
        return Some(Err(err(405, "the agent proxy serves GET /get_jwt")));
    }
    let r = req.no_body().and_then(|_| {
        if let Some(secret) = &st.jwt_secret {
            if req.jwt_secret.as_deref() != Some(secret.as_str()) {
                return Err(err(401, "X-Get-Jwt-Secret is missing or wrong"));
            }
        }
        st.proxy_fetches += 1;
        let ttl = st.proxy_token_ttl;
        Ok(ok(json!({"jwt": st.jwt_for(ttl)})))
    });
    Some(r)
}

pub(crate) fn route(st: &mut GateState, req: &mut Req, segs: &[&str]) -> Option<R> {
    let r = match (req.method.as_str(), segs) {
        // dtlpy's login_token / login_api_key check the token here.
        ("GET", ["users", "me"]) => req.no_body().map(|_| ok(user())),
        ("GET", ["projects", id]) => req.no_body().and_then(|_| {
            if *id == st.project_id {
                Ok(ok(project(st)))
            } else {
                Err(err(404, "project not found"))
            }
        }),
        _ => return None,
    };
    Some(r)
}

fn user() -> Value {
    json!({"id": BOT_USER, "_id": USER_ID, "email": BOT_USER, "username": BOT_USER,
           "firstName": "cliptune", "lastName": "bot", "type": "bot", "role": "user",
           "createdAt": "2026-01-01T00:00:00.000Z", "updatedAt": "2026-01-01T00:00:00.000Z"})
}

pub(crate) fn project(st: &GateState) -> Value {
    json!({"id": st.project_id, "name": PROJECT_NAME, "creator": BOT_USER, "role": "owner",
           "org": {"id": ORG_ID, "name": "cliptune"}, "orgId": ORG_ID, "isBlocked": false,
           "contributors": [], "groups": [], "accountId": ORG_ID, "feedbackQueue": null,
           "createdAt": now(), "updatedAt": now()})
}

fn token(st: &mut GateState, req: &mut Req) -> R {
    if req.query != "default" {
        return Err(bad("token endpoint is /token?default"));
    }
    let v = req.json()?;
    let kind = v.get("type").and_then(Value::as_str).unwrap_or("");
    match kind {
        "user_credentials" => {
            let m = shape(
                &v,
                "login",
                &["username", "password", "type"],
                &["username", "password", "type"],
            )?;
            if m["username"] != json!(BOT_USER) || m["password"] != json!(BOT_PASSWORD) {
                return Err(err(401, "wrong username or password"));
            }
            st.logins += 1;
            let jwt = st.jwt();
            let refresh = format!("refresh-{}", st.id());
            st.refresh_tokens.insert(refresh.clone());
            Ok(ok(
                json!({"id_token": jwt, "refresh_token": refresh, "token_type": "Bearer"}),
            ))
        }
        "refresh_token" => {
            let m = shape(
                &v,
                "refresh",
                &["type", "refresh_token"],
                &["type", "refresh_token"],
            )?;
            let r = str_field(&m, "refresh_token", "refresh")?;
            if !st.refresh_tokens.contains(r) {
                return Err(err(401, "unknown refresh token"));
            }
            st.refreshes += 1;
            Ok(ok(json!({"id_token": st.jwt()})))
        }
        _ => Err(bad(
            "token request: type must be user_credentials or refresh_token",
        )),
    }
}
