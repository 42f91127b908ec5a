//! `min_responder`: the machine's practical limit for answering SIP over UDP, and the floor for
//! binding sockets.
//!
//! Serve mode: N forked processes share one UDP socket (as sipsockd's and Kamailio's workers do)
//! and answer every request with `SIP/2.0 200 OK` followed by the request's own header lines,
//! unparsed (so a load generator can still match replies), with blocking recvmmsg and sendmmsg.
//! Whatever a real SIP server does on top of that is what it costs above this floor.
//!
//! Bind mode (`--bind-only`): create and bind one UDP socket per address of a file, report the
//! time, close them; the floor under a daemon's reload time for the same sockets.

use std::net::{SocketAddrV4, UdpSocket};
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const USAGE: &str = "\
usage: min_responder [--listen IP:PORT] [--processes N] [--duration SECS]
       min_responder --bind-only --targets-file FILE [--repeat N] [--json]
  --listen IP:PORT      the UDP socket to serve (default 127.0.0.1:5080)
  --processes N         forked processes sharing it (default 1)
  --duration SECS       exit after SECS (default 600: always bounded)
  --bind-only           bind every address of --targets-file (`IP:PORT` or `udp:IP:PORT` lines),
                        print the time taken, close them; --repeat times, the median printed";

/// Datagrams per system call.
const BATCH: usize = 64;
const STATUS_LINE: &[u8] = b"SIP/2.0 200 OK\r\n";

fn parse_addr(text: &str) -> Result<SocketAddrV4, String> {
    let t = text.trim();
    let t = t
        .strip_prefix("udp:")
        .or_else(|| t.strip_prefix("UDP:"))
        .unwrap_or(t);
    t.parse()
        .map_err(|_| format!("bad address {text:?}: expected IPv4:PORT"))
}

/// Build the reply to `req` into `out`: our status line, then the request from its second line
/// on. Returns false for what is not a request (a response, or no line end): not answered.
fn reply(req: &[u8], out: &mut Vec<u8>) -> bool {
    if req.starts_with(b"SIP/") {
        return false;
    }
    let Some(eol) = req.windows(2).position(|w| w == b"\r\n") else {
        return false;
    };
    out.clear();
    out.extend_from_slice(STATUS_LINE);
    out.extend_from_slice(&req[eol + 2..]);
    true
}

/// One process: answer forever (until the parent or the alarm ends it).
fn serve(sock: &UdpSocket) -> ! {
    let mut b = sys::Batch::new(BATCH);
    loop {
        let n = match sys::recv_wait(sock.as_fd(), &mut b) {
            Ok(n) => n,
            Err(_) => continue,
        };
        let mut out = 0;
        for i in 0..n {
            if b.build_reply(i, out, reply) {
                out += 1;
            }
        }
        // Best effort, as a stateless server: a full send queue drops replies.
        let _ = sys::send_replies(sock.as_fd(), &mut b, out);
    }
}

fn serve_main(args: &[String]) -> Result<(), String> {
    let mut listen: SocketAddrV4 = "127.0.0.1:5080".parse().expect("literal");
    let mut processes = 1u32;
    let mut duration = 600u32;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--listen" => listen = parse_addr(&val()?)?,
            "--processes" => {
                processes = val()?.parse().map_err(|_| "--processes: bad number")?;
            }
            "--duration" => {
                let v: f64 = val()?.parse().map_err(|_| "--duration: bad number")?;
                duration = v.ceil().clamp(1.0, 86_400.0) as u32;
            }
            _ => return Err(format!("unknown option {a:?}")),
        }
    }
    if processes == 0 || processes > 256 {
        return Err("--processes must be 1..=256".into());
    }
    let sock = UdpSocket::bind(listen).map_err(|e| format!("bind {listen}: {e}"))?;
    sys::set_rcvbuf(sock.as_fd(), 4 << 20);
    // The parent only waits; the alarm bounds its life and the children follow it.
    sys::alarm(duration);
    for _ in 0..processes {
        if sys::fork_child().map_err(|e| format!("fork: {e}"))? {
            serve(&sock);
        }
    }
    eprintln!("min_responder: {processes} process(es) on {listen}");
    sys::wait_children();
    Ok(())
}

fn bind_main(args: &[String]) -> Result<(), String> {
    let mut addrs = Vec::new();
    let mut repeat = 1usize;
    let mut json = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--bind-only" => {}
            "--json" => json = true,
            "--repeat" => repeat = val()?.parse().map_err(|_| "--repeat: bad number")?,
            "--targets-file" => {
                let f = val()?;
                let text = std::fs::read_to_string(&f).map_err(|e| format!("{f}: {e}"))?;
                for line in text.lines() {
                    let line = line.split('#').next().unwrap_or("").trim();
                    if !line.is_empty() {
                        addrs.push(parse_addr(line)?);
                    }
                }
            }
            _ => return Err(format!("unknown option {a:?}")),
        }
    }
    if addrs.is_empty() || !(1..=100).contains(&repeat) {
        return Err("--bind-only needs a non-empty --targets-file and --repeat 1..=100".into());
    }
    sys::raise_nofile();
    let mut times = Vec::with_capacity(repeat);
    let mut held = Vec::with_capacity(addrs.len());
    for _ in 0..repeat {
        let t = Instant::now();
        for a in &addrs {
            let s = UdpSocket::bind(a).map_err(|e| format!("bind {a}: {e}"))?;
            s.set_nonblocking(true).map_err(|e| format!("{a}: {e}"))?;
            held.push(s);
        }
        times.push(t.elapsed());
        held.clear();
    }
    let mut sorted = times.clone();
    sorted.sort();
    let median = sorted[sorted.len() / 2];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    if json {
        println!(
            "{{\"sockets\": {}, \"repeat\": {}, \"median_ms\": {:.3}, \"min_ms\": {:.3}, \"max_ms\": {:.3}}}",
            addrs.len(),
            repeat,
            ms(median),
            ms(sorted[0]),
            ms(sorted[sorted.len() - 1])
        );
    } else {
        println!(
            "bound {} sockets: median {:.3} ms (min {:.3}, max {:.3}, {} runs)",
            addrs.len(),
            ms(median),
            ms(sorted[0]),
            ms(sorted[sorted.len() - 1]),
            repeat
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let r = if args.iter().any(|a| a == "--bind-only") {
        bind_main(&args)
    } else {
        serve_main(&args)
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("min_responder: {e}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// fork, signals, limits and the batched calls: every unsafe block of this example.
mod sys {
    use std::os::fd::{AsRawFd, BorrowedFd};

    /// One recvmmsg worth of requests and the replies built from them; owns every buffer the
    /// kernel is pointed at, so those pointers are valid while the Batch is borrowed.
    pub struct Batch {
        bufs: Vec<Vec<u8>>,
        lens: Vec<usize>,
        addrs: Vec<libc::sockaddr_storage>,
        out: Vec<Vec<u8>>,
        out_addr: Vec<usize>,
        iovs: Vec<libc::iovec>,
        hdrs: Vec<libc::mmsghdr>,
    }

    impl Batch {
        pub fn new(cap: usize) -> Self {
            Batch {
                bufs: (0..cap).map(|_| vec![0u8; 4096]).collect(),
                lens: vec![0; cap],
                // SAFETY: plain C structs for which all-zero is valid; filled before use.
                addrs: vec![unsafe { std::mem::zeroed() }; cap],
                out: (0..cap).map(|_| Vec::with_capacity(4096)).collect(),
                out_addr: vec![0; cap],
                // SAFETY: as above.
                iovs: vec![unsafe { std::mem::zeroed() }; cap],
                // SAFETY: as above.
                hdrs: vec![unsafe { std::mem::zeroed() }; cap],
            }
        }

        /// Build reply `slot` from request `i` with `f`; true when there is one to send.
        pub fn build_reply(
            &mut self,
            i: usize,
            slot: usize,
            f: fn(&[u8], &mut Vec<u8>) -> bool,
        ) -> bool {
            let ok = f(&self.bufs[i][..self.lens[i]], &mut self.out[slot]);
            if ok {
                self.out_addr[slot] = i;
            }
            ok
        }
    }

    /// Block until at least one datagram is there, then take up to a batch.
    pub fn recv_wait(fd: BorrowedFd<'_>, b: &mut Batch) -> std::io::Result<usize> {
        let cap = b.bufs.len();
        for i in 0..cap {
            b.iovs[i] = libc::iovec {
                iov_base: b.bufs[i].as_mut_ptr() as *mut libc::c_void,
                iov_len: b.bufs[i].len(),
            };
            let h = &mut b.hdrs[i].msg_hdr;
            h.msg_name = &mut b.addrs[i] as *mut libc::sockaddr_storage as *mut libc::c_void;
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut b.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
        }
        // SAFETY: the headers point into buffers owned by `b`, exclusively borrowed until the
        // call returns; the fd is borrowed from the shared socket, which lives for the process.
        let r = unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                b.hdrs.as_mut_ptr(),
                cap as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let n = r as usize;
        for i in 0..n {
            b.lens[i] = (b.hdrs[i].msg_len as usize).min(b.bufs[i].len());
        }
        Ok(n)
    }

    /// Send replies `0..n` (built by `build_reply`) to the sources of their requests.
    pub fn send_replies(fd: BorrowedFd<'_>, b: &mut Batch, n: usize) -> std::io::Result<usize> {
        if n == 0 {
            return Ok(0);
        }
        for j in 0..n {
            let src = b.out_addr[j];
            b.iovs[j] = libc::iovec {
                iov_base: b.out[j].as_mut_ptr() as *mut libc::c_void,
                iov_len: b.out[j].len(),
            };
            let namelen = b.hdrs[src].msg_hdr.msg_namelen;
            let h = &mut b.hdrs[j].msg_hdr;
            h.msg_name = &mut b.addrs[src] as *mut libc::sockaddr_storage as *mut libc::c_void;
            h.msg_namelen = namelen;
            h.msg_iov = &mut b.iovs[j];
            h.msg_iovlen = 1;
        }
        // SAFETY: as in recv_wait: every pointer is into `b`, exclusively borrowed for the call.
        let r =
            unsafe { libc::sendmmsg(fd.as_raw_fd(), b.hdrs.as_mut_ptr(), n as libc::c_uint, 0) };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(r as usize)
    }

    /// Ask for a large receive buffer (best effort: capped at rmem_max).
    pub fn set_rcvbuf(fd: BorrowedFd<'_>, bytes: libc::c_int) {
        // SAFETY: the fd is borrowed from a live socket; the value is a local c_int whose size is
        // passed alongside.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                &bytes as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }

    /// SIGALRM (default action: terminate) after `secs`.
    pub fn alarm(secs: u32) {
        // SAFETY: no memory involved.
        unsafe {
            libc::alarm(secs);
        }
    }

    /// Fork; true in the child. The child dies with its parent (PDEATHSIG), so stopping the
    /// parent by its pid stops every process of the responder.
    pub fn fork_child() -> std::io::Result<bool> {
        // SAFETY: this process has a single thread (no thread is ever started here), so the child
        // may run Rust code; it inherits the shared socket fd, which it only uses, never closes.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if pid > 0 {
            return Ok(false);
        }
        // SAFETY: prctl/getppid/_exit take no pointers.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            // The parent may have died before prctl: then nobody would stop us.
            if libc::getppid() == 1 {
                libc::_exit(0);
            }
        }
        Ok(true)
    }

    /// Wait for every child (they only end when killed).
    pub fn wait_children() {
        loop {
            let mut status = 0;
            // SAFETY: `status` is a local int written by the kernel.
            let r = unsafe { libc::wait(&mut status) };
            if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                return;
            }
        }
    }

    /// Raise the open-file soft limit to the hard limit, for binding thousands of sockets.
    pub fn raise_nofile() {
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `rl` is a local rlimit exclusively borrowed for both calls.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 && rl.rlim_cur < rl.rlim_max {
                rl.rlim_cur = rl.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_echo_the_headers_under_a_200_status_line() {
        let mut out = Vec::new();
        assert!(reply(b"OPTIONS sip:a SIP/2.0\r\nVia: x\r\n\r\n", &mut out));
        assert_eq!(out, b"SIP/2.0 200 OK\r\nVia: x\r\n\r\n");
        assert!(!reply(b"SIP/2.0 200 OK\r\nVia: x\r\n\r\n", &mut out));
        assert!(!reply(b"garbage", &mut out));
    }
}
