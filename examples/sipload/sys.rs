//! Every system call of sipload that std does not offer: batched send/receive, poll, getrusage,
//! signals, rlimit. All of sipload's `unsafe` is here.

use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_sig: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Make SIGINT and SIGTERM end the send phase instead of the process.
pub fn install_stop_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe; no memory
        // is shared with the kernel beyond the function pointer, valid for the program's life.
        unsafe {
            libc::signal(
                sig,
                on_stop as extern "C" fn(libc::c_int) as libc::sighandler_t,
            );
        }
    }
}

/// True once SIGINT or SIGTERM arrived.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// Raise the open-file soft limit to the hard limit (many targets need no more fds, but the
/// bind floor of min_responder does; kept alike).
pub fn raise_nofile() {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `rl` is a valid, exclusively borrowed rlimit for the duration of both calls.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 && rl.rlim_cur < rl.rlim_max {
            rl.rlim_cur = rl.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
    }
}

/// Ask for large socket buffers (best effort: the kernel caps them at rmem_max/wmem_max).
pub fn set_bufsize(fd: BorrowedFd<'_>, bytes: libc::c_int) {
    for opt in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        // SAFETY: the fd is borrowed from a live socket; the option value is a local c_int
        // whose size is passed alongside.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                &bytes as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

/// (user, system) CPU time of this process.
pub fn cpu_time() -> (Duration, Duration) {
    // SAFETY: rusage is plain data; zeroed is a valid value, and getrusage only writes it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is exclusively borrowed for the call.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return (Duration::ZERO, Duration::ZERO);
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    (tv(ru.ru_utime), tv(ru.ru_stime))
}

fn to_sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// Datagrams to send with one sendmmsg; owns their buffers, so the pointers handed to the
/// kernel always point into live memory owned by this struct.
pub struct SendBatch {
    bufs: Vec<Vec<u8>>,
    addrs: Vec<libc::sockaddr_in>,
    slots: Vec<u32>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    len: usize,
}

impl SendBatch {
    pub fn new(cap: usize) -> Self {
        SendBatch {
            bufs: (0..cap).map(|_| Vec::with_capacity(1024)).collect(),
            addrs: vec![to_sockaddr(SocketAddrV4::new([0, 0, 0, 0].into(), 0)); cap],
            slots: vec![0; cap],
            // SAFETY: iovec and mmsghdr are plain C structs; all-zero (null pointers, zero
            // lengths) is valid, and they are filled before any use.
            iovs: vec![unsafe { std::mem::zeroed() }; cap],
            // SAFETY: as above.
            hdrs: vec![unsafe { std::mem::zeroed() }; cap],
            len: 0,
        }
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// The buffer of the next datagram (to `to`, for window slot `slot`); the caller fills it.
    pub fn next_buf(&mut self, to: SocketAddrV4, slot: u32) -> &mut Vec<u8> {
        let i = self.len;
        self.len += 1;
        self.addrs[i] = to_sockaddr(to);
        self.slots[i] = slot;
        &mut self.bufs[i]
    }

    /// Window slots of the datagrams in this batch, in order.
    pub fn slots(&self) -> &[u32] {
        &self.slots[..self.len]
    }
}

/// Send the batch on `fd`; returns how many datagrams went (the first ones).
pub fn send_batch(fd: BorrowedFd<'_>, b: &mut SendBatch) -> std::io::Result<usize> {
    let n = b.len;
    for i in 0..n {
        b.iovs[i] = libc::iovec {
            iov_base: b.bufs[i].as_mut_ptr() as *mut libc::c_void,
            iov_len: b.bufs[i].len(),
        };
        b.hdrs[i].msg_hdr.msg_name = &mut b.addrs[i] as *mut libc::sockaddr_in as *mut libc::c_void;
        b.hdrs[i].msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        b.hdrs[i].msg_hdr.msg_iov = &mut b.iovs[i];
        b.hdrs[i].msg_hdr.msg_iovlen = 1;
        b.hdrs[i].msg_hdr.msg_control = std::ptr::null_mut();
        b.hdrs[i].msg_hdr.msg_controllen = 0;
        b.hdrs[i].msg_hdr.msg_flags = 0;
    }
    loop {
        // SAFETY: every pointer in hdrs[..n] points into buffers owned by `b`, which is
        // exclusively borrowed until the call returns; the fd is borrowed from a live socket.
        let r = unsafe {
            libc::sendmmsg(
                fd.as_raw_fd(),
                b.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Receive buffers for one recvmmsg, owned here for the same reason as SendBatch.
pub struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    lens: Vec<usize>,
}

impl RecvBatch {
    pub fn new(cap: usize, size: usize) -> Self {
        RecvBatch {
            bufs: (0..cap).map(|_| vec![0u8; size]).collect(),
            // SAFETY: plain C structs, zero is valid; filled before use.
            iovs: vec![unsafe { std::mem::zeroed() }; cap],
            // SAFETY: as above.
            hdrs: vec![unsafe { std::mem::zeroed() }; cap],
            lens: vec![0; cap],
        }
    }

    /// Datagram `i` of the last receive.
    pub fn msg(&self, i: usize) -> &[u8] {
        &self.bufs[i][..self.lens[i]]
    }
}

/// Receive up to a batch without blocking; returns how many datagrams arrived.
pub fn recv_batch(fd: BorrowedFd<'_>, b: &mut RecvBatch) -> std::io::Result<usize> {
    let cap = b.bufs.len();
    for i in 0..cap {
        b.iovs[i] = libc::iovec {
            iov_base: b.bufs[i].as_mut_ptr() as *mut libc::c_void,
            iov_len: b.bufs[i].len(),
        };
        b.hdrs[i].msg_hdr.msg_name = std::ptr::null_mut();
        b.hdrs[i].msg_hdr.msg_namelen = 0;
        b.hdrs[i].msg_hdr.msg_iov = &mut b.iovs[i];
        b.hdrs[i].msg_hdr.msg_iovlen = 1;
        b.hdrs[i].msg_hdr.msg_control = std::ptr::null_mut();
        b.hdrs[i].msg_hdr.msg_controllen = 0;
        b.hdrs[i].msg_len = 0;
    }
    // SAFETY: every pointer in hdrs points into buffers owned by `b`, exclusively borrowed
    // until the call returns; the kernel writes at most iov_len bytes into each.
    let r = unsafe {
        libc::recvmmsg(
            fd.as_raw_fd(),
            b.hdrs.as_mut_ptr(),
            cap as libc::c_uint,
            libc::MSG_DONTWAIT,
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

/// pollfds of the local sockets or connections, index for index.
pub struct PollSet(Vec<libc::pollfd>);

impl PollSet {
    /// Watch `fds` for input. The caller keeps the fds open for as long as the set is used.
    pub fn new(fds: impl IntoIterator<Item = RawFd>) -> Self {
        PollSet(
            fds.into_iter()
                .map(|fd| libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect(),
        )
    }

    /// Also wait for room to write on entry `i` (or stop waiting for it).
    pub fn want_out(&mut self, i: usize, on: bool) {
        self.0[i].events = if on {
            libc::POLLIN | libc::POLLOUT
        } else {
            libc::POLLIN
        };
    }

    /// Stop watching entry `i` (a closed connection): poll ignores negative fds.
    pub fn ignore(&mut self, i: usize) {
        self.0[i].fd = -1;
    }

    /// Whether entry `i` had anything to report in the last `wait` (input, room, error, hang-up).
    pub fn ready(&self, i: usize) -> bool {
        self.0[i].revents != 0
    }

    /// Wait until an entry is ready or `ms` pass (0: just look; a signal also ends the wait).
    /// Returns the number of ready entries (0 on timeout or error).
    pub fn wait(&mut self, ms: i32) -> usize {
        for p in &mut self.0 {
            p.revents = 0;
        }
        // SAFETY: the pollfd array is exclusively borrowed and its length passed; the fds belong
        // to sockets owned by the caller's loop, which outlive every call (see `new`).
        let r = unsafe { libc::poll(self.0.as_mut_ptr(), self.0.len() as libc::nfds_t, ms) };
        r.max(0) as usize
    }
}
