//! What the integration tests share, so they read like specifications: a scratch directory, the
//! one way to run the binary, ports picked by binding them, a running `sipsockd run` with its own
//! FIFO and shm file, MI calls, SIP OPTIONS over UDP and streams, traffic that proves something
//! happened under load, scratch PostgreSQL / MariaDB databases, and [`skip`] for a missing peer.
//!
//! Database URLs come from `SIPSOCKD_TEST_PG_URL` / `SIPSOCKD_TEST_MYSQL_URL` (defaults: the
//! local servers). A peer that is not there (a server, a tool, IPv6, root) fails the test under
//! `CI=true` and is recorded as skipped elsewhere (see [`skip`]).
#![allow(dead_code)]

#[path = "../../worker/tests/common/skip.rs"]
mod skip_file;
pub use skip_file::skip;

use serde_json::Value;
use std::io::Read;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Generous: the machine is shared and noisy; tests wait on events, these only bound the wait.
pub const DEADLINE: Duration = Duration::from_secs(30);

// ---- a scratch directory -----------------------------------------------------------------------

/// A scratch directory (`tempfile`), removed on drop.
pub struct TempDir(tempfile::TempDir);

impl TempDir {
    /// A new directory whose name starts with `sipsockd-<name>-`.
    pub fn new(name: &str) -> TempDir {
        let dir = tempfile::Builder::new()
            .prefix(&format!("sipsockd-{name}-"))
            .tempdir()
            .unwrap_or_else(|e| panic!("scratch directory for {name}: {e}"));
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }

    /// Write `text` to `name` in the directory; returns its path as a string.
    pub fn write(&self, name: &str, text: &str) -> String {
        let p = self.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }
}

// ---- running the binary ------------------------------------------------------------------------

/// The one way these tests start the binary: `sipsockd ARGS`, logging at `warn`, no input. The
/// caller adds what it needs (environment, output, working directory) and runs it.
pub fn sipsockd_command<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sipsockd"));
    cmd.args(args).env("RUST_LOG", "warn").stdin(Stdio::null());
    cmd
}

/// What a run of the binary gave.
#[derive(Debug)]
pub struct Run {
    /// Exit status (-1 when killed by a signal).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Run `cmd` to its end.
    pub fn of(cmd: &mut Command) -> Run {
        let out = cmd.output().expect("run sipsockd");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Panics with the whole output unless the exit status is 0.
    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "expected success: {self:#?}");
        self
    }

    /// Panics with the whole output unless the exit status is `code`.
    pub fn code(self, code: i32) -> Run {
        assert_eq!(self.code, code, "expected exit status {code}: {self:#?}");
        self
    }

    pub fn success(&self) -> bool {
        self.code == 0
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:#?}"))
    }
}

/// Run `sipsockd ARGS` in `dir` and wait for it.
pub fn sipsockd(dir: &Path, args: &[&str]) -> Run {
    Run::of(sipsockd_command(args).current_dir(dir))
}

// ---- ports -------------------------------------------------------------------------------------

/// A free UDP port on `ip` (bound then released; the kernel does not hand it out again at once).
/// For several ports at once use [`hold_udp_ports`]: two calls may return the same port.
pub fn free_udp_port(ip: &str) -> u16 {
    UdpSocket::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `n` distinct UDP ports on `ip`, held bound until the holder is dropped: write the rows while
/// holding them, release right before the reload that binds them.
pub struct HeldPorts(Vec<UdpSocket>);

pub fn hold_udp_ports(ip: &str, n: usize) -> HeldPorts {
    HeldPorts((0..n).map(|_| UdpSocket::bind((ip, 0)).unwrap()).collect())
}

impl HeldPorts {
    pub fn ports(&self) -> Vec<u16> {
        self.0
            .iter()
            .map(|s| s.local_addr().unwrap().port())
            .collect()
    }
}

/// A free TCP port on `ip`.
pub fn free_tcp_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ---- peers -------------------------------------------------------------------------------------

/// True when `tool` is on the PATH; otherwise [`skip`]s `test` (fails it under CI) and is false.
pub fn have_tool(test: &str, tool: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        skip(test, &format!("{tool} is not installed"));
    }
    found
}

/// True when this process is root; otherwise [`skip`]s `test` (fails it under CI) and is false.
pub fn have_root(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        skip(test, "needs root");
    }
    root
}

// ---- a daemon under test -----------------------------------------------------------------------

/// What a test daemon is started with.
pub struct Opts {
    pub processes: u32,
    pub max_sockets: u32,
    /// `None`: a scratch SQLite file.
    pub db_url: Option<String>,
    pub table_name: String,
    pub extra: String,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            processes: 2,
            max_sockets: 100,
            db_url: None,
            table_name: "sockets".into(),
            extra: String::new(),
        }
    }
}

/// A `sipsockd run` in a scratch directory.
pub struct Daemon {
    pub dir: TempDir,
    pub config: PathBuf,
    pub fifo: PathBuf,
    pub shm: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    /// Write a config, create the table, start `run` and wait until the MI FIFO answers.
    pub fn start(name: &str, opts: Opts) -> Daemon {
        let d = Daemon::configure(name, &opts);
        d.cli(&["db", "init"]).ok();
        d.spawn()
    }

    /// Only write the config (the test starts the daemon itself).
    pub fn configure(name: &str, opts: &Opts) -> Daemon {
        let dir = TempDir::new(name);
        let fifo = dir.path().join("fifo");
        let shm = PathBuf::from(format!(
            "/dev/shm/sipsockd-test-{}",
            dir.path().file_name().unwrap().to_string_lossy()
        ));
        let db_url = opts
            .db_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("s.db").display()));
        let config = dir.path().join("sipsockd.toml");
        std::fs::write(
            &config,
            format!(
                "[sockets_mgm]\ndb_url = {db_url:?}\ntable_name = {:?}\nprocesses = {}\nmax_sockets = {}\n\
                 [mi_fifo]\nfifo_name = {:?}\nreply_dir = \"{}/\"\n[shm]\npath = {:?}\n{}\n",
                opts.table_name,
                opts.processes,
                opts.max_sockets,
                fifo.display().to_string(),
                dir.path().display(),
                shm.display().to_string(),
                opts.extra
            ),
        )
        .unwrap();
        let log = dir.path().join("daemon.log");
        Daemon {
            dir,
            config,
            fifo,
            shm,
            log,
            child: None,
        }
    }

    /// Start `run` and wait until the FIFO answers `version`.
    pub fn spawn(mut self) -> Daemon {
        let log = std::fs::File::create(&self.log).unwrap();
        let child = self
            .command(&["run"])
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let t0 = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("daemon exited at start ({status}):\n{}", self.log_text());
            }
            if self.fifo.exists() {
                let out = self.cli(&["mi", "--timeout", "5", "version"]);
                if out.success() {
                    return self;
                }
            }
            assert!(
                t0.elapsed() < DEADLINE,
                "daemon not ready in time:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `sipsockd --config CONFIG ARGS`, not started (see [`sipsockd_command`]).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = sipsockd_command(&["--config"]);
        cmd.arg(&self.config).args(args);
        cmd
    }

    /// Run the CLI with this daemon's config and wait for it.
    pub fn cli(&self, args: &[&str]) -> Run {
        Run::of(&mut self.command(args))
    }

    pub fn add(&self, socket: &str, extra: &[&str]) {
        let mut args = vec!["db", "add", socket];
        args.extend_from_slice(extra);
        let out = self.cli(&args);
        assert!(out.success(), "db add {socket}: {}", out.stderr);
    }

    /// Provision `n` UDP sockets on free loopback ports and apply them; returns the ports.
    pub fn serve_udp(&self, n: usize) -> Vec<u16> {
        let held = hold_udp_ports("127.0.0.1", n);
        let ports = held.ports();
        for p in &ports {
            self.add(&format!("udp:127.0.0.1:{p}"), &[]);
        }
        drop(held);
        self.reload_ok();
        ports
    }

    pub fn rm(&self, socket: &str) {
        let out = self.cli(&["db", "rm", socket]);
        assert!(out.success(), "db rm {socket}: {}", out.stderr);
    }

    /// An MI call through our client: Ok(result) or Err(error object as printed on stderr).
    pub fn mi(&self, method: &str) -> Result<Value, String> {
        let out = self.cli(&["mi", method]);
        match out.code {
            0 => Ok(serde_json::from_str(&out.stdout).expect("mi prints JSON")),
            1 => Err(out.stderr),
            other => panic!(
                "mi {method}: exit {other}: {}\n{}",
                out.stderr,
                self.log_text()
            ),
        }
    }

    pub fn reload(&self) -> Result<Value, String> {
        self.mi("sockets_reload")
    }

    pub fn reload_ok(&self) {
        let r = self.reload();
        assert_eq!(
            r,
            Ok(Value::String("OK".into())),
            "reload not OK; log:\n{}",
            self.log_text()
        );
    }

    pub fn dump(&self) -> Value {
        self.cli(&["shm-dump", "--json"]).ok().json()
    }

    /// Wait until `pred` holds on the shm dump.
    pub fn wait_dump(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let t0 = Instant::now();
        loop {
            let d = self.dump();
            if pred(&d) {
                return d;
            }
            assert!(
                t0.elapsed() < DEADLINE,
                "timed out waiting for {what}; dump: {d:#}\nlog:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn worker_pids(&self) -> Vec<u32> {
        self.dump()["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["pid"].as_u64().unwrap() as u32)
            .collect()
    }

    /// SIGTERM and wait for exit; returns the exit status code.
    pub fn stop(mut self) -> Option<i32> {
        let mut child = self.child.take().unwrap();
        signal(child.id(), libc::SIGTERM);
        let t0 = Instant::now();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st.code();
            }
            assert!(t0.elapsed() < DEADLINE, "daemon did not stop");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), libc::SIGKILL);
            let _ = c.wait();
            // Workers die with their parent (PR_SET_PDEATHSIG); the shm file is ours to clean.
            let _ = std::fs::remove_file(&self.shm);
        }
    }
}

/// Send `sig` to `pid` (gone already is fine).
pub fn signal(pid: u32, sig: libc::c_int) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("a pid"));
    let sig = nix::sys::signal::Signal::try_from(sig).expect("a signal");
    let _ = nix::sys::signal::kill(pid, sig);
}

/// A SIP OPTIONS request from `from` to `to`.
pub fn options_request(from: SocketAddr, to: SocketAddr, n: u32) -> String {
    format!(
        "OPTIONS sip:{to} SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bK-t{n};rport\r\nMax-Forwards: 70\r\n\
         From: <sip:test@{from}>;tag=f{n}\r\nTo: <sip:{to}>\r\nCall-ID: call-{n}@test\r\nCSeq: {n} OPTIONS\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// A client socket on `ip`.
pub fn client(ip: &str) -> UdpSocket {
    let s = UdpSocket::bind((ip, 0)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// Send one OPTIONS and wait for its reply (matched by Call-ID); None when none came within 5 s.
pub fn options(sock: &UdpSocket, to: SocketAddr, n: u32) -> Option<String> {
    let req = options_request(sock.local_addr().unwrap(), to, n);
    sock.send_to(req.as_bytes(), to).unwrap();
    recv_reply(sock, n)
}

pub fn recv_reply(sock: &UdpSocket, n: u32) -> Option<String> {
    let want = format!("call-{n}@test");
    let mut buf = [0u8; 65536];
    loop {
        match sock.recv_from(&mut buf) {
            Ok((len, _)) => {
                let text = String::from_utf8_lossy(&buf[..len]).into_owned();
                if text.contains(&want) {
                    return Some(text);
                }
            }
            Err(_) => return None,
        }
    }
}

pub fn udp(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse::<IpAddr>().unwrap(), port)
}

/// Read a whole child output pipe (for tools like sipp).
pub fn read_all(mut r: impl Read) -> String {
    let mut s = String::new();
    let _ = r.read_to_string(&mut s);
    s
}

// ---- streams (TCP, TLS, WS) --------------------------------------------------------------------

/// An OPTIONS for a stream transport (`TCP`, `TLS`, `WS`, `WSS` in the Via).
pub fn stream_options(transport: &str, from: SocketAddr, to: SocketAddr, n: u32) -> String {
    options_request(from, to, n).replace("SIP/2.0/UDP", &format!("SIP/2.0/{transport}"))
}

/// Read one SIP message framed by Content-Length from a byte stream; None on EOF or timeout.
pub fn read_sip(r: &mut impl Read) -> Option<String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match r.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            _ => return None,
        }
        if buf == b"\r\n" {
            buf.clear(); // a keep-alive pong before a message
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("Content-Length:")
                .or_else(|| l.strip_prefix("l:"))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).ok()?;
    Some(head + &String::from_utf8_lossy(&body))
}

/// A TCP connection to 127.0.0.1:`port` that waits at most DEADLINE for a read.
pub fn tcp_connect(port: u16) -> std::net::TcpStream {
    let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s
}

/// Send OPTIONS `n` on a TCP connection and read its reply; None when the connection failed.
pub fn tcp_options(s: &mut std::net::TcpStream, port: u16, n: u32) -> Option<String> {
    use std::io::Write;
    let req = stream_options("TCP", s.local_addr().unwrap(), udp("127.0.0.1", port), n);
    s.write_all(req.as_bytes()).ok()?;
    read_sip(s)
}

/// True once the peer closed the stream (EOF or reset), waiting at most DEADLINE.
pub fn closed_by_peer(s: &mut std::net::TcpStream) -> bool {
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut b = [0u8; 512];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

// ---- more of a daemon: structured MI, what runs, traffic ---------------------------------------

/// `Daemon::start` with more keys in `[sockets_mgm]` (e.g. `db_timeout = 1`).
pub fn start_with_mgm(name: &str, opts: Opts, mgm: &str) -> Daemon {
    let d = Daemon::configure(name, &opts);
    let text = std::fs::read_to_string(&d.config).unwrap();
    let text = text.replacen("[sockets_mgm]\n", &format!("[sockets_mgm]\n{mgm}\n"), 1);
    std::fs::write(&d.config, text).unwrap();
    d.cli(&["db", "init"]).ok();
    d.spawn()
}

impl Daemon {
    /// An MI call through the supervisor's own client library: the structured reply (code,
    /// message, data). Panics when no answer came within a generous deadline.
    pub fn mi_call(&self, method: &str) -> Result<Value, supervisor::mi::RpcError> {
        supervisor::mi::client::call(
            &self.fifo,
            self.dir.path(),
            method,
            &supervisor::mi::client::params_from_args(&[]),
            Duration::from_secs(120),
        )
        .unwrap_or_else(|e| panic!("mi {method}: no answer: {e}\nlog:\n{}", self.log_text()))
    }

    /// What runs, from the shm dump: the generation and every slot, without traffic counters.
    pub fn running(&self) -> Value {
        let mut d = self.dump();
        for slot in d["slots"].as_array_mut().unwrap() {
            let o = slot.as_object_mut().unwrap();
            o.remove("received");
            o.remove("connections");
        }
        serde_json::json!({"generation": d["generation"], "slots": d["slots"]})
    }

    /// Every port answers an OPTIONS.
    pub fn assert_answering(&self, ports: &[u16], when: &str) {
        let c = client("127.0.0.1");
        static N: AtomicU32 = AtomicU32::new(1_000_000);
        for &p in ports {
            assert!(
                options(&c, udp("127.0.0.1", p), N.fetch_add(1, Ordering::Relaxed)).is_some(),
                "port {p} not answering {when}; log:\n{}",
                self.log_text()
            );
        }
    }
}

/// OPTIONS sent round-robin to some ports from a thread until stopped, each waiting for its
/// answer: proof that traffic went on while something else happened.
pub struct Traffic {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    answered: std::sync::Arc<AtomicU32>,
    handle: std::thread::JoinHandle<Vec<String>>,
}

impl Traffic {
    /// Start, and return once the first request was answered.
    pub fn start(ports: &[u16]) -> Traffic {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let answered = std::sync::Arc::new(AtomicU32::new(0));
        let (flag, count) = (stop.clone(), answered.clone());
        let ports = ports.to_vec();
        let handle = std::thread::spawn(move || {
            let c = client("127.0.0.1");
            let mut missed = Vec::new();
            // Bounded: at most 100,000 requests or 10 minutes, whichever comes first.
            let t0 = Instant::now();
            for n in 0..100_000u32 {
                if flag.load(Ordering::Relaxed) || t0.elapsed() > Duration::from_secs(600) {
                    break;
                }
                let p = ports[n as usize % ports.len()];
                match options(&c, udp("127.0.0.1", p), 2_000_000 + n) {
                    Some(_) => {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    None => missed.push(format!("request {n} to port {p}")),
                }
            }
            missed
        });
        let t = Traffic {
            stop,
            answered,
            handle,
        };
        t.wait_beyond(0, "the first request");
        t
    }

    /// How many requests were answered so far.
    pub fn answered(&self) -> u32 {
        self.answered.load(Ordering::Relaxed)
    }

    fn wait_beyond(&self, n: u32, what: &str) {
        let t0 = Instant::now();
        while self.answered.load(Ordering::Relaxed) <= n {
            assert!(
                !self.handle.is_finished() && t0.elapsed() < DEADLINE,
                "traffic: no answer to {what}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Wait for one more answer (traffic goes on after whatever happened), stop, and check that
    /// every request was answered. Returns how many were.
    pub fn finish(self, what: &str) -> u32 {
        self.wait_beyond(
            self.answered.load(Ordering::Relaxed),
            &format!("a request after {what}"),
        );
        self.stop.store(true, Ordering::Relaxed);
        let missed = self.handle.join().unwrap();
        assert!(missed.is_empty(), "{what}: unanswered: {missed:?}");
        self.answered.load(Ordering::Relaxed)
    }
}

// ---- scratch databases on real servers ---------------------------------------------------------

/// Default PostgreSQL of the development machines and CI (trust auth).
pub const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// Default MariaDB of the development machines and CI (root, empty password).
pub const DEFAULT_MYSQL_URL: &str = "mysql://root@127.0.0.1:3306/test";

/// A name no other test (process or thread) uses: `sipsockd_t_<pid>_<n>_<test>`, at most 63
/// bytes (PostgreSQL's identifier limit), lower case.
pub fn unique(test: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let mut name = format!(
        "sipsockd_t_{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        test.to_ascii_lowercase()
            .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    );
    name.truncate(63);
    name
}

/// `url` with its database (the path) replaced by `db`, the query kept.
pub fn with_database(url: &str, db: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, format!("?{q}")),
        None => (rest, String::new()),
    };
    let authority = rest.split('/').next().unwrap();
    format!("{scheme}://{authority}/{db}{query}")
}

/// `url` without its password, for messages.
fn shown(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, rest)), Some(_)) => {
            let (userinfo, host) = rest.split_at(rest.rfind('@').unwrap());
            let user = userinfo.split(':').next().unwrap();
            format!("{scheme}://{user}{host}")
        }
        _ => url.to_string(),
    }
}

/// A server that cannot be reached: [`skip`] `test` (fails it under CI).
fn unreachable(test: &str, what: &str, url: &str, error: &dyn std::fmt::Display) {
    skip(test, &format!("no {what} at {}: {error}", shown(url)));
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    Postgres,
    Mysql,
}

/// A database created for one test on a real server, dropped on drop.
pub struct ScratchDb {
    pub server: Server,
    /// The URL of the scratch database (what goes in `db_url`).
    pub url: String,
    pub name: String,
    admin_url: String,
}

fn pg_connect(url: &str) -> Result<postgres::Client, postgres::Error> {
    let mut config: postgres::Config = url.parse()?;
    config.connect_timeout(Duration::from_secs(10));
    config.connect(postgres::NoTls)
}

fn mysql_connect(url: &str) -> Result<mysql::Conn, mysql::Error> {
    let opts = mysql::Opts::from_url(url).map_err(mysql::Error::UrlError)?;
    mysql::Conn::new(
        mysql::OptsBuilder::from_opts(opts).tcp_connect_timeout(Some(Duration::from_secs(10))),
    )
}

impl ScratchDb {
    /// A scratch database on the test PostgreSQL for `test` (the test's name), or `None` when the
    /// server cannot be reached (then `test` is skipped, see [`skip`]).
    pub fn postgres(test: &str) -> Option<ScratchDb> {
        let admin_url =
            std::env::var("SIPSOCKD_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_PG_URL.into());
        let mut admin = match pg_connect(&admin_url) {
            Ok(c) => c,
            Err(e) => {
                unreachable(test, "PostgreSQL", &admin_url, &e);
                return None;
            }
        };
        let name = unique(test);
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        Some(ScratchDb {
            server: Server::Postgres,
            url: with_database(&admin_url, &name),
            name,
            admin_url,
        })
    }

    /// A scratch database on the test MariaDB / MySQL for `test` (the test's name), or `None`
    /// when the server cannot be reached (then `test` is skipped, see [`skip`]).
    pub fn mysql(test: &str) -> Option<ScratchDb> {
        use mysql::prelude::Queryable;
        let admin_url =
            std::env::var("SIPSOCKD_TEST_MYSQL_URL").unwrap_or_else(|_| DEFAULT_MYSQL_URL.into());
        let mut admin = match mysql_connect(&admin_url) {
            Ok(c) => c,
            Err(e) => {
                unreachable(test, "MariaDB/MySQL", &admin_url, &e);
                return None;
            }
        };
        let name = unique(test);
        admin
            .query_drop(format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        Some(ScratchDb {
            server: Server::Mysql,
            url: with_database(&admin_url, &name),
            name,
            admin_url,
        })
    }

    /// Run one SQL statement in the scratch database.
    pub fn exec(&self, sql: &str) {
        match self.server {
            Server::Postgres => pg_connect(&self.url)
                .and_then(|mut c| c.batch_execute(sql))
                .unwrap_or_else(|e| panic!("{sql}: {e}")),
            Server::Mysql => {
                use mysql::prelude::Queryable;
                mysql_connect(&self.url)
                    .and_then(|mut c| c.query_drop(sql))
                    .unwrap_or_else(|e| panic!("{sql}: {e}"))
            }
        }
    }
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        // Best effort: a failed drop leaves a uniquely named database, never a test failure.
        match self.server {
            Server::Postgres => {
                if let Ok(mut c) = pg_connect(&self.admin_url) {
                    let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
                    if c.batch_execute(&sql).is_err() {
                        let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {}", self.name));
                    }
                }
            }
            Server::Mysql => {
                use mysql::prelude::Queryable;
                if let Ok(mut c) = mysql_connect(&self.admin_url) {
                    let _ = c.query_drop(format!("DROP DATABASE IF EXISTS {}", self.name));
                }
            }
        }
    }
}

// ---- looking into a daemon's processes ---------------------------------------------------------

/// A copy of the socket bound to `addr` that process `pid` holds (`pidfd_getfd`, Linux 5.6; the
/// tests run as the daemon's user or root, which may), or `None` when it holds none.
pub fn socket_of(pid: u32, addr: SocketAddr) -> Option<std::os::fd::OwnedFd> {
    let pidfd = pidfd_open(pid).unwrap_or_else(|e| panic!("pidfd_open({pid}): {e}"));
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()? {
        let entry = entry.ok()?;
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"));
        let Some(n) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if !is_socket {
            continue;
        }
        // Gone meanwhile: not the one.
        let Ok(fd) = pidfd_getfd(&pidfd, n) else {
            continue;
        };
        let sock = UdpSocket::from(fd);
        if sock.local_addr().is_ok_and(|a| a == addr) {
            return Some(sock.into());
        }
    }
    None
}

fn pidfd_open(pid: u32) -> std::io::Result<std::os::fd::OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and touches no memory of ours.
    owned(unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) })
}

fn pidfd_getfd(pidfd: &std::os::fd::OwnedFd, n: i32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::AsRawFd;
    // SAFETY: pidfd_getfd duplicates fd `n` of the process `pidfd` names into this one; it reads
    // no memory of ours.
    owned(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), n, 0) })
}

/// The fd a system call just returned, or its error.
fn owned(r: libc::c_long) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let fd = i32::try_from(r).map_err(|_| std::io::Error::last_os_error())?;
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a non-negative result of pidfd_open / pidfd_getfd is a new fd of this process that
    // nothing else owns; the OwnedFd is its only owner.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}
