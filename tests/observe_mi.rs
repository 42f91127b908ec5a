//! MI over HTTP and over datagrams against the real daemon and the real OpenSIPS clients
//! (`opensips-cli` with `communication_type` http and datagram, `opensips-mi -t http|datagram`),
//! the `allow` list, basic authentication, and the statistics methods.
//! A missing client fails under CI=true and is skipped loudly elsewhere.

mod common;
mod observe_util;

use common::*;
use observe_util::*;
use serde_json::{json, Value};
use std::process::Command;

/// `opensips-cli -o KEY=VALUE... -x mi METHOD ARGS...`: its stdout (JSON, pretty-printed).
fn cli(d: &Daemon, options: &[String], args: &[&str]) -> String {
    let mut cmd = Command::new("opensips-cli");
    for o in options {
        cmd.arg("-o").arg(o);
    }
    let out = cmd
        .args(["-x", "mi"])
        .args(args)
        .current_dir(d.dir.path())
        .env("HOME", d.dir.path())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "opensips-cli {args:?}: {text}\nlog:\n{}",
        d.log_text()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `opensips-mi ARGS...`: its stdout.
fn osmi(d: &Daemon, args: &[&str]) -> String {
    let out = Command::new("opensips-mi")
        .args(args)
        .current_dir(d.dir.path())
        .env("HOME", d.dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "opensips-mi {args:?}: {}{}\nlog:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        d.log_text()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Adds a tagged socket on a free port; returns it and its port (not yet applied).
fn provision(d: &Daemon, tag: &str) -> (String, u16) {
    let port = free_udp_port("127.0.0.1");
    let socket = format!("udp:127.0.0.1:{port}");
    d.add(&socket, &["--tag", tag]);
    (socket, port)
}

/// The per-socket `received` statistic, as get_statistics over HTTP says it.
fn received(e: &Endpoints, port: u16) -> u64 {
    let name = format!("sockets_mgm:received-udp:127.0.0.1:{port}");
    let r = mi_post(e.mi_http, "get_statistics", json!({ "statistics": [name] }));
    r["result"][&name].as_u64().unwrap_or_else(|| panic!("{r}"))
}

#[test]
fn opensips_cli_over_http_reloads_lists_and_gets_statistics() {
    if !have("opensips_cli_over_http", "opensips-cli") {
        return;
    }
    let (d, e) = observed("obs-cli-http", false, "", "");
    let (socket, port) = provision(&d, "cli-http");
    let o = [
        "communication_type=http".to_string(),
        format!("url=http://{}/mi", e.mi_http),
    ];
    assert_eq!(json_of(&cli(&d, &o, &["sockets_reload"])), json!("OK"));
    let list = json_of(&cli(&d, &o, &["sockets_list"]));
    assert_eq!(list[0]["socket"], socket.as_str());
    assert_eq!(list[0]["tag"], "cli-http");
    send_options(port, 7, 100);
    wait_for("7 counted", || received(&e, port), |n| *n == 7);
    let all = json_of(&cli(&d, &o, &["get_statistics", "all"]));
    assert_eq!(all[format!("sockets_mgm:received-{socket}")], 7, "{all:#}");
    assert!(all["sockets_mgm:reloads"].as_u64().unwrap() >= 2, "{all:#}");
    assert_eq!(all["sockets_mgm:reload_failures"], 0);
    assert_eq!(all["sockets_mgm:sockets"], 1);
    assert_eq!(all["shmem:used_slots"], 1);
    assert_eq!(all["shmem:total_slots"], 100);
    assert!(all["core:uptime"].is_u64());
    assert_eq!(all["tcp:connections"], 0);
    // A group and a name, as the clients send several (named form, split by opensips-cli).
    let some = json_of(&cli(
        &d,
        &o,
        &["get_statistics", "statistics=tcp: sockets_mgm:reloads"],
    ));
    let keys: Vec<&str> = some
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        ["sockets_mgm:reloads", "tcp:connections", "tcp:refused"]
    );
    d.stop();
}

#[test]
fn opensips_mi_over_http() {
    if !have("opensips_mi_over_http", "opensips-mi") {
        return;
    }
    let (d, e) = observed("obs-osmi-http", false, "", "");
    let (socket, port) = provision(&d, "osmi-http");
    let (ip, p) = (e.mi_http.ip().to_string(), e.mi_http.port().to_string());
    let http = ["-t", "http", "-i", ip.as_str(), "-p", p.as_str()];
    let run = |args: &[&str]| json_of(&osmi(&d, &[&http[..], args].concat()));
    assert_eq!(run(&["sockets_reload"]), json!("OK"));
    assert_eq!(run(&["sockets_list"])[0]["socket"], socket.as_str());
    send_options(port, 3, 200);
    wait_for("3 counted", || received(&e, port), |n| *n == 3);
    let stats = run(&["-s", "sockets_mgm:", "core:uptime"]);
    assert_eq!(
        stats[format!("sockets_mgm:received-{socket}")],
        3,
        "{stats:#}"
    );
    assert!(stats.get("core:uptime").is_some(), "{stats:#}");
    assert!(stats.get("tcp:refused").is_none(), "{stats:#}");
    d.stop();
}

#[test]
fn opensips_cli_and_opensips_mi_over_udp_datagrams() {
    if !have("mi_over_udp_datagrams", "opensips-cli")
        || !have("mi_over_udp_datagrams", "opensips-mi")
    {
        return;
    }
    let (d, e) = observed("obs-udp", false, "", "");
    let (socket, port) = provision(&d, "udp-mi");
    let o = [
        "communication_type=datagram".to_string(),
        format!("datagram_ip={}", e.udp.ip()),
        format!("datagram_port={}", e.udp.port()),
        "datagram_timeout=10".to_string(),
    ];
    assert_eq!(json_of(&cli(&d, &o, &["sockets_reload"])), json!("OK"));
    assert_eq!(
        json_of(&cli(&d, &o, &["sockets_list"]))[0]["socket"],
        socket.as_str()
    );
    send_options(port, 4, 300);
    wait_for("4 counted", || received(&e, port), |n| *n == 4);
    let all = json_of(&cli(&d, &o, &["get_statistics", "all"]));
    assert_eq!(all[format!("sockets_mgm:received-{socket}")], 4, "{all:#}");

    let (ip, p) = (e.udp.ip().to_string(), e.udp.port().to_string());
    let dg = [
        "-t",
        "datagram",
        "-i",
        ip.as_str(),
        "-p",
        p.as_str(),
        "-dt",
        "10",
    ];
    let run = |args: &[&str]| json_of(&osmi(&d, &[&dg[..], args].concat()));
    assert_eq!(run(&["sockets_reload"]), json!("OK"));
    assert_eq!(
        run(&["-s", "tcp:"]),
        json!({"tcp:connections": 0, "tcp:refused": 0})
    );
    d.stop();
}

#[test]
fn opensips_cli_and_opensips_mi_over_a_unix_datagram_socket() {
    if !have("mi_over_unix_datagrams", "opensips-cli")
        || !have("mi_over_unix_datagrams", "opensips-mi")
    {
        return;
    }
    let (d, e) = observed("obs-unix", true, "", "");
    let (socket, _) = provision(&d, "unix-mi");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&e.unix).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o660, "the default unix_socket_mode");
    let o = [
        "communication_type=datagram".to_string(),
        format!("datagram_unix_socket={}", e.unix.display()),
        "datagram_timeout=10".to_string(),
    ];
    assert_eq!(json_of(&cli(&d, &o, &["sockets_reload"])), json!("OK"));
    assert_eq!(
        json_of(&cli(&d, &o, &["sockets_list"]))[0]["socket"],
        socket.as_str()
    );
    let path = e.unix.display().to_string();
    let ds = ["-t", "datagram", "-ds", path.as_str(), "-dt", "10"];
    let stats = json_of(&osmi(
        &d,
        &[&ds[..], &["-s", "sockets_mgm:reloads"]].concat(),
    ));
    assert!(
        stats["sockets_mgm:reloads"].as_u64().unwrap() >= 2,
        "{stats}"
    );
    assert!(e.unix.exists());
    assert_eq!(d.stop(), Some(0));
    assert!(!e.unix.exists(), "the socket file is removed at stop");
}

#[test]
fn a_source_outside_allow_gets_403_and_a_listed_one_is_served() {
    let (d, e) = observed("obs-allow", false, "allow = [\"127.0.0.2/32\"]", "");
    let body = br#"{"jsonrpc":"2.0","id":1,"method":"version"}"#;
    let r = http_from(Some("127.0.0.1"), e.mi_http, "POST", "/mi", &[], body);
    assert_eq!(r.status, 403, "{}", r.head);
    assert!(
        r.text().contains("127.0.0.1 is not allowed"),
        "{}",
        r.text()
    );
    let r = http_from(Some("127.0.0.2"), e.mi_http, "POST", "/mi", &[], body);
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(r.json()["result"]["Server"]
        .as_str()
        .unwrap()
        .starts_with("sipsockd"));
    // /metrics has no allow list.
    assert_eq!(http(e.metrics, "GET", "/metrics", b"").status, 200);
    d.stop();
}

#[test]
fn basic_auth_from_argon2_and_bcrypt_users() {
    use argon2::PasswordHasher;
    use base64::Engine;
    let dir = TempDir::new("obs-auth-file");
    let users = dir.path().join("users");
    let salt = argon2::password_hash::SaltString::from_b64("c2lwc29ja2RzYWx0").unwrap();
    let alice = argon2::Argon2::default()
        .hash_password(b"wonder land", &salt)
        .unwrap()
        .to_string();
    let bob = bcrypt::hash("builder", 4).unwrap();
    std::fs::write(&users, format!("# MI users\nalice:{alice}\nbob:{bob}\n")).unwrap();
    let (d, e) = observed(
        "obs-auth",
        false,
        &format!("auth_file = {:?}", users.display().to_string()),
        "",
    );
    let body = br#"{"jsonrpc":"2.0","id":1,"method":"version"}"#;
    let basic = |u: &str, p: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        )
    };
    let post = |auth: Option<String>| {
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        http_from(None, e.mi_http, "POST", "/mi", &headers, body)
    };
    let r = post(None);
    assert_eq!(r.status, 401);
    assert!(
        r.head
            .contains("WWW-Authenticate: Basic realm=\"sipsockd MI\""),
        "{}",
        r.head
    );
    assert_eq!(post(Some(basic("alice", "wonderland"))).status, 401);
    assert_eq!(post(Some(basic("carol", "wonder land"))).status, 401);
    assert_eq!(post(Some("Bearer xyz".into())).status, 401);
    for _ in 0..2 {
        // Twice: the second is answered from the verified credentials.
        assert_eq!(post(Some(basic("alice", "wonder land"))).status, 200);
        assert_eq!(post(Some(basic("bob", "builder"))).status, 200);
    }
    let a = basic("bob", "builder");
    let r = http_from(
        None,
        e.mi_http,
        "GET",
        "/mi/version",
        &[("Authorization", &a)],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    d.stop();
}

#[test]
fn a_bad_auth_file_stops_the_start_naming_the_line() {
    let d = Daemon::configure("obs-auth-bad", &Opts::default());
    let users = d.dir.path().join("users");
    std::fs::write(&users, "alice:$2b$12$x\n").unwrap();
    let port = free_tcp_port("127.0.0.1");
    let mut text = std::fs::read_to_string(&d.config).unwrap();
    text.push_str(&format!(
        "[mi_http]\nlisten = \"127.0.0.1:{port}\"\nauth_file = {:?}\n",
        users.display().to_string()
    ));
    std::fs::write(&d.config, text).unwrap();
    d.cli(&["db", "init"]).ok();
    let out = d.cli(&["run"]).code(1);
    let err = out.stderr;
    assert!(
        err.contains("mi_http.auth_file") && err.contains("line 1") && err.contains("bcrypt"),
        "{err}"
    );
    assert!(!d.shm.exists(), "nothing left behind");
    assert!(!d.fifo.exists(), "nothing left behind");
}

#[test]
fn a_port_in_use_stops_the_start_naming_the_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let d = Daemon::configure("obs-port-taken", &Opts::default());
    let mut text = std::fs::read_to_string(&d.config).unwrap();
    text.push_str(&format!(
        "[metrics]\nlisten = \"{}\"\n",
        taken.local_addr().unwrap()
    ));
    std::fs::write(&d.config, text).unwrap();
    d.cli(&["db", "init"]).ok();
    let out = d.cli(&["run"]).code(1);
    let err = out.stderr;
    assert!(
        err.contains("metrics.listen") && err.contains("cannot bind"),
        "{err}"
    );
    assert!(!d.shm.exists() && !d.fifo.exists(), "nothing left behind");
}

#[test]
fn statistics_get_list_and_reset_over_http() {
    let (d, e) = observed("obs-stats", false, "", "");
    let (socket, port) = provision(&d, "stats");
    d.reload_ok();
    send_options(port, 5, 400);
    wait_for("5 counted", || received(&e, port), |n| *n == 5);
    let name = format!("sockets_mgm:received-{socket}");
    // GET form, the name without its group.
    let r = http(
        e.mi_http,
        "GET",
        &format!("/mi/get_statistics?statistics=received-{socket}&statistics=tcp%3Arefused"),
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        json!({"jsonrpc": "2.0", "result": {name.as_str(): 5, "tcp:refused": 0}, "id": null})
    );
    let list = mi_post(e.mi_http, "list_statistics", json!({}))["result"].clone();
    assert_eq!(list[&name], "incremental");
    assert_eq!(list["core:uptime"], "non-incremental");
    // Reset: the statistic starts again from 0; the table (and /metrics) keep counting.
    let r = mi_post(
        e.mi_http,
        "reset_statistics",
        json!({"statistics": [name.as_str()]}),
    );
    assert_eq!(r["result"], "OK");
    assert_eq!(received(&e, port), 0);
    send_options(port, 2, 500);
    wait_for("2 more counted", || received(&e, port), |n| *n == 2);
    let dump = d.dump();
    assert_eq!(dump["slots"][0]["received"], 7, "the table is untouched");
    let r = mi_post(e.mi_http, "get_statistics", json!({"statistics": ["nope"]}));
    assert_eq!(
        r["error"],
        json!({"code": 404, "message": "Statistics Not Found"})
    );
    let r = mi_post(e.mi_http, "get_statistics", json!({}));
    assert_eq!(r["error"]["code"], -32602);
    // The FIFO sees the same baselines: one set in the supervisor's loop.
    let fifo = d.cli(&["mi", "get_statistics", &format!("statistics={name}")]);
    let v: Value = fifo.ok().json();
    assert_eq!(v[&name], 2, "{v}");
    d.stop();
}

#[test]
fn reloads_and_their_failures_are_counted() {
    let (d, e) = observed("obs-reloads", false, "", "");
    let get = || {
        mi_post(
            e.mi_http,
            "get_statistics",
            json!({"statistics": ["sockets_mgm:"]}),
        )["result"]
            .clone()
    };
    let before = get();
    let n = before["sockets_mgm:reloads"].as_u64().unwrap();
    assert_eq!(before["sockets_mgm:last_reload_status"], 200);
    d.reload_ok();
    // A socket that cannot be bound (the port is taken): the reload fails with 500.
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    d.add(&format!("udp:{}", taken.local_addr().unwrap()), &[]);
    assert!(d.reload().is_err());
    let after = get();
    assert_eq!(after["sockets_mgm:reloads"], n + 2, "{after:#}");
    assert_eq!(after["sockets_mgm:reload_failures"], 1, "{after:#}");
    assert_eq!(after["sockets_mgm:last_reload_status"], 500, "{after:#}");
    assert_eq!(after["sockets_mgm:sockets_failed"], 1, "{after:#}");
    d.stop();
}

#[test]
fn odd_http_requests_get_the_right_status() {
    let (d, e) = observed("obs-odd", false, "", "");
    let to = e.mi_http;
    assert_eq!(http(to, "POST", "/other", b"{}").status, 404);
    assert_eq!(http(to, "DELETE", "/mi", b"").status, 405);
    assert_eq!(http(to, "GET", "/mi", b"").status, 405);
    assert_eq!(http(to, "POST", "/mi", b"").status, 400);
    let r = http(to, "POST", "/mi", b"{not json");
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (200, json!(-32700))
    );
    let r = http(
        to,
        "POST",
        "/mi",
        br#"{"jsonrpc":"2.0","id":9,"method":"nope"}"#,
    );
    assert_eq!(r.json()["error"]["code"], -32601);
    // A notification runs and gets 202 with no body.
    let r = http(
        to,
        "POST",
        "/mi",
        br#"{"jsonrpc":"2.0","method":"version"}"#,
    );
    assert_eq!((r.status, r.body.len()), (202, 0));
    // Over the limits.
    let r = http_from(
        None,
        to,
        "POST",
        "/mi",
        &[("Transfer-Encoding", "chunked")],
        b"",
    );
    assert_eq!(r.status, 411);
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(to).unwrap();
    s.write_all(b"POST /mi HTTP/1.1\r\nContent-Length: 100000000\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 413 "), "{out}");
    // A datagram that is not JSON gets a parse error back.
    let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    c.send_to(b"garbage", e.udp).unwrap();
    let mut buf = [0u8; 4096];
    let n = c.recv(&mut buf).unwrap();
    let v: Value = serde_json::from_slice(&buf[..n]).unwrap();
    assert_eq!(v["error"]["code"], -32700);
    d.stop();
}
