//! TLS, WS and WSS end to end on the real daemon: certificates the test makes (a CA and server
//! certificates signed by it, with rcgen) written to PEM files the configuration names, rows applied
//! by `sockets_reload`, and real clients: rustls, tungstenite and SIPp. Covers the certificate each
//! socket presents (default and per tag), rotation at reload, certificates that do not load, the
//! WebSocket subprotocol, and what `sockets_status`, `ps` and the shm dump show of connections.

mod common;

use common::*;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tungstenite::client::IntoClientRequest;
use tungstenite::Message;

// ---- certificates -----------------------------------------------------------------------------

/// A test CA; server certificates are signed by it, clients trust only it.
struct Pki {
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

/// A server certificate and its key, as PEM (what the daemon reads) and DER (what a client sees).
struct ServerCert {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Pki {
    fn new() -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "sipsockd test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
            .unwrap();
        Pki { ca }
    }

    /// A certificate for 127.0.0.1 and localhost; `name` goes in the subject, so two certificates
    /// of one test differ in more than their keys.
    fn server(&self, name: &str) -> ServerCert {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.ca).unwrap();
        ServerCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// A client configuration (ring) that trusts this CA only.
    fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
        )
    }
}

impl ServerCert {
    /// Write `<stem>.crt` and `<stem>.key` into `dir`; returns their paths.
    fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let (crt, key) = (
            dir.join(format!("{stem}.crt")),
            dir.join(format!("{stem}.key")),
        );
        // Through a rename: the daemon reads the files only at a reload, but a half-written file
        // must never be what it reads.
        for (path, text) in [(&crt, &self.cert_pem), (&key, &self.key_pem)] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        }
        (crt, key)
    }
}

/// The TOML keys of one TLS context (`[tls]` or `[tls.tag.<TAG>]`).
fn tls_keys(section: &str, (crt, key): &(PathBuf, PathBuf)) -> String {
    format!(
        "[{section}]\ncertificate = {:?}\nprivate_key = {:?}\n",
        crt.display().to_string(),
        key.display().to_string()
    )
}

/// A daemon with two stream workers and `extra` configuration (TLS sections).
fn daemon(name: &str, extra: &str) -> Daemon {
    Daemon::start(
        name,
        Opts {
            extra: format!("[tcp]\nworkers = 2\n{extra}"),
            ..Opts::default()
        },
    )
}

// ---- clients ----------------------------------------------------------------------------------

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn tcp(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.set_write_timeout(Some(DEADLINE)).unwrap();
    s
}

/// A TLS connection to 127.0.0.1:`port`, handshake done (the server certificate verified against
/// the test CA for the name 127.0.0.1).
fn tls(port: u16, pki: &Pki) -> Tls {
    let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into());
    let conn = rustls::ClientConnection::new(pki.client_config(), name).unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp(port));
    while s.conn.is_handshaking() {
        if let Err(e) = s.conn.complete_io(&mut s.sock) {
            panic!("TLS handshake with port {port}: {e}");
        }
    }
    s
}

/// The certificate the server presented.
fn presented(s: &Tls) -> CertificateDer<'static> {
    s.conn.peer_certificates().expect("no server certificate")[0].clone()
}

/// Send an OPTIONS over a TLS connection; the reply, or None when the connection ended first.
fn ask_tls(s: &mut Tls, port: u16, n: u32) -> Option<String> {
    let req = stream_options(
        "TLS",
        s.sock.local_addr().unwrap(),
        udp("127.0.0.1", port),
        n,
    );
    s.write_all(req.as_bytes()).ok()?;
    s.flush().ok()?;
    read_sip(s)
}

/// Assert a reply is the 200 to OPTIONS `n` with `Contact: <sip:127.0.0.1:PORT;transport=T>`.
fn assert_200(reply: &str, n: u32, port: u16, transport: &str) {
    assert!(reply.starts_with("SIP/2.0 200 OK\r\n"), "{reply}");
    assert!(
        reply.contains(&format!("Call-ID: call-{n}@test\r\n")),
        "{reply}"
    );
    assert!(
        reply.contains(&format!(
            "\r\nContact: <sip:127.0.0.1:{port};transport={transport}>\r\n"
        )),
        "{reply}"
    );
}

/// A WebSocket upgrade request, with `Sec-WebSocket-Protocol: <subprotocol>` when given.
fn ws_request(url: &str, subprotocol: Option<&str>) -> tungstenite::handshake::client::Request {
    let mut req = url.into_client_request().unwrap();
    if let Some(p) = subprotocol {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", p.parse().unwrap());
    }
    req
}

/// Send an OPTIONS as one text message; the next data message must be its whole reply, as text.
fn ask_ws<S: Read + Write>(
    ws: &mut tungstenite::WebSocket<S>,
    transport: &str,
    from: std::net::SocketAddr,
    port: u16,
    n: u32,
) -> String {
    let req = stream_options(transport, from, udp("127.0.0.1", port), n);
    ws.send(Message::text(req)).unwrap();
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => return t.as_str().to_string(),
            Ok(Message::Binary(b)) => panic!("a binary reply to a text request: {b:?}"),
            Ok(_) => continue, // ping/pong/frame: not a reply
            Err(e) => panic!("no reply on the WebSocket: {e}"),
        }
    }
}

/// Exactly one SIP message (the replies have no body), the 200 to OPTIONS `n`.
fn assert_one_200(reply: &str, n: u32, port: u16, transport: &str) {
    assert_200(reply, n, port, transport);
    assert!(reply.ends_with("\r\nContent-Length: 0\r\n\r\n"), "{reply}");
    assert_eq!(reply.matches("SIP/2.0 200 OK").count(), 1, "{reply}");
}

// ---- dump and MI helpers ----------------------------------------------------------------------

/// The shm slot of `socket` (its row text) in a dump.
fn slot<'a>(dump: &'a Value, socket: &str) -> &'a Value {
    dump["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["socket"] == socket)
        .unwrap_or_else(|| panic!("no slot for {socket} in {dump:#}"))
}

/// The open connections a slot shows (the key is left out at 0).
fn slot_connections(dump: &Value, socket: &str) -> i64 {
    let s = slot(dump, socket);
    match s.get("connections") {
        None => 0,
        Some(v) => v.as_i64().unwrap(),
    }
}

// ---- TLS --------------------------------------------------------------------------------------

#[test]
fn tls_options_get_200_with_a_tls_contact_and_the_configured_certificate() {
    let pki = Pki::new();
    let certs = TempDir::new("tls200-certs");
    let default = pki.server("default");
    let d = daemon(
        "tls200",
        &tls_keys("tls", &default.write(certs.path(), "default")),
    );
    let port = free_tcp_port("127.0.0.1");
    d.add(&format!("tls:127.0.0.1:{port}"), &[]);
    d.reload_ok();

    let mut s = tls(port, &pki);
    assert_eq!(presented(&s), default.der, "not the configured certificate");
    let reply = ask_tls(&mut s, port, 1).expect("no reply over TLS");
    assert_200(&reply, 1, port, "tls");
    assert!(reply.contains("Via: SIP/2.0/TLS 127.0.0.1:"), "{reply}");
    // Two requests in one TLS record, then the keep-alive ping.
    let from = s.sock.local_addr().unwrap();
    let two = stream_options("TLS", from, udp("127.0.0.1", port), 2)
        + &stream_options("TLS", from, udp("127.0.0.1", port), 3);
    s.write_all(two.as_bytes()).unwrap();
    assert_200(&read_sip(&mut s).unwrap(), 2, port, "tls");
    assert_200(&read_sip(&mut s).unwrap(), 3, port, "tls");
    s.write_all(b"\r\n\r\n").unwrap();
    let mut pong = [0u8; 2];
    s.read_exact(&mut pong).unwrap();
    assert_eq!(&pong, b"\r\n");
    let dump = d.dump();
    assert_eq!(
        slot(&dump, &format!("tls:127.0.0.1:{port}"))["state"],
        "active"
    );
}

#[test]
fn a_tagged_socket_presents_its_tags_certificate_and_the_others_the_default() {
    let pki = Pki::new();
    let certs = TempDir::new("pertag-certs");
    let (default, tenant_a) = (pki.server("default"), pki.server("tenant-a"));
    let d = daemon(
        "pertag",
        &(tls_keys("tls", &default.write(certs.path(), "default"))
            + &tls_keys(
                "tls.tag.tenant-a",
                &tenant_a.write(certs.path(), "tenant-a"),
            )),
    );
    let (a, untagged, other) = (
        free_tcp_port("127.0.0.1"),
        free_tcp_port("127.0.0.1"),
        free_tcp_port("127.0.0.1"),
    );
    d.add(&format!("tls:127.0.0.1:{a}"), &["--tag", "tenant-a"]);
    d.add(&format!("tls:127.0.0.1:{untagged}"), &[]);
    // A tag without its own section presents the default.
    d.add(&format!("tls:127.0.0.1:{other}"), &["--tag", "tenant-b"]);
    d.reload_ok();

    for (port, want, who) in [
        (a, &tenant_a, "tenant-a"),
        (untagged, &default, "untagged"),
        (other, &default, "tenant-b"),
    ] {
        let mut s = tls(port, &pki);
        assert!(
            presented(&s) == want.der,
            "the {who} socket presented the wrong certificate"
        );
        assert_200(
            &ask_tls(&mut s, port, port.into()).unwrap(),
            port.into(),
            port,
            "tls",
        );
    }

    // Tagging the untagged socket tenant-a (in place: no rebind) switches its certificate for new
    // connections; a connection open across the change goes on.
    let mut before = tls(untagged, &pki);
    d.rm(&format!("tls:127.0.0.1:{untagged}"));
    d.add(&format!("tls:127.0.0.1:{untagged}"), &["--tag", "tenant-a"]);
    d.reload_ok();
    let mut after = tls(untagged, &pki);
    assert!(
        presented(&after) == tenant_a.der,
        "the retagged socket kept the default certificate"
    );
    assert_200(
        &ask_tls(&mut after, untagged, 10).unwrap(),
        10,
        untagged,
        "tls",
    );
    assert_200(
        &ask_tls(&mut before, untagged, 11).unwrap(),
        11,
        untagged,
        "tls",
    );
    assert!(presented(&before) == default.der);
}

#[test]
fn a_rotated_certificate_is_presented_after_a_reload_and_open_connections_go_on() {
    let pki = Pki::new();
    let certs = TempDir::new("rotate-certs");
    let (old, new) = (pki.server("old"), pki.server("new"));
    let d = daemon(
        "rotate",
        &tls_keys("tls", &old.write(certs.path(), "server")),
    );
    let port = free_tcp_port("127.0.0.1");
    let socket = format!("tls:127.0.0.1:{port}");
    d.add(&socket, &[]);
    d.reload_ok();
    let mut open = tls(port, &pki);
    assert!(presented(&open) == old.der);
    assert_200(&ask_tls(&mut open, port, 1).unwrap(), 1, port, "tls");
    let index = slot(&d.dump(), &socket)["index"].clone();

    // Same paths, new contents: only a reload makes the daemon read them.
    new.write(certs.path(), "server");
    let mut unreloaded = tls(port, &pki);
    assert!(
        presented(&unreloaded) == old.der,
        "the certificate changed before the reload"
    );
    assert_200(&ask_tls(&mut unreloaded, port, 2).unwrap(), 2, port, "tls");
    d.reload_ok();

    let mut fresh = tls(port, &pki);
    assert!(
        presented(&fresh) == new.der,
        "a new connection after the reload got the old certificate"
    );
    assert_200(&ask_tls(&mut fresh, port, 3).unwrap(), 3, port, "tls");
    // The connections opened before the rotation keep working.
    assert_200(
        &ask_tls(&mut open, port, 4).expect("the rotation dropped an open connection"),
        4,
        port,
        "tls",
    );
    assert_200(&ask_tls(&mut unreloaded, port, 5).unwrap(), 5, port, "tls");
    // In place: same slot, still active, the listener never closed.
    let dump = d.dump();
    assert_eq!(slot(&dump, &socket)["index"], index);
    assert_eq!(slot(&dump, &socket)["state"], "active");
    // A reload with the files unchanged changes nothing.
    d.reload_ok();
    assert!(presented(&tls(port, &pki)) == new.der);
}

#[test]
fn a_certificate_that_does_not_load_fails_only_its_socket() {
    let pki = Pki::new();
    let certs = TempDir::new("badcert-certs");
    let good = pki.server("good");
    let default_files = good.write(certs.path(), "default");
    // A PEM block whose contents are not a certificate, with a good key.
    let garbage = certs.path().join("garbage.crt");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let missing = certs.path().join("missing.crt");
    let d = daemon(
        "badcert",
        &(tls_keys("tls", &default_files)
            + &tls_keys(
                "tls.tag.broken",
                &(garbage.clone(), default_files.1.clone()),
            )
            + &tls_keys(
                "tls.tag.missing",
                &(missing.clone(), default_files.1.clone()),
            )),
    );
    let (ok_port, broken_port, missing_port) = (
        free_tcp_port("127.0.0.1"),
        free_tcp_port("127.0.0.1"),
        free_tcp_port("127.0.0.1"),
    );
    let udp_port = free_udp_port("127.0.0.1");
    let (ok, broken, absent) = (
        format!("tls:127.0.0.1:{ok_port}"),
        format!("tls:127.0.0.1:{broken_port}"),
        format!("tls:127.0.0.1:{missing_port}"),
    );
    d.add(&ok, &[]);
    d.add(&format!("udp:127.0.0.1:{udp_port}"), &[]);
    d.add(&broken, &["--tag", "broken"]);

    // The garbage certificate: that socket's bind fails with the TLS reason, the others run.
    let err = d.mi_call("sockets_reload").unwrap_err();
    assert_eq!(err.code, 500, "{err:?}");
    assert_eq!(err.message, "1 sockets could not be bound");
    let data = err.data.clone().expect("no data naming the socket");
    let failures = data.as_array().unwrap();
    assert_eq!(failures.len(), 1, "{data:#}");
    assert_eq!(failures[0]["socket"], broken.as_str(), "{data:#}");
    let reason = failures[0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("TLS: ") && reason.contains("[tls.tag.broken]"),
        "{reason}"
    );
    let dump = d.dump();
    let s = slot(&dump, &broken);
    assert_eq!(s["state"], "error", "{dump:#}");
    assert_eq!(s["error"], reason, "{dump:#}");
    assert_eq!(slot(&dump, &ok)["state"], "active");
    assert!(
        TcpStream::connect(("127.0.0.1", broken_port)).is_err(),
        "the socket whose certificate failed is listening"
    );
    let mut c = tls(ok_port, &pki);
    assert_200(&ask_tls(&mut c, ok_port, 1).unwrap(), 1, ok_port, "tls");
    d.assert_answering(&[udp_port], "beside a failed TLS socket");
    let status = d.mi("sockets_status").unwrap();
    let st = status["sockets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["socket"] == broken.as_str())
        .unwrap();
    assert_eq!(st["state"], "error", "{status:#}");

    // A file that cannot be read: the same, naming the file. The garbage one, repaired (with the
    // certificate of the default key its section names), is bound by the same reload.
    std::fs::write(&garbage, &good.cert_pem).unwrap();
    d.add(&absent, &["--tag", "missing"]);
    let err = d.mi_call("sockets_reload").unwrap_err();
    assert_eq!(err.code, 500, "{err:?}");
    assert_eq!(err.message, "1 sockets could not be bound");
    let data = err.data.clone().unwrap();
    let failures = data.as_array().unwrap();
    assert_eq!(failures.len(), 1, "{data:#}");
    assert_eq!(failures[0]["socket"], absent.as_str(), "{data:#}");
    let reason = failures[0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("TLS: ") && reason.contains(&missing.display().to_string()),
        "{reason}"
    );
    let dump = d.dump();
    assert_eq!(slot(&dump, &absent)["state"], "error", "{dump:#}");
    assert_eq!(slot(&dump, &broken)["state"], "active", "{dump:#}");
    let mut c = tls(broken_port, &pki);
    assert_200(
        &ask_tls(&mut c, broken_port, 2).unwrap(),
        2,
        broken_port,
        "tls",
    );

    // A running socket whose certificate stops loading keeps serving with the one it had, and
    // the reload says so.
    std::fs::remove_file(&default_files.0).unwrap();
    let err = d.mi_call("sockets_reload").unwrap_err();
    assert_eq!(err.code, 500, "{err:?}");
    let data = err.data.clone().unwrap();
    let about_ok = data
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["socket"] == ok.as_str())
        .unwrap_or_else(|| panic!("the unreadable default certificate is not reported: {data:#}"));
    assert!(
        about_ok["reason"]
            .as_str()
            .unwrap()
            .contains(&default_files.0.display().to_string()),
        "{data:#}"
    );
    let mut c = tls(ok_port, &pki);
    assert!(presented(&c) == good.der);
    assert_200(&ask_tls(&mut c, ok_port, 3).unwrap(), 3, ok_port, "tls");
    d.assert_answering(&[udp_port], "after the failed reloads");
}

// ---- WebSocket --------------------------------------------------------------------------------

#[test]
fn ws_and_wss_with_the_sip_subprotocol_get_one_200_message() {
    let pki = Pki::new();
    let certs = TempDir::new("ws-certs");
    let (default, tenant_a) = (pki.server("default"), pki.server("tenant-a"));
    let d = daemon(
        "ws",
        &(tls_keys("tls", &default.write(certs.path(), "default"))
            + &tls_keys(
                "tls.tag.tenant-a",
                &tenant_a.write(certs.path(), "tenant-a"),
            )),
    );
    let (ws_port, wss_port, wss_a_port) = (
        free_tcp_port("127.0.0.1"),
        free_tcp_port("127.0.0.1"),
        free_tcp_port("127.0.0.1"),
    );
    d.add(&format!("ws:127.0.0.1:{ws_port}"), &[]);
    d.add(&format!("wss:127.0.0.1:{wss_port}"), &[]);
    d.add(
        &format!("wss:127.0.0.1:{wss_a_port}"),
        &["--tag", "tenant-a"],
    );
    d.reload_ok();

    // WS.
    let stream = tcp(ws_port);
    let from = stream.local_addr().unwrap();
    let (mut ws, response) = tungstenite::client::client_with_config(
        ws_request(&format!("ws://127.0.0.1:{ws_port}/"), Some("sip")),
        stream,
        None,
    )
    .unwrap_or_else(|e| panic!("WS upgrade refused: {e}"));
    assert_eq!(response.status(), 101);
    assert_eq!(response.headers()["Sec-WebSocket-Protocol"], "sip");
    for n in 1..=3 {
        let reply = ask_ws(&mut ws, "WS", from, ws_port, n);
        assert_one_200(&reply, n, ws_port, "ws");
        assert!(reply.contains("Via: SIP/2.0/WS 127.0.0.1:"), "{reply}");
    }
    ws.close(None).unwrap();

    // WSS, default and per-tag certificates.
    for (port, cert, who) in [
        (wss_port, &default, "untagged"),
        (wss_a_port, &tenant_a, "tenant-a"),
    ] {
        let stream = tls(port, &pki);
        assert!(
            presented(&stream) == cert.der,
            "the {who} wss socket presented the wrong certificate"
        );
        let from = stream.sock.local_addr().unwrap();
        let (mut ws, response) = tungstenite::client::client_with_config(
            ws_request(&format!("wss://127.0.0.1:{port}/"), Some("sip")),
            stream,
            None,
        )
        .unwrap_or_else(|e| panic!("WSS upgrade refused: {e}"));
        assert_eq!(response.status(), 101);
        assert_eq!(response.headers()["Sec-WebSocket-Protocol"], "sip");
        let reply = ask_ws(&mut ws, "WSS", from, port, 10);
        assert_one_200(&reply, 10, port, "wss");
        assert!(reply.contains("Via: SIP/2.0/WSS 127.0.0.1:"), "{reply}");
    }
}

#[test]
fn a_websocket_upgrade_without_the_sip_subprotocol_gets_an_http_error() {
    let pki = Pki::new();
    let certs = TempDir::new("wsno-certs");
    let d = daemon(
        "wsno",
        &tls_keys("tls", &pki.server("default").write(certs.path(), "default")),
    );
    let (ws_port, wss_port) = (free_tcp_port("127.0.0.1"), free_tcp_port("127.0.0.1"));
    d.add(&format!("ws:127.0.0.1:{ws_port}"), &[]);
    d.add(&format!("wss:127.0.0.1:{wss_port}"), &[]);
    d.reload_ok();

    fn refused<S: Read + Write>(
        r: Result<
            (
                tungstenite::WebSocket<S>,
                tungstenite::handshake::client::Response,
            ),
            tungstenite::HandshakeError<tungstenite::ClientHandshake<S>>,
        >,
        what: &str,
    ) {
        match r {
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
                assert!(
                    resp.status().is_client_error() || resp.status().is_server_error(),
                    "{what}: {}",
                    resp.status()
                )
            }
            Err(other) => panic!("{what}: expected an HTTP error status, got {other:?}"),
            Ok((_, resp)) => panic!("{what}: upgraded ({})", resp.status()),
        }
    }
    for sub in [None, Some("chat")] {
        let url = format!("ws://127.0.0.1:{ws_port}/");
        refused(
            tungstenite::client::client_with_config(ws_request(&url, sub), tcp(ws_port), None),
            &format!("ws with {sub:?}"),
        );
        let url = format!("wss://127.0.0.1:{wss_port}/");
        refused(
            tungstenite::client::client_with_config(
                ws_request(&url, sub),
                tls(wss_port, &pki),
                None,
            ),
            &format!("wss with {sub:?}"),
        );
    }
    // Refused connections are closed: none stays open on either socket.
    d.wait_dump("the refused upgrades to be closed", |dump| {
        slot_connections(dump, &format!("ws:127.0.0.1:{ws_port}")) == 0
            && slot_connections(dump, &format!("wss:127.0.0.1:{wss_port}")) == 0
    });
    // The socket still upgrades a proper request.
    let (mut ws, _) = tungstenite::client::client_with_config(
        ws_request(&format!("ws://127.0.0.1:{ws_port}/"), Some("sip")),
        tcp(ws_port),
        None,
    )
    .unwrap();
    let reply = ask_ws(&mut ws, "WS", udp("127.0.0.1", 9), ws_port, 1);
    assert_one_200(&reply, 1, ws_port, "ws");
}

// ---- visibility -------------------------------------------------------------------------------

#[test]
fn status_ps_and_the_dump_show_stream_workers_and_open_connections() {
    let pki = Pki::new();
    let certs = TempDir::new("vis-certs");
    let d = daemon(
        "vis",
        &tls_keys("tls", &pki.server("default").write(certs.path(), "default")),
    );
    let (tls_port, ws_port) = (free_tcp_port("127.0.0.1"), free_tcp_port("127.0.0.1"));
    let (tls_socket, ws_socket) = (
        format!("tls:127.0.0.1:{tls_port}"),
        format!("ws:127.0.0.1:{ws_port}"),
    );
    d.add(&tls_socket, &[]);
    d.add(&ws_socket, &[]);
    d.reload_ok();

    // Nothing open yet: no connection on the stream slots (the key is left out at 0).
    let dump = d.dump();
    for s in [&tls_socket, &ws_socket] {
        assert_eq!(slot_connections(&dump, s), 0, "{dump:#}");
    }
    let stream_pids: Vec<u64> = dump["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["kind"] == "stream")
        .map(|w| w["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(stream_pids.len(), 2, "{dump:#}");

    // ps: the supervisor, the UDP workers and both stream workers, with the dump's pids.
    let ps = d.mi("ps").unwrap();
    let procs = ps["Processes"].as_array().unwrap();
    for (rank, pid) in stream_pids.iter().enumerate() {
        assert!(
            procs
                .iter()
                .any(|p| p["Type"] == format!("stream worker {rank}") && p["PID"] == *pid),
            "stream worker {rank} (pid {pid}) not in ps: {ps:#}"
        );
    }
    assert_eq!(procs.len(), 1 + 2 + 2, "{ps:#}");

    let mut t = tls(tls_port, &pki);
    assert_200(&ask_tls(&mut t, tls_port, 1).unwrap(), 1, tls_port, "tls");
    let (mut ws, _) = tungstenite::client::client_with_config(
        ws_request(&format!("ws://127.0.0.1:{ws_port}/"), Some("sip")),
        tcp(ws_port),
        None,
    )
    .unwrap();
    assert_one_200(
        &ask_ws(&mut ws, "WS", udp("127.0.0.1", 9), ws_port, 2),
        2,
        ws_port,
        "ws",
    );

    let dump = d.wait_dump("one connection on each stream slot", |dump| {
        slot_connections(dump, &tls_socket) == 1 && slot_connections(dump, &ws_socket) == 1
    });
    for s in [&tls_socket, &ws_socket] {
        assert!(
            slot(&dump, s)["received"].as_u64().unwrap() >= 1,
            "{dump:#}"
        );
    }
    let workers_open: u64 = dump["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["kind"] == "stream")
        .map(|w| w["connections"].as_u64().unwrap())
        .sum();
    assert_eq!(workers_open, 2, "{dump:#}");

    // sockets_status: the same, per socket and per worker.
    let status = d.mi("sockets_status").unwrap();
    let socket_status = |s: &str| -> Value {
        status["sockets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["socket"] == s)
            .unwrap_or_else(|| panic!("{s} not in {status:#}"))
            .clone()
    };
    for s in [&tls_socket, &ws_socket] {
        let st = socket_status(s);
        assert_eq!(st["connections"], 1, "{status:#}");
        assert_eq!(st["state"], "active", "{status:#}");
    }
    let stream_workers: Vec<&Value> = status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["kind"] == "stream")
        .collect();
    assert_eq!(stream_workers.len(), 2, "{status:#}");
    for w in &stream_workers {
        assert_eq!(w["state"], "ready", "{status:#}");
        assert!(
            stream_pids.contains(&w["pid"].as_u64().unwrap()),
            "{status:#}"
        );
    }
    assert_eq!(
        stream_workers
            .iter()
            .map(|w| w["connections"].as_u64().unwrap())
            .sum::<u64>(),
        2,
        "{status:#}"
    );

    // Closed: back to 0 (no key) on the slots and 0 on the workers.
    t.conn.send_close_notify();
    let _ = t.flush();
    drop(t);
    ws.close(None).unwrap();
    while ws.read().is_ok() {} // until the close handshake ends
    drop(ws);
    let dump = d.wait_dump("no open connection", |dump| {
        slot_connections(dump, &tls_socket) == 0
            && slot_connections(dump, &ws_socket) == 0
            && dump["workers"]
                .as_array()
                .unwrap()
                .iter()
                .all(|w| w["connections"] == 0)
    });
    for s in [&tls_socket, &ws_socket] {
        assert_eq!(slot(&dump, s)["state"], "active", "{dump:#}");
    }
    let status = d.mi("sockets_status").unwrap();
    for s in status["sockets"].as_array().unwrap() {
        assert_eq!(s["connections"], 0, "{status:#}");
    }
}

// ---- SIPp -------------------------------------------------------------------------------------

/// Run the OPTIONS scenario: 100 calls, at most 20 at once, against 127.0.0.1:`port`.
fn sipp(transport: &str, port: u16, dir: &Path, extra: &[&str]) -> std::process::Output {
    let scenario = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sipp/options.xml");
    std::process::Command::new("sipp")
        .args(["-sf", scenario, "-t", transport])
        .args([
            "-m",
            "100",
            "-r",
            "100",
            "-l",
            "20",
            "-i",
            "127.0.0.1",
            "-p",
            "0",
        ])
        .args(["-timeout", "60s", "-timeout_error", "-nostdin"])
        .args(extra)
        .arg(format!("127.0.0.1:{port}"))
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

/// A TCP-to-TLS relay for a SIPp built without TLS: accepts one connection on its own port and
/// carries its bytes both ways over a TLS connection (verified against the test CA) to
/// 127.0.0.1:`port`. Returns its port, and a thread that ends once either side closes or `stop`
/// is set, with the certificate the daemon presented.
fn tls_relay(
    pki: &Pki,
    port: u16,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (
    u16,
    std::thread::JoinHandle<Option<CertificateDer<'static>>>,
) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    use std::sync::atomic::Ordering;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let relay_port = listener.local_addr().unwrap().port();
    let config = pki.client_config();
    let handle = std::thread::spawn(move || {
        // Bounded: SIPp's whole run is bounded by its own -timeout 60s.
        let deadline = std::time::Instant::now() + DEADLINE * 4;
        let alive = || !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline;
        let mut up = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
                    let _ = poll(&mut fds, PollTimeout::from(100u16));
                    if !alive() {
                        return None;
                    }
                }
                Err(e) => panic!("relay accept: {e}"),
            }
        };
        up.set_nonblocking(false).unwrap();
        let mut down = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into());
        let mut conn = rustls::ClientConnection::new(config, name).unwrap();
        let mut buf = vec![0u8; 65536];
        while alive() {
            while conn.wants_write() {
                conn.write_tls(&mut down).unwrap();
            }
            let mut fds = [
                PollFd::new(up.as_fd(), PollFlags::POLLIN),
                PollFd::new(down.as_fd(), PollFlags::POLLIN),
            ];
            poll(&mut fds, PollTimeout::from(100u16)).unwrap();
            let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
            let (up_ready, down_ready) = (ready(&fds[0]), ready(&fds[1]));
            if up_ready {
                match up.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => conn.writer().write_all(&buf[..n]).unwrap(),
                }
            }
            if down_ready {
                match conn.read_tls(&mut down) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                conn.process_new_packets()
                    .unwrap_or_else(|e| panic!("relay: TLS from the daemon: {e}"));
                loop {
                    match conn.reader().read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => up.write_all(&buf[..n]).unwrap(),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => panic!("relay: {e}"),
                    }
                }
            }
        }
        conn.peer_certificates().map(|c| c[0].clone())
    });
    (relay_port, handle)
}

#[test]
fn sipp_over_tls_gets_200s() {
    if !have_tool("sipp_over_tls_gets_200s", "sipp") {
        return;
    }
    let pki = Pki::new();
    let certs = TempDir::new("sipptls-certs");
    let server = pki.server("default");
    let d = daemon(
        "sipptls",
        &tls_keys("tls", &server.write(certs.path(), "default")),
    );
    let port = free_tcp_port("127.0.0.1");
    d.add(&format!("tls:127.0.0.1:{port}"), &[]);
    d.reload_ok();
    // SIPp's own side of TLS: a certificate and key of its own (it checks no server certificate).
    let (crt, key) = pki.server("sipp").write(d.dir.path(), "sipp");
    let (crt, key) = (crt.display().to_string(), key.display().to_string());
    let out = sipp(
        "l1",
        port,
        d.dir.path(),
        &["-tls_cert", &crt, "-tls_key", &key],
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if text.contains("compile SIPp with OpenSSL") {
        // Debian's sip-tester is built without TLS. The same SIPp run then goes over TCP to a TLS
        // relay in this test, so the daemon still serves SIPp's load over TLS.
        println!("NOTE: this sipp has no TLS (-t l1); running -t t1 through a TLS relay");
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (relay_port, relay) = tls_relay(&pki, port, stop.clone());
        let out = sipp("t1", relay_port, d.dir.path(), &[]);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let seen = relay.join().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "sipp -t t1 through the TLS relay failed:\n{}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            d.log_text()
        );
        assert!(
            seen == Some(server.der.clone()),
            "the relay saw another certificate"
        );
    } else {
        assert_eq!(
            out.status.code(),
            Some(0),
            "sipp -t l1 failed:\n{text}\n{}",
            d.log_text()
        );
    }
    let dump = d.dump();
    assert!(
        slot(&dump, &format!("tls:127.0.0.1:{port}"))["received"]
            .as_u64()
            .unwrap()
            >= 100,
        "{dump:#}"
    );
}
