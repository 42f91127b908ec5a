//! The Debian package's files say what scripts/deb-check.sh relies on: the packaged
//! configuration loads and puts the FIFO and shm file under /run/sipsockd (made for the sipsockd
//! user by tmpfiles.d) with the daemon dropping to that user; the unit runs the installed binary
//! on it; every asset `cargo deb` packages exists.

use std::path::Path;

fn read(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_packaged_configuration_runs_from_run_sipsockd_as_sipsockd() {
    let c = supervisor::config::parse(&read("debian/sipsockd.toml"), "debian/sipsockd.toml")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.mi_fifo.fifo_name, Path::new("/run/sipsockd/fifo"));
    assert_eq!(c.shm.path, Path::new("/run/sipsockd/shm"));
    assert_eq!(c.general.user.as_deref(), Some("sipsockd"));
    assert_eq!(c.general.group.as_deref(), Some("sipsockd"));
    assert_eq!(
        c.sockets_mgm.db_url,
        "sqlite:///var/lib/sipsockd/sipsockd.db"
    );
    // postinst creates the SQLite table only for this very line.
    assert!(read("debian/postinst")
        .contains(r#"grep -q '^db_url = "sqlite:///var/lib/sipsockd/sipsockd.db"' "$CONF""#));
    assert!(read("debian/sipsockd.tmpfile")
        .lines()
        .any(|l| l == "d /run/sipsockd 0750 sipsockd sipsockd -"));
}

#[test]
fn the_unit_runs_the_installed_binary_on_the_packaged_configuration() {
    let unit = read("debian/sipsockd.service");
    assert!(unit
        .lines()
        .any(|l| l == "ExecStart=/usr/bin/sipsockd --config /etc/sipsockd/sipsockd.toml run"));
    assert!(unit.lines().any(|l| l == "Type=notify"));
}

#[test]
fn every_packaged_asset_exists() {
    let manifest: toml::Table = read("Cargo.toml").parse().unwrap();
    let assets = manifest["package"]["metadata"]["deb"]["assets"]
        .as_array()
        .unwrap();
    assert!(assets.len() >= 4);
    for a in assets {
        let source = a[0].as_str().unwrap();
        if source.starts_with("target/") {
            continue; // built by cargo deb
        }
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let found = match source.strip_suffix("*.sql") {
            Some(d) => std::fs::read_dir(dir.join(d)).unwrap().count() > 0,
            None => dir.join(source).is_file(),
        };
        assert!(found, "asset {source} is missing");
    }
    for script in ["debian/postinst", "debian/postrm"] {
        let text = read(script);
        // cargo-deb puts the systemd snippets where this marker stands, once.
        assert_eq!(text.matches("#DEBHELPER#").count(), 1, "{script}");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(Path::new(env!("CARGO_MANIFEST_DIR")).join(script))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o111, 0o111, "{script} is not executable");
    }
}
