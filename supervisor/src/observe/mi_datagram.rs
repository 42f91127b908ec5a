//! MI over datagrams as OpenSIPS `mi_datagram` speaks it, as pure code: one JSON-RPC 2.0 request
//! per datagram (UDP or a unix datagram socket), its response sent back to the sender's address
//! in one datagram.
//!
//! A datagram that is not a valid request is answered with the JSON-RPC error at once; a
//! notification (no `id`) runs and gets nothing. A reply longer than [`MAX_DATAGRAM`] cannot
//! travel: an error saying so goes instead.

use crate::mi::proto::{encode_reply, validate};
use crate::mi::{Params, RpcError};
use serde_json::Value;

/// The longest request or reply, as `mi_datagram` has it.
pub const MAX_DATAGRAM: usize = 65457;

/// What a datagram makes.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A call to run; `id` `None` is a notification (no reply).
    Call {
        /// The method.
        method: String,
        /// Its parameters.
        params: Params,
        /// The id to answer with.
        id: Option<Value>,
    },
    /// Not a request: send this reply.
    Invalid(Vec<u8>),
}

/// Reads the request in `datagram`.
pub fn parse(datagram: &[u8]) -> Incoming {
    if datagram.len() > MAX_DATAGRAM {
        return Incoming::Invalid(reply(
            &Value::Null,
            &Err(RpcError::invalid_request(format!(
                "request of {} bytes is larger than {MAX_DATAGRAM}",
                datagram.len()
            ))),
        ));
    }
    let value = match serde_json::from_slice::<Value>(datagram) {
        Ok(v) => v,
        Err(e) => return Incoming::Invalid(reply(&Value::Null, &Err(RpcError::parse_error(e)))),
    };
    match validate(value, None) {
        Ok(req) => Incoming::Call {
            method: req.method,
            params: req.params,
            id: req.id,
        },
        Err((id, e)) => Incoming::Invalid(reply(&id, &Err(e))),
    }
}

/// The reply datagram of `result`, at most [`MAX_DATAGRAM`] bytes.
pub fn reply(id: &Value, result: &Result<Value, RpcError>) -> Vec<u8> {
    let line = encode_reply(id, result);
    if line.len() <= MAX_DATAGRAM {
        return line;
    }
    let e = RpcError::new(
        500,
        format!(
            "the reply ({} bytes) is larger than a datagram ({MAX_DATAGRAM} bytes): ask for less, \
             or use the FIFO or HTTP",
            line.len()
        ),
    );
    encode_reply(id, &Err(e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn json_of(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn requests_as_the_opensips_clients_send_them() {
        let d = br#"{"jsonrpc": "2.0", "id": "31", "method": "get_statistics", "params": {"statistics": ["all"]}}"#;
        match parse(d) {
            Incoming::Call { method, params, id } => {
                assert_eq!(method, "get_statistics");
                assert_eq!(
                    params,
                    Params::Named(json!({"statistics": ["all"]}).as_object().cloned().unwrap())
                );
                assert_eq!(id, Some(json!("31")));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(br#"{"jsonrpc":"2.0","method":"ps"}"#),
            Incoming::Call { id: None, .. }
        ));
    }

    #[test]
    fn invalid_datagrams_are_answered() {
        for (d, code) in [
            (b"garbage".to_vec(), -32700),
            (b"".to_vec(), -32700),
            (br#"{"jsonrpc":"2.0","id":1}"#.to_vec(), -32600),
            (vec![b' '; MAX_DATAGRAM + 1], -32600),
        ] {
            match parse(&d) {
                Incoming::Invalid(r) => assert_eq!(json_of(&r)["error"]["code"], code),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_reply_too_long_for_a_datagram_becomes_an_error() {
        let small = reply(&json!(1), &Ok(json!("OK")));
        assert_eq!(json_of(&small)["result"], "OK");
        let big = reply(&json!(1), &Ok(json!("x".repeat(MAX_DATAGRAM))));
        assert!(big.len() <= MAX_DATAGRAM);
        let e = json_of(&big);
        assert_eq!(e["error"]["code"], 500);
        assert_eq!(e["id"], 1);
        assert!(e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("larger than a datagram"));
    }
}
