//! Real peers against the real daemon: SIPp sends OPTIONS to a dynamic socket; the OpenSIPS MI
//! clients (`opensips-mi`, `opensips-cli`) drive `sockets_reload` and `sockets_list` unchanged.
//! A missing peer fails the test under CI=true and is recorded as skipped elsewhere (`skip`).

mod common;

use common::*;
use serde_json::Value;
use std::process::Command;

#[test]
fn sipp_gets_200_to_options_on_a_dynamic_socket() {
    if !have_tool("sipp_gets_200_to_options_on_a_dynamic_socket", "sipp") {
        return;
    }
    let d = Daemon::start("sipp", Opts::default());
    let port = free_udp_port("127.0.0.1");
    d.add(&format!("udp:127.0.0.1:{port}"), &[]);
    d.reload_ok();
    let scenario = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sipp/options.xml");
    let out = Command::new("sipp")
        .args([
            "-sf",
            scenario,
            "-m",
            "200",
            "-r",
            "200",
            "-l",
            "50",
            "-i",
            "127.0.0.1",
            "-p",
            "0",
        ])
        .args([
            "-timeout",
            "60s",
            "-timeout_error",
            "-nostdin",
            "-trace_err",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .current_dir(d.dir.path())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "sipp failed:\n{text}\nlog:\n{}",
        d.log_text()
    );
    let rec = d.dump()["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["replied"].as_u64().unwrap())
        .sum::<u64>();
    assert!(rec >= 200, "workers replied {rec} times");
}

#[test]
fn opensips_mi_drives_reload_and_list() {
    if !have_tool("opensips_mi_drives_reload_and_list", "opensips-mi") {
        return;
    }
    let d = Daemon::start("osmi", Opts::default());
    let port = free_udp_port("127.0.0.1");
    let sock = format!("udp:127.0.0.1:{port}");
    d.add(&sock, &["--tag", "osmi"]);
    let mi = |method: &str| {
        let out = Command::new("opensips-mi")
            .arg("-f")
            .arg(&d.fifo)
            .arg("-fd")
            .arg(format!("{}/", d.dir.path().display()))
            .arg(method)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "opensips-mi {method}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let reload = mi("sockets_reload");
    assert!(reload.contains("OK"), "{reload}");
    assert!(options(&client("127.0.0.1"), udp("127.0.0.1", port), 1).is_some());
    let list = mi("sockets_list");
    let v: Value = serde_json::from_str(list.trim()).unwrap_or_else(|e| panic!("{e}: {list}"));
    assert_eq!(v[0]["socket"], sock.as_str());
    assert_eq!(v[0]["tag"], "osmi");
}

#[test]
fn opensips_cli_drives_reload_and_list() {
    if !have_tool("opensips_cli_drives_reload_and_list", "opensips-cli") {
        return;
    }
    let d = Daemon::start("oscli", Opts::default());
    let port = free_udp_port("127.0.0.1");
    let sock = format!("udp:127.0.0.1:{port}");
    d.add(&sock, &[]);
    let cli = |method: &str| {
        let out = Command::new("opensips-cli")
            .arg("-o")
            .arg(format!("fifo_file={}", d.fifo.display()))
            .arg("-o")
            .arg(format!("fifo_reply_dir={}/", d.dir.path().display()))
            .args(["-x", "mi", method])
            .current_dir(d.dir.path())
            .env("HOME", d.dir.path())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "opensips-cli mi {method}: {text}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(cli("sockets_reload").contains("OK"));
    assert!(options(&client("127.0.0.1"), udp("127.0.0.1", port), 1).is_some());
    assert!(cli("sockets_list").contains(&sock));
}
