//! The MI FIFO against real clients: the OpenSIPS Python clients (`opensips-mi`, `opensips-cli`)
//! run unchanged as subprocesses, `sipsockd mi`'s client, and raw writers doing what misbehaving
//! clients do. The server is a real `MiServer` in a mio loop on a thread, with a small `Handler`
//! that answers fixed values through the real `dispatch`.
//!
//! When the Python clients are missing, their tests fail under `CI=true` and are recorded as
//! skipped otherwise (`skip`; `pip install opensips opensipscli`).

use mio::{Events, Poll, Token, Waker};
use serde_json::{json, Value};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{symlink, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};
use supervisor::config::MiFifo;
use supervisor::mi::{client, dispatch, Handler, MiServer, RpcError};

#[path = "../../worker/tests/common/skip.rs"]
mod skip;

const FIFO: Token = Token(0);
const WAKE: Token = Token(1);
const DEADLINE: Duration = Duration::from_secs(20);

/// A directory for one test, removed at the end.
struct TestDir(PathBuf);

impl TestDir {
    fn new(name: &str) -> TestDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "sipsockd-mi-it-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TestDir(p)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Every method the server dispatched, in order.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn push(&self, m: &str) {
        self.0.lock().unwrap().push(m.to_owned());
    }
    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
    fn count(&self, m: &str) -> usize {
        self.all().iter().filter(|x| *x == m).count()
    }
}

fn sockets() -> Value {
    json!([
        {"socket": "udp:127.0.0.1:5070", "advertised": "192.0.2.10:5060", "tag": "edge",
         "flags": "frag,reuse_port", "tos": 16},
        {"socket": "udp:127.0.0.1:5071"}
    ])
}

/// Fixed answers; `status_size` makes `sockets_status` return a reply of about that many bytes.
struct FixedHandler {
    reloads: Log,
    status_size: usize,
    /// Of a table that does not exist: the statistics methods answer 500.
    statistics: supervisor::stats::Statistics,
}

impl Handler for FixedHandler {
    fn sockets_reload(&mut self) -> Result<Value, RpcError> {
        self.reloads.push("reload");
        Ok(json!("OK"))
    }
    fn sockets_list(&mut self) -> Result<Value, RpcError> {
        Ok(sockets())
    }
    fn sockets_status(&mut self) -> Result<Value, RpcError> {
        if self.status_size > 0 {
            return Ok(json!({"blob": "s".repeat(self.status_size)}));
        }
        Err(RpcError::new(500, "no status in this test"))
    }
    fn ps(&mut self) -> Result<Value, RpcError> {
        Ok(json!({"Processes": [{"ID": 0, "PID": std::process::id(), "Type": "supervisor"}]}))
    }
    fn statistics(&mut self) -> &mut supervisor::stats::Statistics {
        &mut self.statistics
    }
}

/// An MiServer in a mio loop on its own thread, as the daemon runs it.
struct Server {
    dir: TestDir,
    fifo: PathBuf,
    replies: PathBuf,
    /// Every dispatched method.
    log: Log,
    /// Every sockets_reload the handler ran.
    reloads: Log,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(name: &str) -> Server {
        Self::start_with(name, 0)
    }

    fn start_with(name: &str, status_size: usize) -> Server {
        let dir = TestDir::new(name);
        let replies = dir.0.join("replies");
        fs::create_dir(&replies).unwrap();
        let cfg = MiFifo {
            fifo_name: dir.0.join("fifo"),
            fifo_mode: "0600".into(),
            reply_dir: replies.clone(),
        };
        let mut server = MiServer::create(&cfg).unwrap();
        let poll = Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), WAKE).unwrap());
        server.register(poll.registry(), FIFO).unwrap();
        let (log, reloads, stop) = (
            Log::default(),
            Log::default(),
            Arc::new(AtomicBool::new(false)),
        );
        let handler = FixedHandler {
            reloads: reloads.clone(),
            status_size,
            statistics: supervisor::stats::Statistics::new(dir.0.join("no-table")),
        };
        let thread = {
            let (log, stop) = (log.clone(), stop.clone());
            std::thread::spawn(move || serve(server, poll, handler, log, stop))
        };
        Server {
            fifo: cfg.fifo_name,
            dir,
            replies,
            log,
            reloads,
            stop,
            waker,
            thread: Some(thread),
        }
    }

    /// `sipsockd mi` against this server: exit code and stdout.
    fn mi(&self, method: &str, params: &[&str]) -> (u8, String) {
        let params: Vec<String> = params.iter().map(|s| s.to_string()).collect();
        let mut out = Vec::new();
        let code = client::run(
            &self.fifo,
            &self.replies,
            method,
            &params,
            DEADLINE,
            &mut out,
        );
        (code, String::from_utf8(out).unwrap())
    }

    fn mi_ok(&self, method: &str, params: &[&str]) -> Value {
        let (code, out) = self.mi(method, params);
        assert_eq!(code, 0, "{method}: {out}");
        serde_json::from_str(&out).unwrap()
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            t.join().expect("server thread panicked");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn serve(
    mut server: MiServer,
    mut poll: Poll,
    mut handler: FixedHandler,
    log: Log,
    stop: Arc<AtomicBool>,
) {
    let started = SystemTime::now();
    let mut events = Events::with_capacity(16);
    while !stop.load(Ordering::SeqCst) {
        let timeout = server.poll_timeout().unwrap_or(Duration::from_millis(500));
        match poll.poll(&mut events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("poll: {e}"),
        }
        let mut requests = Vec::new();
        if events.iter().any(|ev| ev.token() == FIFO) {
            requests.extend(server.on_readable(poll.registry()));
        }
        requests.extend(server.on_tick());
        for req in requests {
            log.push(&req.method);
            let result = dispatch(&req, started, &mut handler);
            server.reply(&req, result);
        }
    }
    server.remove();
}

// ---- raw FIFO helpers -----------------------------------------------------------------------

fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
}

/// A read end that does not wait for a writer.
fn open_reader(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .unwrap()
}

/// Writes bytes into the server FIFO in one write per chunk, then closes.
fn write_raw(fifo: &Path, chunks: &[&[u8]]) {
    let mut f = OpenOptions::new().write(true).open(fifo).unwrap();
    for c in chunks {
        f.write_all(c).unwrap();
    }
}

/// Reads from a non-blocking reader until a full line (or the deadline).
fn read_line(f: &mut File, within: Duration) -> Vec<u8> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    while !got.ends_with(b"\n") {
        assert!(
            Instant::now() < deadline,
            "no full line within {within:?}; got {} bytes",
            got.len()
        );
        match f.read(&mut buf) {
            Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
            // 0: no writer (yet or any more); WouldBlock: writer, no data yet.
            Ok(_) => std::thread::sleep(Duration::from_millis(1)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => panic!("{e}"),
        }
    }
    got
}

fn reply_of(line: &[u8]) -> Value {
    let v: Value = serde_json::from_slice(line).unwrap();
    assert_eq!(v["jsonrpc"], "2.0", "{v}");
    assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
    v
}

fn request(name: &str, id: &str, method: &str) -> String {
    format!(
        ":{name}:{}",
        json!({"jsonrpc": "2.0", "id": id, "method": method, "params": {}})
    )
}

// ---- subprocess helpers ---------------------------------------------------------------------

/// Are the Python clients installed? When not, `test` (or the part of it that needs them) is
/// skipped: a failure under CI, recorded elsewhere (see `skip`).
fn python_clients(test: &str) -> bool {
    static FOUND: OnceLock<bool> = OnceLock::new();
    let found = *FOUND.get_or_init(|| {
        ["opensips-mi", "opensips-cli"].iter().all(|c| {
            Command::new(c)
                .arg("--help")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
    });
    if !found {
        skip::skip(
            test,
            "opensips-mi / opensips-cli not installed (pip install opensips opensipscli)",
        );
    }
    found
}

/// Runs a command with a deadline (killed and failed past it); stdout/stderr go through files.
fn run_cmd(cmd: &mut Command, dir: &Path) -> Output {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let (out_path, err_path) = (dir.join(format!("out{n}")), dir.join(format!("err{n}")));
    let mut child = cmd
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} still running after {DEADLINE:?}: {}",
                fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        status,
        stdout: fs::read(&out_path).unwrap(),
        stderr: fs::read(&err_path).unwrap(),
    }
}

fn opensips_mi(s: &Server, args: &[&str]) -> Output {
    let mut cmd = Command::new("opensips-mi");
    cmd.args(["-t", "fifo", "-f"])
        .arg(&s.fifo)
        .arg("-fb")
        .arg(&s.fifo)
        .arg("-fd")
        .arg(&s.replies)
        .args(args);
    for var in [
        "OPENSIPS_MI_TYPE",
        "OPENSIPS_MI_FIFO_FILE",
        "OPENSIPS_MI_FIFO_FALLBACK",
        "OPENSIPS_MI_FIFO_REPLY_DIR",
    ] {
        cmd.env_remove(var);
    }
    run_cmd(&mut cmd, &s.dir.0)
}

fn opensips_cli(s: &Server, args: &[&str]) -> Output {
    let mut cmd = Command::new("opensips-cli");
    cmd.arg("-o")
        .arg(format!("fifo_file={}", s.fifo.display()))
        .arg("-o")
        .arg(format!("fifo_file_fallback={}", s.fifo.display()))
        .arg("-o")
        .arg(format!("fifo_reply_dir={}", s.replies.display()))
        .args(["-o", "output_type=pretty-print", "-x"])
        .args(args)
        // No user configuration or history file of whoever runs the tests.
        .env("HOME", &s.dir.0);
    run_cmd(&mut cmd, &s.dir.0)
}

fn json_stdout(o: &Output) -> Value {
    assert!(o.status.success(), "{o:?}");
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
}

fn assert_no_reply_fifo_left(s: &Server) {
    let left: Vec<_> = fs::read_dir(&s.replies)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "reply FIFOs left: {left:?}");
}

// ---- tests ----------------------------------------------------------------------------------

#[test]
fn opensips_mi_drives_list_reload_and_the_core_methods() {
    if !python_clients("opensips_mi_drives_list_reload_and_the_core_methods") {
        return;
    }
    let s = Server::start("opensips-mi");
    assert_eq!(json_stdout(&opensips_mi(&s, &["sockets_list"])), sockets());
    assert_eq!(
        json_stdout(&opensips_mi(&s, &["sockets_reload"])),
        json!("OK")
    );
    assert_eq!(
        json_stdout(&opensips_mi(&s, &["sockets_mgm:list"])),
        sockets()
    );
    assert_eq!(s.reloads.count("reload"), 1);

    let which = json_stdout(&opensips_mi(&s, &["which"]));
    assert!(
        which.as_array().unwrap().contains(&json!("sockets_reload")),
        "{which}"
    );
    assert_eq!(
        json_stdout(&opensips_mi(&s, &["which", "sockets_list"])),
        json!([[]])
    );
    let version = json_stdout(&opensips_mi(&s, &["version"]));
    assert!(
        version["Server"].as_str().unwrap().starts_with("sipsockd "),
        "{version}"
    );
    let uptime = json_stdout(&opensips_mi(&s, &["uptime"]));
    assert!(
        uptime["Up time"].as_str().unwrap().ends_with(" [sec]"),
        "{uptime}"
    );
    assert_eq!(
        json_stdout(&opensips_mi(&s, &["ps"]))["Processes"][0]["Type"],
        "supervisor"
    );

    // JSON-RPC errors reach the client as errors.
    let o = opensips_mi(&s, &["sockets_list", "extra"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("-32602"),
        "{o:?}"
    );
    let o = opensips_mi(&s, &["no_such_method"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("-32601"),
        "{o:?}"
    );
    assert_no_reply_fifo_left(&s);
}

#[test]
fn opensips_cli_drives_list_and_reload() {
    if !python_clients("opensips_cli_drives_list_and_reload") {
        return;
    }
    let s = Server::start("opensips-cli");
    assert_eq!(
        json_stdout(&opensips_cli(&s, &["mi", "sockets_list"])),
        sockets()
    );
    assert_eq!(
        json_stdout(&opensips_cli(&s, &["mi", "sockets_mgm:reload"])),
        json!("OK")
    );
    assert_eq!(s.reloads.count("reload"), 1);
    // It asks `which` first, and refuses what is not listed without sending it.
    assert!(s.log.count("which") >= 2, "{:?}", s.log.all());
    let o = opensips_cli(&s, &["mi", "no_such_method"]);
    assert!(o.stdout.is_empty(), "{o:?}");
    assert_eq!(s.log.count("no_such_method"), 0);
    assert_no_reply_fifo_left(&s);
}

#[test]
fn own_client_results_errors_and_exit_codes() {
    let s = Server::start("own");
    let (code, out) = s.mi("sockets_list", &[]);
    assert_eq!(code, 0);
    assert_eq!(
        out,
        format!("{}\n", serde_json::to_string_pretty(&sockets()).unwrap())
    );
    assert_eq!(s.mi_ok("sockets_reload", &[]), json!("OK"));
    assert_eq!(s.mi_ok("which", &["command=sockets_reload"]), json!([[]]));
    assert_eq!(s.reloads.count("reload"), 1);

    for (method, params) in [
        ("sockets_reload", &["force=1"][..]),
        ("nope", &[]),
        ("which", &["cmd=ps"]),
        ("sockets_status", &[]),
    ] {
        let (code, out) = s.mi(method, params);
        assert_eq!((code, out.as_str()), (1, ""), "{method} {params:?}");
    }
    assert_eq!(s.reloads.count("reload"), 1, "a refused reload did not run");
    assert_no_reply_fifo_left(&s);

    // A FIFO nobody reads, and no FIFO at all: exit 2 at once, nothing left behind.
    let dead = s.dir.0.join("dead");
    mkfifo(&dead);
    for fifo in [dead.clone(), s.dir.0.join("missing")] {
        let t = Instant::now();
        let mut out = Vec::new();
        assert_eq!(
            client::run(&fifo, &s.replies, "ps", &[], DEADLINE, &mut out),
            2
        );
        assert!(t.elapsed() < Duration::from_secs(2));
    }
    assert_no_reply_fifo_left(&s);
}

#[test]
fn own_client_times_out_with_2_when_nobody_answers() {
    let d = TestDir::new("timeout");
    let fifo = d.0.join("fifo");
    mkfifo(&fifo);
    // Something reads the FIFO but never answers.
    let _silent = open_reader(&fifo);
    let t = Instant::now();
    let mut out = Vec::new();
    let code = client::run(&fifo, &d.0, "ps", &[], Duration::from_millis(300), &mut out);
    assert_eq!(code, 2);
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert!(t.elapsed() < Duration::from_secs(5));
    let left: Vec<_> = fs::read_dir(&d.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["fifo"], "only the server FIFO is left");
}

/// opensips-mi opens its reply FIFO only after writing the request: the reply must still reach it.
/// The latency after the open is printed for information; it is measured, not asserted, by
/// `scripts/bench.sh` (tests carry no timing assertions on this shared machine).
#[test]
fn a_reply_reaches_a_client_that_opens_its_pipe_late() {
    let s = Server::start("latency");
    let mut samples = Vec::new();
    for i in 0..15 {
        let name = format!("late_{i}");
        let path = s.replies.join(&name);
        mkfifo(&path);
        write_raw(
            &s.fifo,
            &[request(&name, &i.to_string(), "sockets_list").as_bytes()],
        );
        // The scenario, not a synchronisation: the server is now retrying the open.
        std::thread::sleep(Duration::from_millis(30));
        let t = Instant::now();
        let mut reader = open_reader(&path);
        let line = read_line(&mut reader, Duration::from_secs(6));
        samples.push(t.elapsed());
        assert_eq!(reply_of(&line)["result"], sockets());
        fs::remove_file(&path).unwrap();
    }
    samples.sort();
    let median = samples[samples.len() / 2];
    eprintln!(
        "reply latency after the client opens: median {median:?}, max {:?}",
        samples[samples.len() - 1]
    );

    let t = Instant::now();
    s.mi_ok("sockets_list", &[]);
    eprintln!("sipsockd mi round trip (opens first): {:?}", t.elapsed());
    if python_clients("a_reply_reaches_a_client_that_opens_its_pipe_late") {
        let t = Instant::now();
        json_stdout(&opensips_mi(&s, &["sockets_list"]));
        eprintln!("opensips-mi sockets_list, whole process: {:?}", t.elapsed());
    }
}

#[test]
fn reply_names_that_escape_or_are_not_fifos_are_refused() {
    let s = Server::start("refuse");
    // A FIFO outside reply_dir, with a reader: a reply written there would be seen.
    let outside = s.dir.0.join("x");
    mkfifo(&outside);
    let mut outside_reader = open_reader(&outside);
    symlink(&outside, s.replies.join("link")).unwrap();
    fs::write(s.replies.join("plain"), "keep").unwrap();
    let before: Vec<_> = fs::read_dir(&s.dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();

    write_raw(
        &s.fifo,
        &[
            request("../x", "1", "sockets_reload").as_bytes(),
            request("..\\x", "2", "sockets_reload").as_bytes(),
            request("x.y", "3", "sockets_reload").as_bytes(),
            request("link", "4", "sockets_list").as_bytes(),
            request("plain", "5", "sockets_list").as_bytes(),
        ],
    );
    // Served in order: once this answers, the ones above were handled.
    s.mi_ok("ps", &[]);

    assert_eq!(
        s.reloads.count("reload"),
        0,
        "requests with a refused reply name do not run"
    );
    let mut buf = [0u8; 16];
    assert!(
        matches!(outside_reader.read(&mut buf), Ok(0)),
        "nothing written outside reply_dir"
    );
    assert_eq!(fs::read_to_string(s.replies.join("plain")).unwrap(), "keep");
    let after: Vec<_> = fs::read_dir(&s.dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(before.len(), after.len(), "{before:?} {after:?}");
}

#[test]
fn idle_writer_and_garbage_do_not_block_the_next_client() {
    let s = Server::start("idle");
    // A writer that opens the FIFO and never writes (nor closes): no end-of-file comes.
    let idle = OpenOptions::new().write(true).open(&s.fifo).unwrap();
    assert_eq!(s.mi_ok("sockets_list", &[]), sockets());
    // Garbage from another writer while the idle one keeps the FIFO open.
    write_raw(&s.fifo, &[b"hello, this is not a request"]);
    assert_eq!(s.mi_ok("sockets_list", &[]), sockets());
    write_raw(&s.fifo, &[b"\x00\xff\xfe{{{{"]);
    assert_eq!(
        s.mi_ok("version", &[])["Server"]
            .as_str()
            .map(|v| v.starts_with("sipsockd")),
        Some(true)
    );
    if python_clients("idle_writer_and_garbage_do_not_block_the_next_client") {
        assert_eq!(json_stdout(&opensips_mi(&s, &["sockets_list"])), sockets());
    }
    drop(idle);
    // Garbage, then its writer closes: dropped, and the next writer is served.
    write_raw(&s.fifo, &[b":r:{\"jsonrpc\":"]);
    write_raw(&s.fifo, &[b"garbage\n"]);
    assert_eq!(s.mi_ok("sockets_list", &[]), sockets());
    // Opens and closes without data, as opensips-mi does before each command.
    for _ in 0..5 {
        drop(OpenOptions::new().write(true).open(&s.fifo).unwrap());
    }
    assert_eq!(s.mi_ok("sockets_list", &[]), sockets());
    assert!(!s.log.all().is_empty());
    assert_no_reply_fifo_left(&s);
}

#[test]
fn reply_fifo_without_reader_does_not_block_the_next_client() {
    let s = Server::start("noreader");
    let never = s.replies.join("never");
    mkfifo(&never);
    write_raw(&s.fifo, &[request("never", "1", "sockets_list").as_bytes()]);
    let t = Instant::now();
    assert_eq!(s.mi_ok("sockets_list", &[]), sockets());
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let python = python_clients("reply_fifo_without_reader_does_not_block_the_next_client");
    if python {
        assert_eq!(json_stdout(&opensips_mi(&s, &["sockets_list"])), sockets());
    }
    assert_eq!(s.log.count("sockets_list"), if python { 3 } else { 2 });
}

#[test]
fn several_requests_in_one_write_split_requests_and_parse_errors() {
    let s = Server::start("several");
    let names = ["a", "b", "c", "d", "e"];
    let mut readers: Vec<File> = names
        .iter()
        .map(|n| {
            let p = s.replies.join(n);
            mkfifo(&p);
            open_reader(&p)
        })
        .collect();
    // Three in one write, newline-separated or glued.
    let one_write = format!(
        "{}\n{}{}",
        request("a", "1", "sockets_list"),
        request("b", "2", "version"),
        request("c", "3", "which")
    );
    write_raw(&s.fifo, &[one_write.as_bytes()]);
    // One request in three writes.
    let split = request("d", "4", "ps");
    let (x, y) = split.split_at(10);
    let (y, z) = y.split_at(20);
    write_raw(&s.fifo, &[x.as_bytes(), y.as_bytes(), z.as_bytes()]);
    // Invalid JSON, ended by the writer closing: -32700 with a null id.
    write_raw(&s.fifo, &[b":e:{\"jsonrpc\":\"2.0\",\"id\":\"5\""]);

    let replies: Vec<Value> = readers
        .iter_mut()
        .map(|r| reply_of(&read_line(r, DEADLINE)))
        .collect();
    assert_eq!(
        replies[0],
        json!({"jsonrpc": "2.0", "result": sockets(), "id": "1"})
    );
    assert_eq!(replies[1]["id"], "2");
    assert!(replies[1]["result"]["Server"].is_string());
    assert_eq!(replies[2]["id"], "3");
    assert!(replies[2]["result"]
        .as_array()
        .unwrap()
        .contains(&json!("uptime")));
    assert_eq!(replies[3]["result"]["Processes"][0]["Type"], "supervisor");
    assert_eq!(replies[4]["error"]["code"], -32700);
    assert_eq!(replies[4]["id"], Value::Null);

    // No id: runs, no reply. Empty reply name: runs, no reply.
    write_raw(
        &s.fifo,
        &[b":a:{\"jsonrpc\":\"2.0\",\"method\":\"sockets_reload\"}"],
    );
    write_raw(&s.fifo, &[request("", "9", "sockets_reload").as_bytes()]);
    s.mi_ok("ps", &[]);
    assert_eq!(s.reloads.count("reload"), 2);
    let mut buf = [0u8; 64];
    assert!(
        matches!(readers[0].read(&mut buf), Ok(0)),
        "no reply to a notification"
    );
}

#[test]
fn big_reply_is_written_as_the_reader_drains() {
    const SIZE: usize = 4 << 20;
    let s = Server::start_with("big", SIZE);
    // A reader that takes its time: the reply cannot go out in one write.
    let slow_path = s.replies.join("slow");
    mkfifo(&slow_path);
    let mut slow = open_reader(&slow_path);
    write_raw(
        &s.fifo,
        &[request("slow", "1", "sockets_status").as_bytes()],
    );
    let mut first = [0u8; 1024];
    let deadline = Instant::now() + DEADLINE;
    let n = loop {
        match slow.read(&mut first) {
            Ok(n) if n > 0 => break n,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
            other => panic!("no data: {other:?}"),
        }
    };
    // Meanwhile the daemon serves others.
    assert_eq!(s.mi_ok("sockets_list", &[]), sockets());
    let big = s.mi_ok("sockets_status", &[]);
    assert_eq!(big["blob"].as_str().map(str::len), Some(SIZE));

    let mut rest = read_line(&mut slow, DEADLINE);
    let mut line = first[..n].to_vec();
    line.append(&mut rest);
    let v = reply_of(&line);
    assert_eq!(v["result"]["blob"].as_str().map(str::len), Some(SIZE));
}
