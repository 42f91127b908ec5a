//! The worker crate's system calls: every `unsafe` block of the crate is in this module.
//!
//! Owns fd passing (SCM_RIGHTS over the control socket), the batched datagram calls (recvmmsg /
//! sendmmsg), the epoll wrapper (EPOLLEXCLUSIVE), the parent-death signal and the adoption of the
//! inherited control fd. Every fd that enters the process goes straight into an `OwnedFd`, whose
//! Drop closes it; nothing here keeps an fd it was lent. The rest of the crate sees safe functions
//! and plain data.

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::socket::{
    self, sendmsg, sockopt, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType,
    SockaddrLike, SockaddrStorage,
};
use std::io::{self, IoSlice};
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;
use std::time::Duration;

/// The most fds the kernel passes in one message (`SCM_MAX_FD`).
pub const SCM_MAX_FD: usize = 253;

/// A connected pair of `SOCK_SEQPACKET` Unix sockets, both close-on-exec.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(socket::socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?)
}

/// Send one message carrying `fds` (duplicated into the receiver by the kernel; the caller keeps
/// its own). Never raises SIGPIPE: a closed peer is `BrokenPipe`.
///
/// With `dont_wait`, a full queue is `WouldBlock` at once, whatever the fd's mode.
pub fn send_with_fds(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
    dont_wait: bool,
) -> io::Result<()> {
    let flags = if dont_wait {
        MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT
    } else {
        MsgFlags::MSG_NOSIGNAL
    };
    let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let rights = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &rights };
    let iov = [IoSlice::new(bytes)];
    loop {
        match sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, flags, None) {
            Ok(n) if n == bytes.len() => return Ok(()),
            // A seqpacket message goes whole or not at all; anything else is a kernel surprise.
            Ok(n) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("short send: {n} of {} bytes", bytes.len()),
                ))
            }
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// What [`recv_with_fds`] got besides the fds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recv {
    /// The payload length; 0 means the peer closed (the senders of this crate never send an
    /// empty message).
    pub len: usize,
    /// The message carried more fds than the kernel could install here (this process is at its
    /// open-file limit): the ones that did not fit were closed by the kernel, the ones that did
    /// are appended as usual. The payload is whole.
    pub fds_lost: bool,
}

/// Receive one message into `buf`, appending the fds it carries (close-on-exec) to `fds`; with
/// `dont_wait`, `WouldBlock` instead of waiting when none is there (whatever the fd's mode).
///
/// A message whose payload did not fit in `buf` or that carried more than `max_fds` fds is an
/// error, and every fd it brought is closed. A message whose fds could not all be installed
/// because of the open-file limit is NOT an error: its payload is returned with
/// [`Recv::fds_lost`], so the caller can refuse what those fds were and go on.
pub fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    max_fds: usize,
    fds: &mut Vec<OwnedFd>,
    dont_wait: bool,
) -> io::Result<Recv> {
    let mut flags = libc::MSG_CMSG_CLOEXEC;
    if dont_wait {
        flags |= libc::MSG_DONTWAIT;
    }
    // Room for the most fds the kernel passes in one message (it merges every SCM_RIGHTS of a
    // message into one, of at most SCM_MAX_FD), so the control data is cut short only when the
    // fds cannot be installed (EMFILE). Raw recvmsg rather than nix's: nix refuses to walk the
    // control data of a message flagged MSG_CTRUNC, and the fds that were installed before the
    // limit was hit are in it and must be owned (and closed).
    let payload = SCM_MAX_FD * mem::size_of::<libc::c_int>();
    // SAFETY: CMSG_SPACE only computes a length from its argument.
    let space = unsafe { libc::CMSG_SPACE(payload as libc::c_uint) } as usize;
    // u64 words: the buffer must be aligned for `cmsghdr`.
    let mut control = vec![0u64; space.div_ceil(mem::size_of::<u64>())];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    let n = loop {
        // SAFETY: `msg` points at `iov` (over `buf`, which we borrow mutably for the call) and at
        // `control` (owned here, `space` bytes); both outlive the call. The kernel writes at most
        // the lengths given.
        let r = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, flags) };
        if r >= 0 {
            break r as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    // Take ownership of every fd the kernel installed before looking at anything else, so that
    // every error path below closes them.
    let mut received = Vec::new();
    // SAFETY: the kernel set `msg_controllen` to the bytes of control data it wrote into
    // `control`, which is alive and aligned; CMSG_FIRSTHDR / CMSG_NXTHDR stay within that length
    // and return null past it. Each SCM_RIGHTS entry holds `cmsg_len - CMSG_LEN(0)` bytes of fd
    // numbers that the kernel just installed in this process for this message: nothing else
    // refers to them, so each OwnedFd is its only owner.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let header = data as usize - cmsg as usize;
                let bytes = ((*cmsg).cmsg_len as usize).saturating_sub(header);
                for i in 0..bytes / mem::size_of::<libc::c_int>() {
                    let raw = ptr::read_unaligned(data.cast::<libc::c_int>().add(i));
                    received.push(OwnedFd::from_raw_fd(raw));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if received.len() > max_fds {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "message carried {} fds, more than {max_fds} (all closed)",
                received.len()
            ),
        ));
    }
    if msg.msg_flags & libc::MSG_TRUNC != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message larger than {} bytes (truncated)", buf.len()),
        ));
    }
    fds.append(&mut received);
    Ok(Recv {
        len: n,
        fds_lost: msg.msg_flags & libc::MSG_CTRUNC != 0,
    })
}

/// Wait until `fd` is readable (or its peer closed): false when `timeout` passed first.
pub fn wait_readable(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<bool> {
    let timeout = match timeout {
        None => PollTimeout::NONE,
        // Over ~24 days is as good as forever.
        Some(t) => PollTimeout::try_from(t).unwrap_or(PollTimeout::MAX),
    };
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    match nix::poll::poll(&mut fds, timeout) {
        Ok(n) => Ok(n > 0),
        Err(Errno::EINTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Set or clear `O_NONBLOCK` (a flag of the open file, so shared by every process holding it).
pub fn set_nonblocking(fd: BorrowedFd<'_>, nonblocking: bool) -> io::Result<()> {
    let flags = OFlag::from_bits_retain(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?);
    let flags = if nonblocking {
        flags | OFlag::O_NONBLOCK
    } else {
        flags - OFlag::O_NONBLOCK
    };
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags))?;
    Ok(())
}

/// The `SO_TYPE` of a socket (`ENOTSOCK` when it is not one).
pub fn socket_type(fd: BorrowedFd<'_>) -> io::Result<SockType> {
    Ok(socket::getsockopt(&fd, sockopt::SockType)?)
}

/// Take ownership of the control socket inherited across exec as fd number `raw`, and mark it
/// close-on-exec. Call once: a second call would make two owners.
pub fn adopt_inherited_fd(raw: RawFd) -> io::Result<OwnedFd> {
    // stdin/stdout/stderr belong to the logger and the runtime, never to the supervisor's protocol.
    if raw <= 2 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("fd {raw} is not an inherited control socket"),
        ));
    }
    // Fails with EBADF when nothing is open at `raw`, before anything owns it.
    fcntl(raw, FcntlArg::F_GETFD)?;
    // SAFETY: the supervisor opened `raw` for this process and passed its number on the command
    // line; it is open (checked above), nothing else in this process knows it, and the caller
    // adopts it once: the OwnedFd is its only owner and closes it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(fd)
}

/// Ask for SIGKILL when the parent dies (the parent *thread* that forked us, strictly), so a
/// worker never outlives its supervisor.
pub fn kill_me_with_parent() -> io::Result<()> {
    Ok(nix::sys::prctl::set_pdeathsig(
        nix::sys::signal::Signal::SIGKILL,
    )?)
}

/// The parent's pid.
pub fn parent_pid() -> i32 {
    nix::unistd::getppid().as_raw()
}

/// An epoll instance: the control socket is registered plainly, shared datagram sockets with
/// `EPOLLEXCLUSIVE` so that one datagram wakes one idle worker, not the pool.
#[derive(Debug)]
pub struct Poller {
    epoll: Epoll,
}

/// One readiness event: the token given when the fd was registered.
pub type Event = EpollEvent;

impl Poller {
    /// A new epoll instance (close-on-exec).
    pub fn new() -> io::Result<Poller> {
        Ok(Poller {
            epoll: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?,
        })
    }

    /// Watch `fd` for input, level-triggered, with `token`.
    pub fn add(&self, fd: BorrowedFd<'_>, token: u64) -> io::Result<()> {
        Ok(self
            .epoll
            .add(fd, EpollEvent::new(EpollFlags::EPOLLIN, token))?)
    }

    /// Watch a shared fd for input, level-triggered and exclusive: a wakeup goes to one of the
    /// epoll instances that have a thread waiting, not to all of them; one whose process is
    /// stopped or busy is not waiting and is passed over.
    pub fn add_exclusive(&self, fd: BorrowedFd<'_>, token: u64) -> io::Result<()> {
        let flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLEXCLUSIVE;
        Ok(self.epoll.add(fd, EpollEvent::new(flags, token))?)
    }

    /// Stop watching `fd`.
    pub fn delete(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        Ok(self.epoll.delete(fd)?)
    }

    /// Wait for events (forever when `timeout` is `None`); 0 events when interrupted by a signal.
    pub fn wait(&self, events: &mut [Event], timeout: Option<Duration>) -> io::Result<usize> {
        let timeout = match timeout {
            None => PollTimeout::NONE,
            Some(t) => PollTimeout::try_from(t).unwrap_or(PollTimeout::MAX),
        };
        match self.epoll.wait(events, timeout) {
            Ok(n) => Ok(n),
            Err(Errno::EINTR) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }
}

/// An empty event, to fill a buffer for [`Poller::wait`].
pub fn empty_event() -> Event {
    EpollEvent::empty()
}

/// The token of an event.
pub fn event_token(event: &Event) -> u64 {
    event.data()
}

/// Room for one datagram: the largest UDP payload over IPv6 without jumbograms is 65527 bytes.
pub const MAX_DATAGRAM: usize = 65_535;

/// One received datagram of a [`RecvBatch`].
#[derive(Debug, Clone, Copy)]
pub struct Datagram<'a> {
    /// The payload (cut at [`MAX_DATAGRAM`] when `truncated`).
    pub payload: &'a [u8],
    /// Where it came from (`None` for an address family other than IPv4 and IPv6).
    pub source: Option<SocketAddr>,
    /// The datagram was larger than the buffer.
    pub truncated: bool,
}

/// Preallocated buffers for `recvmmsg`: one batch of datagrams per call, no allocation after
/// [`RecvBatch::new`].
pub struct RecvBatch {
    data: Vec<u8>,
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    received: usize,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("capacity", &self.hdrs.len())
            .field("received", &self.received)
            .finish()
    }
}

impl RecvBatch {
    /// Room for `capacity` datagrams of up to [`MAX_DATAGRAM`] bytes (at least one).
    pub fn new(capacity: usize) -> RecvBatch {
        let capacity = capacity.max(1);
        RecvBatch {
            // Zeroed pages are only committed when a datagram is written into them.
            data: vec![0; capacity * MAX_DATAGRAM],
            // SAFETY: sockaddr_storage is plain data; all-zero is a valid value (family 0).
            addrs: vec![unsafe { mem::zeroed() }; capacity],
            iovs: vec![
                libc::iovec {
                    iov_base: ptr::null_mut(),
                    iov_len: 0
                };
                capacity
            ],
            // SAFETY: mmsghdr is plain data; all-zero is a valid value (null pointers, 0 lengths).
            hdrs: vec![unsafe { mem::zeroed() }; capacity],
            received: 0,
        }
    }

    /// How many datagrams one call can take.
    pub fn capacity(&self) -> usize {
        self.hdrs.len()
    }

    /// Take up to [`RecvBatch::capacity`] datagrams from `sock` without blocking: the count, or
    /// `WouldBlock` when none is waiting.
    pub fn recv(&mut self, sock: BorrowedFd<'_>) -> io::Result<usize> {
        self.received = 0;
        // Point every header at its own buffer and address slot, afresh at each call so that no
        // pointer outlives the borrow it came from.
        let chunks = self.data.chunks_exact_mut(MAX_DATAGRAM);
        for (((hdr, iov), addr), chunk) in self
            .hdrs
            .iter_mut()
            .zip(self.iovs.iter_mut())
            .zip(self.addrs.iter_mut())
            .zip(chunks)
        {
            *iov = libc::iovec {
                iov_base: chunk.as_mut_ptr().cast(),
                iov_len: chunk.len(),
            };
            hdr.msg_len = 0;
            hdr.msg_hdr.msg_name = (addr as *mut libc::sockaddr_storage).cast();
            hdr.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdr.msg_hdr.msg_iov = iov;
            hdr.msg_hdr.msg_iovlen = 1;
            hdr.msg_hdr.msg_control = ptr::null_mut();
            hdr.msg_hdr.msg_controllen = 0;
            hdr.msg_hdr.msg_flags = 0;
        }
        let n = loop {
            // SAFETY: each of the `hdrs.len()` headers points at its own iovec (covering its
            // own MAX_DATAGRAM bytes of `data`) and its own sockaddr_storage, all owned by
            // `self`, borrowed mutably for this call and not moved during it. No fd changes
            // hands: `sock` stays the caller's.
            let r = unsafe {
                libc::recvmmsg(
                    sock.as_raw_fd(),
                    self.hdrs.as_mut_ptr(),
                    self.hdrs.len() as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    ptr::null_mut(),
                )
            };
            if r >= 0 {
                break r as usize;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        };
        self.received = n.min(self.hdrs.len());
        Ok(self.received)
    }

    /// The `i`th datagram of the last [`RecvBatch::recv`].
    pub fn get(&self, i: usize) -> Option<Datagram<'_>> {
        if i >= self.received {
            return None;
        }
        let hdr = self.hdrs.get(i)?;
        let len = (hdr.msg_len as usize).min(MAX_DATAGRAM);
        let start = i * MAX_DATAGRAM;
        Some(Datagram {
            payload: self.data.get(start..start + len)?,
            source: socket_addr(self.addrs.get(i)?, hdr.msg_hdr.msg_namelen),
            truncated: hdr.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
        })
    }
}

/// A `sockaddr_storage` filled by the kernel, as a std address.
fn socket_addr(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET if len >= mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, and sockaddr_storage is
            // large and aligned enough for any address; we read a copy.
            let sin: libc::sockaddr_in =
                unsafe { ptr::read((storage as *const libc::sockaddr_storage).cast()) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6: libc::sockaddr_in6 =
                unsafe { ptr::read((storage as *const libc::sockaddr_storage).cast()) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Scratch space for `sendmmsg`, reused across batches (grows only to the largest batch).
#[derive(Default)]
pub struct SendBatch {
    addrs: Vec<SockaddrStorage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl std::fmt::Debug for SendBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendBatch")
            .field("capacity", &self.hdrs.len())
            .finish()
    }
}

impl SendBatch {
    /// Empty scratch space.
    pub fn new() -> SendBatch {
        SendBatch::default()
    }

    /// Send `payloads[i]` to `dests[i]` from `sock` in one `sendmmsg` without blocking. Returns
    /// how many the kernel took, from the first (at least one); an error is the first one's, the
    /// others were not tried.
    pub fn send(
        &mut self,
        sock: BorrowedFd<'_>,
        payloads: &[Vec<u8>],
        dests: &[SocketAddr],
    ) -> io::Result<usize> {
        let n = payloads.len().min(dests.len());
        if n == 0 {
            return Ok(0);
        }
        self.addrs.clear();
        self.addrs
            .extend(dests.iter().take(n).map(|d| SockaddrStorage::from(*d)));
        self.iovs.clear();
        self.iovs
            .extend(payloads.iter().take(n).map(|p| libc::iovec {
                // The kernel only reads from a send buffer.
                iov_base: p.as_ptr().cast_mut().cast(),
                iov_len: p.len(),
            }));
        // SAFETY: mmsghdr is plain data; all-zero is a valid value.
        self.hdrs.resize(n, unsafe { mem::zeroed() });
        for ((hdr, iov), addr) in self
            .hdrs
            .iter_mut()
            .zip(self.iovs.iter_mut())
            .zip(self.addrs.iter())
        {
            hdr.msg_len = 0;
            // The kernel only reads the destination of a send.
            hdr.msg_hdr.msg_name = addr.as_ptr().cast_mut().cast();
            hdr.msg_hdr.msg_namelen = addr.len();
            hdr.msg_hdr.msg_iov = iov;
            hdr.msg_hdr.msg_iovlen = 1;
            hdr.msg_hdr.msg_control = ptr::null_mut();
            hdr.msg_hdr.msg_controllen = 0;
            hdr.msg_hdr.msg_flags = 0;
        }
        loop {
            // SAFETY: the first `n` headers point at `n` iovecs over the caller's payloads
            // (borrowed for this call) and at `n` addresses in `self.addrs`; none moves during
            // the call and the kernel only reads them. `sock` stays the caller's.
            let r = unsafe {
                libc::sendmmsg(
                    sock.as_raw_fd(),
                    self.hdrs.as_mut_ptr(),
                    n as libc::c_uint,
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if r > 0 {
                return Ok((r as usize).min(n));
            }
            if r == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "sendmmsg sent nothing",
                ));
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::UdpSocket;
    use std::os::fd::AsFd;

    fn pipe() -> (std::fs::File, OwnedFd) {
        let (r, w) = nix::unistd::pipe().unwrap();
        (std::fs::File::from(r), w)
    }

    /// True when every write end of the pipe is closed (read gives EOF instead of EAGAIN).
    fn writers_gone(r: &mut std::fs::File) -> bool {
        set_nonblocking(r.as_fd(), true).unwrap();
        let mut b = [0u8; 1];
        matches!(r.read(&mut b), Ok(0))
    }

    #[test]
    fn too_many_fds_are_all_closed() {
        let (a, b) = seqpacket_pair().unwrap();
        let (mut r, w) = pipe();
        send_with_fds(a.as_fd(), b"x", &[w.as_fd(), w.as_fd(), w.as_fd()], false).unwrap();
        drop(w);
        assert!(!writers_gone(&mut r), "the message holds the write end");
        let mut fds = Vec::new();
        let mut buf = [0u8; 16];
        let err = recv_with_fds(b.as_fd(), &mut buf, 1, &mut fds, false).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(fds.is_empty());
        assert!(writers_gone(&mut r));
    }

    #[test]
    fn truncated_payload_is_an_error_and_closes_fds() {
        let (a, b) = seqpacket_pair().unwrap();
        let (mut r, w) = pipe();
        send_with_fds(a.as_fd(), b"0123456789", &[w.as_fd()], false).unwrap();
        drop(w);
        let mut fds = Vec::new();
        let mut buf = [0u8; 4];
        let err = recv_with_fds(b.as_fd(), &mut buf, 4, &mut fds, false).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        assert!(fds.is_empty());
        assert!(writers_gone(&mut r));
    }

    #[test]
    fn fds_arrive_close_on_exec() {
        let (a, b) = seqpacket_pair().unwrap();
        let (_r, w) = pipe();
        send_with_fds(a.as_fd(), b"hi", &[w.as_fd()], false).unwrap();
        let mut fds = Vec::new();
        let mut buf = [0u8; 16];
        assert_eq!(
            recv_with_fds(b.as_fd(), &mut buf, 4, &mut fds, false).unwrap(),
            Recv {
                len: 2,
                fds_lost: false
            }
        );
        assert_eq!(fds.len(), 1);
        let flags = fcntl(fds[0].as_raw_fd(), FcntlArg::F_GETFD).unwrap();
        assert!(FdFlag::from_bits_retain(flags).contains(FdFlag::FD_CLOEXEC));
        assert_ne!(fds[0].as_raw_fd(), w.as_raw_fd());
        drop(a);
        assert_eq!(
            recv_with_fds(b.as_fd(), &mut buf, 4, &mut fds, false)
                .unwrap()
                .len,
            0
        );
    }

    #[test]
    fn datagram_batches_round_trip() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = server.local_addr().unwrap();
        let mut batch = RecvBatch::new(4);
        let err = batch.recv(server.as_fd()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        for i in 0..6u8 {
            client.send_to(&[i; 3], to).unwrap();
        }
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while got.len() < 6 && std::time::Instant::now() < deadline {
            wait_readable(server.as_fd(), Some(Duration::from_secs(5))).unwrap();
            let n = match batch.recv(server.as_fd()) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => panic!("{e}"),
            };
            assert!(n <= 4);
            for i in 0..n {
                let d = batch.get(i).unwrap();
                assert_eq!(d.source, Some(client.local_addr().unwrap()));
                assert!(!d.truncated);
                got.push(d.payload.to_vec());
            }
            assert!(batch.get(n).is_none());
        }
        assert_eq!(got, (0..6u8).map(|i| vec![i; 3]).collect::<Vec<_>>());

        let mut send = SendBatch::new();
        let payloads = vec![b"one".to_vec(), b"two".to_vec()];
        let dests = vec![client.local_addr().unwrap(); 2];
        assert_eq!(send.send(server.as_fd(), &payloads, &dests).unwrap(), 2);
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 16];
        for want in [&b"one"[..], b"two"] {
            let (n, from) = client.recv_from(&mut buf).unwrap();
            assert_eq!((&buf[..n], from), (want, to));
        }
    }

    #[test]
    fn ipv6_sources() {
        let server = match UdpSocket::bind("[::1]:0") {
            Ok(server) => server,
            Err(e) => return crate::skip::skip("ipv6_sources", &format!("no IPv6 loopback: {e}")),
        };
        let client = UdpSocket::bind("[::1]:0").unwrap();
        client.send_to(b"x", server.local_addr().unwrap()).unwrap();
        wait_readable(server.as_fd(), Some(Duration::from_secs(10))).unwrap();
        let mut batch = RecvBatch::new(2);
        assert_eq!(batch.recv(server.as_fd()).unwrap(), 1);
        assert_eq!(
            batch.get(0).unwrap().source,
            Some(client.local_addr().unwrap())
        );
    }

    #[test]
    fn adopt_refuses_stdio_and_closed_fds() {
        assert!(adopt_inherited_fd(1).is_err());
        assert!(adopt_inherited_fd(-1).is_err());
        // A number far above anything this test process has open.
        assert!(adopt_inherited_fd(1_000_000).is_err());
    }

    #[test]
    fn socket_types() {
        let (a, _b) = seqpacket_pair().unwrap();
        assert_eq!(socket_type(a.as_fd()).unwrap(), SockType::SeqPacket);
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_eq!(socket_type(u.as_fd()).unwrap(), SockType::Datagram);
        let (_r, w) = pipe();
        assert!(socket_type(w.as_fd()).is_err());
    }
}
