//! The supervisor's system calls: binding sockets with a row's options, starting worker processes,
//! signals, resource limits and the systemd notification.
//!
//! This is the only module of the crate with `unsafe`; every block says who owns the fd it touches.
//! It never decides anything: callers pass in what to do and get typed errors back.

use crate::row::SocketDef;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrStorage};
use shm::Proto;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

/// A bind that failed, with the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// `socket(2)` failed.
    #[error("cannot create socket: {0}")]
    Socket(#[source] nix::Error),
    /// A socket option could not be set.
    #[error("cannot set {option}: {source}")]
    Option {
        /// The option, as an operator would name it.
        option: &'static str,
        /// The system error.
        #[source]
        source: nix::Error,
    },
    /// `bind(2)` failed (address not local, port taken, permission).
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The system error.
        #[source]
        source: nix::Error,
    },
    /// `listen(2)` failed.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The system error.
        #[source]
        source: nix::Error,
    },
}

fn setsockopt_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> nix::Result<()> {
    // SAFETY: `fd` is borrowed from an OwnedFd the caller keeps alive for the call; the option value
    // is a c_int on our stack whose size we pass; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(nix::Error::last())
    }
}

/// An option that can change on a running socket (applied at bind, and in place by a reload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveOption {
    /// IP_TOS / IPV6_TCLASS from the row's `tos`.
    Tos,
    /// IP_MTU_DISCOVER / IPV6_MTU_DISCOVER from the `frag` flag.
    Frag,
    /// IP_FREEBIND / IPV6_FREEBIND from the `anycast` flag.
    Anycast,
}

impl LiveOption {
    /// Every live option, in the order they are applied.
    pub const ALL: [LiveOption; 3] = [LiveOption::Tos, LiveOption::Frag, LiveOption::Anycast];

    /// The socket option's name, as an operator would look it up.
    pub fn name(self, ipv6: bool) -> &'static str {
        match (self, ipv6) {
            (LiveOption::Tos, false) => "IP_TOS",
            (LiveOption::Tos, true) => "IPV6_TCLASS",
            (LiveOption::Frag, false) => "IP_MTU_DISCOVER",
            (LiveOption::Frag, true) => "IPV6_MTU_DISCOVER",
            (LiveOption::Anycast, false) => "IP_FREEBIND",
            (LiveOption::Anycast, true) => "IPV6_FREEBIND",
        }
    }

    /// True when `a` and `b` differ in what this option sets.
    pub fn differs(self, a: &SocketDef, b: &SocketDef) -> bool {
        match self {
            LiveOption::Tos => a.tos != b.tos,
            LiveOption::Frag => a.flags.frag != b.flags.frag,
            LiveOption::Anycast => a.flags.anycast != b.flags.anycast,
        }
    }
}

/// Set one live option on a socket to what `def` asks.
pub fn set_live_option(
    fd: BorrowedFd<'_>,
    option: LiveOption,
    def: &SocketDef,
) -> Result<(), BindError> {
    let ipv6 = def.ip.is_ipv6();
    let level = if ipv6 {
        libc::IPPROTO_IPV6
    } else {
        libc::IPPROTO_IP
    };
    let (name, value) = match (option, ipv6) {
        (LiveOption::Tos, false) => (libc::IP_TOS, libc::c_int::from(def.tos)),
        (LiveOption::Tos, true) => (libc::IPV6_TCLASS, libc::c_int::from(def.tos)),
        (LiveOption::Frag, false) => (
            libc::IP_MTU_DISCOVER,
            if def.flags.frag {
                libc::IP_PMTUDISC_DONT
            } else {
                libc::IP_PMTUDISC_WANT
            },
        ),
        (LiveOption::Frag, true) => (
            libc::IPV6_MTU_DISCOVER,
            if def.flags.frag {
                libc::IPV6_PMTUDISC_DONT
            } else {
                libc::IPV6_PMTUDISC_WANT
            },
        ),
        (LiveOption::Anycast, false) => (libc::IP_FREEBIND, libc::c_int::from(def.flags.anycast)),
        (LiveOption::Anycast, true) => (libc::IPV6_FREEBIND, libc::c_int::from(def.flags.anycast)),
    };
    setsockopt_int(fd, level, name, value).map_err(|source| BindError::Option {
        option: option.name(ipv6),
        source,
    })
}

/// Receive buffer asked for each UDP socket (bytes).
const UDP_RCVBUF: libc::c_int = 4 * 1024 * 1024;

/// Create, configure and bind the socket a row asks for (listening for stream protos). The socket is
/// non-blocking and close-on-exec; the returned OwnedFd is the supervisor's copy.
pub fn bind(def: &SocketDef) -> Result<OwnedFd, BindError> {
    let addr = SocketAddr::new(def.ip, def.port);
    let ipv6 = addr.is_ipv6();
    let family = if ipv6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    let ty = if def.proto == Proto::Udp {
        SockType::Datagram
    } else {
        SockType::Stream
    };
    let fd = socket::socket(
        family,
        ty,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(BindError::Socket)?;
    let opt = |option: &'static str, level, name, value| {
        setsockopt_int(fd.as_fd(), level, name, value)
            .map_err(|source| BindError::Option { option, source })
    };
    if ipv6 {
        // `[::]` must not silently take the IPv4 port too: v4 rows are their own sockets.
        opt("IPV6_V6ONLY", libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
    }
    if def.proto != Proto::Udp {
        // A listener closed by a reload must be re-bindable at once despite TIME_WAIT connections.
        opt("SO_REUSEADDR", libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    }
    if def.flags.reuse_port {
        opt("SO_REUSEPORT", libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    }
    for option in LiveOption::ALL {
        // FREEBIND is off on a new socket: set only when asked.
        if option != LiveOption::Anycast || def.flags.anycast {
            set_live_option(fd.as_fd(), option, def)?;
        }
    }
    if def.proto == Proto::Udp {
        // One socket feeds every worker: a deeper queue absorbs bursts while they are busy. The
        // kernel caps the request at net.core.rmem_max; failing to enlarge it is not an error.
        let _ = setsockopt_int(fd.as_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, UDP_RCVBUF);
    }
    let sa = SockaddrStorage::from(addr);
    socket::bind(fd.as_raw_fd(), &sa).map_err(|source| BindError::Bind { addr, source })?;
    if def.proto != Proto::Udp {
        let backlog = socket::Backlog::new(1024).unwrap_or(socket::Backlog::MAXCONN);
        socket::listen(&fd, backlog).map_err(|source| BindError::Listen { addr, source })?;
    }
    Ok(fd)
}

/// The local address a socket is bound to.
pub fn local_addr(fd: BorrowedFd<'_>) -> io::Result<SocketAddr> {
    let sa: SockaddrStorage = socket::getsockname(fd.as_raw_fd())?;
    if let Some(v4) = sa.as_sockaddr_in() {
        return Ok(SocketAddr::V4((*v4).into()));
    }
    if let Some(v6) = sa.as_sockaddr_in6() {
        return Ok(SocketAddr::V6((*v6).into()));
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "not an inet socket",
    ))
}

/// The open-file limits (soft, hard) in force.
pub fn nofile_limits() -> nix::Result<(u64, u64)> {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
}

/// Raise the open-file soft limit to `needed` when it is lower and the hard limit allows; returns
/// the soft limit now in force (never lowered).
pub fn raise_nofile_limit(needed: u64) -> nix::Result<u64> {
    use nix::sys::resource::{setrlimit, Resource};
    let (soft, hard) = nofile_limits()?;
    if soft >= needed || hard < needed {
        return Ok(soft);
    }
    setrlimit(Resource::RLIMIT_NOFILE, needed, hard)?;
    Ok(needed)
}

/// Block the signals the supervisor handles and return a signalfd delivering them. Must be called
/// before any thread starts, so every thread inherits the mask (std's process spawning resets the
/// mask in children, so workers start with signals unblocked).
pub fn signal_fd() -> nix::Result<SignalFd> {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGCHLD,
    ] {
        set.add(s);
    }
    set.thread_block()?;
    SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
}

/// Clear or set close-on-exec on a fd the supervisor owns (used on the worker's end of its control
/// socket for exactly the duration of one spawn).
pub fn set_cloexec(fd: BorrowedFd<'_>, cloexec: bool) -> nix::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let flags = if cloexec {
        FdFlag::FD_CLOEXEC
    } else {
        FdFlag::empty()
    };
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(flags)).map(|_| ())
}

/// The systemd notification socket (`NOTIFY_SOCKET`), when the service manager gave one.
#[derive(Debug)]
pub struct Notifier {
    addr: std::os::unix::net::SocketAddr,
    sock: std::os::unix::net::UnixDatagram,
}

impl Notifier {
    /// The socket `NOTIFY_SOCKET` names (`@name`: an abstract socket), or `None` without one.
    pub fn from_env() -> io::Result<Option<Notifier>> {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return Ok(None);
        };
        let path = path.to_string_lossy().into_owned();
        let addr = match path.strip_prefix('@') {
            Some(name) => UnixAddr::from_abstract_name(name.as_bytes())?,
            None => UnixAddr::from_pathname(&path)?,
        };
        let sock = UnixDatagram::unbound()?;
        sock.set_nonblocking(true)?;
        Ok(Some(Notifier { addr, sock }))
    }

    /// Send one notification (`READY=1`, `STATUS=...`, newline-separated assignments). Never
    /// waits: a service manager that does not read loses it.
    pub fn send(&self, state: &str) -> io::Result<()> {
        self.sock.send_to_addr(state.as_bytes(), &self.addr)?;
        Ok(())
    }
}

/// The watchdog interval systemd asks for (`WATCHDOG_USEC`, for this pid when `WATCHDOG_PID` is
/// set), if any.
pub fn watchdog_interval() -> Option<std::time::Duration> {
    if let Some(pid) = std::env::var_os("WATCHDOG_PID") {
        if pid.to_str().and_then(|p| p.parse::<u32>().ok()) != Some(std::process::id()) {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| std::time::Duration::from_micros(usec))
}

/// CLOCK_MONOTONIC in microseconds (what `MONOTONIC_USEC=` carries).
pub fn monotonic_usec() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `t`, which lives on our stack for the call.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) } != 0 {
        return 0;
    }
    (t.tv_sec as u64) * 1_000_000 + (t.tv_nsec as u64) / 1_000
}

/// Read a small regular file without ever blocking: opened `O_NONBLOCK` (a FIFO at the path
/// opens at once instead of waiting for a writer), refused unless it is a regular file (a FIFO,
/// a device such as `/dev/zero`, a directory), refused when larger than `limit` bytes (read at
/// most `limit + 1`). Symlinks are followed (certificate directories use them).
pub fn read_small_file(path: &std::path::Path, limit: u64) -> io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a regular file ({})", file_kind(&meta)),
        ));
    }
    if meta.len() > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} bytes, more than the limit of {limit}", meta.len()),
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("more than the limit of {limit} bytes"),
        ));
    }
    Ok(bytes)
}

/// What kind of file `meta` describes, for an error.
pub fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_symlink() {
        "a symlink"
    } else if t.is_file() {
        "a regular file"
    } else {
        "not a regular file"
    }
}

/// The pid holding a `flock` on the file `meta` describes, as `/proc/locks` shows it.
pub fn flock_holder(meta: &std::fs::Metadata) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let dev = meta.dev();
    // /proc/locks writes the device as major:minor in hex and the inode in decimal.
    let want = format!(
        "{:02x}:{:02x}:{}",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev),
        meta.ino()
    );
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // "1: FLOCK  ADVISORY  WRITE 1234 00:1a:5678 0 EOF" (blocked waiters start with "->").
        if f.get(1) != Some(&"FLOCK") || f.get(5) != Some(&want.as_str()) {
            return None;
        }
        f.get(4)?.parse().ok()
    })
}

/// True when user `uid` is a member of group `gid` (its primary group, or listed in the group).
pub fn user_in_group(uid: u32, gid: u32) -> bool {
    use nix::unistd::{Gid, Group, Uid, User};
    let Ok(Some(user)) = User::from_uid(Uid::from_raw(uid)) else {
        return false;
    };
    if user.gid.as_raw() == gid {
        return true;
    }
    matches!(Group::from_gid(Gid::from_raw(gid)), Ok(Some(g)) if g.mem.contains(&user.name))
}

/// Send a signal to a process; ESRCH (already gone) is not an error.
pub fn kill(pid: u32, signal: Signal) {
    let Ok(raw) = i32::try_from(pid) else { return };
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), signal);
}

/// The raw number of a fd, for a command line.
pub fn raw_fd(fd: BorrowedFd<'_>) -> RawFd {
    fd.as_raw_fd()
}

/// Accept one connection on a non-blocking listener: `Ok(None)` when none is pending. The new
/// socket is non-blocking and close-on-exec; the OwnedFd is the supervisor's until handed over.
pub fn accept(listener: BorrowedFd<'_>) -> io::Result<Option<(OwnedFd, SocketAddr)>> {
    loop {
        match socket::accept4(
            listener.as_raw_fd(),
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        ) {
            Ok(raw) => {
                // SAFETY: accept4 just returned this fd and nothing else owns it; OwnedFd takes it
                // over and closes it on drop.
                let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
                let peer: SockaddrStorage = socket::getpeername(fd.as_raw_fd())?;
                let addr = peer
                    .as_sockaddr_in()
                    .map(|v4| SocketAddr::V4((*v4).into()))
                    .or_else(|| {
                        peer.as_sockaddr_in6()
                            .map(|v6| SocketAddr::V6((*v6).into()))
                    });
                match addr {
                    Some(a) => return Ok(Some((fd, a))),
                    None => continue, // not an inet peer: drop it
                }
            }
            Err(nix::Error::EAGAIN) => return Ok(None),
            Err(nix::Error::EINTR | nix::Error::ECONNABORTED) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Why the daemon could not switch to its configured user.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// No such user.
    #[error("general.user: no user named {0:?}")]
    NoUser(String),
    /// No such group.
    #[error("general.group: no group named {0:?}")]
    NoGroup(String),
    /// Switching needs root.
    #[error(
        "general.user = {user:?}: sipsockd runs as uid {uid}, not root, and cannot switch users"
    )]
    NotRoot {
        /// The configured user.
        user: String,
        /// Our uid.
        uid: u32,
    },
    /// A system call failed.
    #[error("cannot switch to user {user:?}: {step}: {source}")]
    Syscall {
        /// The configured user.
        user: String,
        /// Which step.
        step: &'static str,
        /// The system error.
        #[source]
        source: nix::Error,
    },
    /// Changing a capability set failed.
    #[error("cannot switch to user {user:?}: {step}: {reason}")]
    Capabilities {
        /// The configured user.
        user: String,
        /// Which step.
        step: &'static str,
        /// What the capability call said.
        reason: String,
    },
}

/// The uid and gid `user` / `group` name (the user's primary group when `group` is `None`).
pub fn lookup_user(
    user: &str,
    group: Option<&str>,
) -> Result<(nix::unistd::Uid, nix::unistd::Gid), PrivilegeError> {
    use nix::unistd::{Group, User};
    let u = User::from_name(user)
        .ok()
        .flatten()
        .ok_or_else(|| PrivilegeError::NoUser(user.to_string()))?;
    let gid = match group {
        Some(g) => {
            Group::from_name(g)
                .ok()
                .flatten()
                .ok_or_else(|| PrivilegeError::NoGroup(g.to_string()))?
                .gid
        }
        None => u.gid,
    };
    Ok((u.uid, gid))
}

/// Become `uid`/`gid`, keeping only CAP_NET_BIND_SERVICE (so a later reload can still bind ports
/// below 1024): it is the whole effective and permitted set, and the bounding set is cut down to
/// it, so nothing this process or its children exec can ever regain another capability. Worker
/// processes started afterwards run as `uid` with no capability at all (a non-root exec drops
/// them). Must run while the process has no other thread that binds (capability sets are per
/// thread).
pub fn drop_privileges(
    user: &str,
    uid: nix::unistd::Uid,
    gid: nix::unistd::Gid,
) -> Result<(), PrivilegeError> {
    use caps::{CapSet, Capability};
    use nix::unistd::{geteuid, setgid, setgroups, setuid};
    let me = geteuid();
    if me == uid {
        return Ok(());
    }
    if !me.is_root() {
        return Err(PrivilegeError::NotRoot {
            user: user.to_string(),
            uid: me.as_raw(),
        });
    }
    let fail = |step: &'static str| {
        move |source| PrivilegeError::Syscall {
            user: user.to_string(),
            step,
            source,
        }
    };
    let caps_fail = |step: &'static str| {
        move |source: caps::errors::CapsError| PrivilegeError::Capabilities {
            user: user.to_string(),
            step,
            reason: source.to_string(),
        }
    };
    let kept = Capability::CAP_NET_BIND_SERVICE;
    // The bounding set first: dropping from it needs CAP_SETPCAP, which root still has.
    for cap in caps::read(None, CapSet::Bounding).map_err(caps_fail("read the bounding set"))? {
        if cap != kept {
            caps::drop(None, CapSet::Bounding, cap).map_err(caps_fail("PR_CAPBSET_DROP"))?;
        }
    }
    nix::sys::prctl::set_keepcaps(true).map_err(fail("PR_SET_KEEPCAPS"))?;
    setgroups(&[gid]).map_err(fail("setgroups"))?;
    setgid(gid).map_err(fail("setgid"))?;
    setuid(uid).map_err(fail("setuid"))?;
    let only: caps::CapsHashSet = [kept].into_iter().collect();
    caps::set(None, CapSet::Permitted, &only).map_err(caps_fail("capset permitted"))?;
    caps::set(None, CapSet::Effective, &only).map_err(caps_fail("capset effective"))?;
    caps::clear(None, CapSet::Inheritable).map_err(caps_fail("capset inheritable"))?;
    if caps::runtime::ambient_set_supported().is_ok() {
        caps::clear(None, CapSet::Ambient).map_err(caps_fail("clear the ambient set"))?;
    }
    nix::sys::prctl::set_keepcaps(false).map_err(fail("PR_SET_KEEPCAPS off"))?;
    Ok(())
}

/// Give a file the daemon creates (FIFO, shm) to the user it will run as.
pub fn chown(
    path: &std::path::Path,
    uid: nix::unistd::Uid,
    gid: nix::unistd::Gid,
) -> nix::Result<()> {
    nix::unistd::chown(path, Some(uid), Some(gid))
}
