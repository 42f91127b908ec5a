//! MI over HTTP as OpenSIPS `mi_http` speaks it, as pure code: which call an HTTP request makes
//! and which HTTP response its result makes.
//!
//! - `POST /ROOT` (or below it) with a JSON-RPC 2.0 request as body: the JSON-RPC response, HTTP
//!   200 (errors of the method included, as `mi_http`); a notification (no `id`) runs and gets
//!   `202 Accepted` with no body; an empty body is 400.
//! - `GET /ROOT/METHOD?NAME=VALUE&...`: the same call with named string parameters (a name given
//!   twice makes a list), answered with `"id": null`.
//! - Anything else under the root is 405; outside it, 404.
//!
//! When the call cannot reach the daemon's loop the response is 503 (busy, stopping) or 504 (no
//! answer in time), with a JSON-RPC error as body.

use super::http::{Request as HttpRequest, Response};
use crate::mi::bridge::BridgeError;
use crate::mi::proto::{encode_reply, validate};
use crate::mi::{Params, RpcError};
use percent_encoding::percent_decode_str;
use serde_json::{Map, Value};

/// What an HTTP request makes.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    /// A call to run; its result is answered with `id` (`None`: a notification, 202).
    Call {
        /// The method.
        method: String,
        /// Its parameters.
        params: Params,
        /// The JSON-RPC id to answer with.
        id: Option<Value>,
    },
    /// A response to send at once.
    Answer(Response),
}

/// The call (or the immediate answer) of `req` for an MI root `root` (`mi`).
pub fn route(root: &str, req: &HttpRequest) -> Route {
    let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
    let Some(rest) = path
        .strip_prefix('/')
        .and_then(|p| p.strip_prefix(root))
        .filter(|rest| rest.is_empty() || rest.starts_with('/'))
    else {
        return Route::Answer(Response::text(404, "the MI root is elsewhere"));
    };
    match req.method.as_str() {
        "POST" => post(&req.body),
        "GET" => match rest.trim_start_matches('/') {
            "" => Route::Answer(
                Response::text(405, "POST a JSON-RPC request here, or GET /ROOT/METHOD")
                    .with_header("Allow", "POST"),
            ),
            method => get(method, query),
        },
        _ => Route::Answer(Response::text(405, "").with_header("Allow", "GET, POST")),
    }
}

fn post(body: &[u8]) -> Route {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Route::Answer(Response::text(400, "empty request"));
    }
    let value = match serde_json::from_slice::<Value>(body) {
        Ok(v) => v,
        Err(e) => return error_reply(&Value::Null, RpcError::parse_error(e)),
    };
    match validate(value, None) {
        Ok(req) => Route::Call {
            method: req.method,
            params: req.params,
            id: req.id,
        },
        Err((id, e)) => error_reply(&id, e),
    }
}

fn error_reply(id: &Value, e: RpcError) -> Route {
    Route::Answer(Response::json(200, encode_reply(id, &Err(e))))
}

/// `application/x-www-form-urlencoded` text: `+` is a space, then percent-escapes.
fn form_decode(s: &str) -> Option<String> {
    let spaced = s.replace('+', " ");
    percent_decode_str(&spaced)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

fn get(method: &str, query: &str) -> Route {
    let bad = |what: &str| Route::Answer(Response::text(400, what));
    let Some(method) = form_decode(method).filter(|m| !m.is_empty() && !m.contains('/')) else {
        return bad("the method must be one path segment of UTF-8");
    };
    let mut named: Map<String, Value> = Map::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let (Some(name), Some(value)) = (form_decode(name), form_decode(value)) else {
            return bad("the query is not UTF-8");
        };
        match named.get_mut(&name) {
            None => {
                named.insert(name, Value::String(value));
            }
            Some(Value::Array(list)) => list.push(Value::String(value)),
            Some(first) => *first = Value::Array(vec![first.take(), Value::String(value)]),
        }
    }
    let params = if named.is_empty() {
        Params::None
    } else {
        Params::Named(named)
    };
    Route::Call {
        method,
        params,
        id: Some(Value::Null),
    }
}

/// The HTTP response of a call's outcome.
pub fn answer(
    id: Option<&Value>,
    outcome: Result<Result<Value, RpcError>, BridgeError>,
) -> Response {
    let (status, result) = match outcome {
        Ok(result) => (200, result),
        Err(e @ (BridgeError::Busy | BridgeError::Closed)) => {
            (503, Err(RpcError::new(503, e.to_string())))
        }
        Err(e @ BridgeError::Timeout(_)) => (504, Err(RpcError::new(504, e.to_string()))),
    };
    match id {
        None if status == 200 => Response {
            status: 202,
            content_type: "",
            headers: Vec::new(),
            body: Vec::new(),
        },
        id => Response::json(status, encode_reply(id.unwrap_or(&Value::Null), &result)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    fn req(method: &str, target: &str, body: &str) -> HttpRequest {
        HttpRequest {
            method: method.into(),
            target: target.into(),
            authorization: None,
            body: body.as_bytes().to_vec(),
        }
    }

    fn status(r: Route) -> u16 {
        match r {
            Route::Answer(resp) => resp.status,
            Route::Call { .. } => panic!("a call"),
        }
    }

    fn body(r: Route) -> Value {
        match r {
            Route::Answer(resp) => serde_json::from_slice(&resp.body).unwrap(),
            Route::Call { .. } => panic!("a call"),
        }
    }

    #[test]
    fn posted_json_rpc_becomes_a_call() {
        let r = route(
            "mi",
            &req(
                "POST",
                "/mi",
                r#"{"jsonrpc":"2.0","id":"7","method":"get_statistics","params":[["all"]]}"#,
            ),
        );
        assert_eq!(
            r,
            Route::Call {
                method: "get_statistics".into(),
                params: Params::Positional(vec![json!(["all"])]),
                id: Some(json!("7")),
            }
        );
        // Below the root too, and a notification.
        let r = route(
            "mi",
            &req("POST", "/mi/", r#"{"jsonrpc":"2.0","method":"ps"}"#),
        );
        assert!(matches!(r, Route::Call { id: None, .. }), "{r:?}");
    }

    #[test]
    fn bad_posts_get_json_rpc_errors_or_400() {
        assert_eq!(
            body(route("mi", &req("POST", "/mi", "{")))["error"]["code"],
            -32700
        );
        let b = body(route(
            "mi",
            &req("POST", "/mi", r#"{"jsonrpc":"1.0","id":3,"method":"x"}"#),
        ));
        assert_eq!(
            (b["error"]["code"].clone(), b["id"].clone()),
            (json!(-32600), json!(3))
        );
        assert_eq!(
            body(route("mi", &req("POST", "/mi", "[]")))["error"]["code"],
            -32600
        );
        assert_eq!(status(route("mi", &req("POST", "/mi", " \r\n"))), 400);
    }

    #[test]
    fn get_with_query_parameters() {
        let r = route(
            "mi",
            &req(
                "GET",
                "/mi/get_statistics?statistics=tcp%3A&statistics=core:&x=a+b",
                "",
            ),
        );
        assert_eq!(
            r,
            Route::Call {
                method: "get_statistics".into(),
                params: Params::Named(
                    json!({"statistics": ["tcp:", "core:"], "x": "a b"})
                        .as_object()
                        .cloned()
                        .unwrap()
                ),
                id: Some(Value::Null),
            }
        );
        assert_eq!(
            route("mi", &req("GET", "/mi/sockets_list", "")),
            Route::Call {
                method: "sockets_list".into(),
                params: Params::None,
                id: Some(Value::Null),
            }
        );
        assert_eq!(status(route("mi", &req("GET", "/mi/%ff", ""))), 400);
        assert_eq!(status(route("mi", &req("GET", "/mi/a/b", ""))), 400);
    }

    #[test]
    fn wrong_paths_and_methods() {
        assert_eq!(status(route("mi", &req("POST", "/", "{}"))), 404);
        assert_eq!(status(route("mi", &req("POST", "/mix", "{}"))), 404);
        assert_eq!(status(route("mi", &req("GET", "/metrics", ""))), 404);
        assert_eq!(status(route("mi", &req("GET", "/mi", ""))), 405);
        assert_eq!(status(route("mi", &req("DELETE", "/mi", ""))), 405);
        assert_eq!(status(route("opensips_mi", &req("GET", "/mi/ps", ""))), 404);
    }

    #[test]
    fn outcomes_become_responses() {
        let r = answer(Some(&json!(1)), Ok(Ok(json!("OK"))));
        assert_eq!(r.status, 200);
        assert_eq!(
            serde_json::from_slice::<Value>(&r.body).unwrap(),
            json!({"jsonrpc": "2.0", "result": "OK", "id": 1})
        );
        let r = answer(Some(&json!(1)), Ok(Err(RpcError::new(500, "boom"))));
        assert_eq!(r.status, 200);
        assert_eq!(answer(None, Ok(Ok(json!(1)))).status, 202);
        assert!(answer(None, Ok(Ok(json!(1)))).body.is_empty());
        assert_eq!(answer(None, Err(BridgeError::Busy)).status, 503);
        assert_eq!(
            answer(Some(&json!(1)), Err(BridgeError::Closed)).status,
            503
        );
        let r = answer(
            Some(&json!("a")),
            Err(BridgeError::Timeout(Duration::from_secs(1))),
        );
        assert_eq!(r.status, 504);
        let b: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            (b["error"]["code"].clone(), b["id"].clone()),
            (json!(504), json!("a"))
        );
    }
}
