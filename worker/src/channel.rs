//! The control channel between the supervisor and one worker, used by both sides.
//!
//! A `SOCK_SEQPACKET` Unix socket: message boundaries are kept, fds travel with the message that
//! names them (SCM_RIGHTS), and the peer's close is seen as end-of-file. One channel per worker,
//! never one shared by the pool. This module moves bytes and fds; [`crate::ipc`] says what they
//! mean, and the typed helpers here check that each message carries the fds it should.
//!
//! The kernel queues few messages per socket (`net.unix.max_dgram_qlen`, 10 by default): a
//! blocking `send` to a worker that does not read (stopped, stuck) waits. The supervisor should
//! use [`Channel::set_nonblocking`] and bounded waits.

use crate::ipc::{DecodeError, FromWorker, ToWorker, MAX_FDS_PER_MESSAGE, MAX_MESSAGE_SIZE};
use crate::sys;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

/// A message to a worker as it arrived.
#[derive(Debug)]
pub struct Inbound {
    /// The message.
    pub msg: ToWorker,
    /// The fds that came with it, in order.
    pub fds: Vec<OwnedFd>,
    /// Some fds it carried could not be installed (the open-file limit): the kernel closed them.
    pub fds_lost: bool,
}

/// One end of a control channel.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
}

/// A control message that could not be received.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The socket failed (or the message was truncated).
    #[error("control socket: {0}")]
    Io(#[from] io::Error),
    /// The bytes are not a message of the protocol.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A message carried fds it should not have (they were closed).
    #[error("a {what} message carried {got} fds, expected {want}")]
    FdCount {
        /// The message type.
        what: &'static str,
        /// Fds received.
        got: usize,
        /// Fds the message type carries.
        want: usize,
    },
}

impl Channel {
    /// A connected pair (both ends close-on-exec: the supervisor clears the flag on the child's
    /// end only, in the child, before exec).
    pub fn pair() -> io::Result<(Channel, Channel)> {
        let (a, b) = sys::seqpacket_pair()?;
        Ok((Channel { fd: a }, Channel { fd: b }))
    }

    /// Wrap an fd that is already a connected `SOCK_SEQPACKET` socket.
    pub fn from_fd(fd: OwnedFd) -> Channel {
        Channel { fd }
    }

    /// Give the fd back (to pass it to a child, say).
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// Send one message with `fds` (the caller keeps its own copies). The message must be
    /// 1..=[`MAX_MESSAGE_SIZE`] bytes with at most [`MAX_FDS_PER_MESSAGE`] fds. In non-blocking
    /// mode a full queue is `WouldBlock`; a closed peer is `BrokenPipe` (never SIGPIPE).
    pub fn send(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        self.send_inner(bytes, fds, false)
    }

    /// As [`Channel::send`], but `WouldBlock` at once when the peer's queue is full, whether the
    /// channel is in non-blocking mode or not: for hand-offs that must not wait on a stalled peer.
    pub fn try_send(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        self.send_inner(bytes, fds, true)
    }

    fn send_inner(&self, bytes: &[u8], fds: &[BorrowedFd<'_>], dont_wait: bool) -> io::Result<()> {
        if bytes.is_empty() || bytes.len() > MAX_MESSAGE_SIZE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "control message of {} bytes (1 to {MAX_MESSAGE_SIZE})",
                    bytes.len()
                ),
            ));
        }
        if fds.len() > MAX_FDS_PER_MESSAGE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} fds in one control message (at most {MAX_FDS_PER_MESSAGE})",
                    fds.len()
                ),
            ));
        }
        sys::send_with_fds(self.fd.as_fd(), bytes, fds, dont_wait)
    }

    /// Receive one message into `buf` (resized to the message): its fds, or `None` when the peer
    /// closed. A message over [`MAX_MESSAGE_SIZE`] bytes or with more fds than one message can
    /// carry is an error, with every fd it brought closed. In non-blocking mode, no message is
    /// `WouldBlock`.
    pub fn recv(&self, buf: &mut Vec<u8>) -> io::Result<Option<Vec<OwnedFd>>> {
        self.recv_inner(buf, false)
    }

    /// As [`Channel::recv`], but `WouldBlock` at once when no message is there, whether the
    /// channel is in non-blocking mode or not.
    pub fn try_recv(&self, buf: &mut Vec<u8>) -> io::Result<Option<Vec<OwnedFd>>> {
        self.recv_inner(buf, true)
    }

    fn recv_inner(&self, buf: &mut Vec<u8>, dont_wait: bool) -> io::Result<Option<Vec<OwnedFd>>> {
        Ok(self.recv_parts(buf, dont_wait)?.map(|(fds, _)| fds))
    }

    /// One message: its fds, and whether some of them were lost to the open-file limit.
    fn recv_parts(
        &self,
        buf: &mut Vec<u8>,
        dont_wait: bool,
    ) -> io::Result<Option<(Vec<OwnedFd>, bool)>> {
        buf.resize(MAX_MESSAGE_SIZE, 0);
        let mut fds = Vec::new();
        let received =
            sys::recv_with_fds(self.fd.as_fd(), buf, sys::SCM_MAX_FD, &mut fds, dont_wait);
        let got = match received {
            Ok(got) => got,
            Err(e) => {
                buf.clear();
                return Err(e);
            }
        };
        buf.truncate(got.len);
        if got.len == 0 {
            if fds.is_empty() && !got.fds_lost {
                return Ok(None);
            }
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "empty control message with fds",
            ));
        }
        Ok(Some((fds, got.fds_lost)))
    }

    /// Switch non-blocking mode on or off.
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        sys::set_nonblocking(self.fd.as_fd(), nonblocking)
    }

    /// Wait until a message (or end-of-file) is there: false when `timeout` passed first.
    pub fn wait_readable(&self, timeout: Option<Duration>) -> io::Result<bool> {
        sys::wait_readable(self.fd.as_fd(), timeout)
    }

    /// Supervisor side: send a message to a worker with the fds it carries (`Setup`: the shm
    /// file; `Add`: one per socket, in order; nothing for the others).
    pub fn send_to_worker(&self, msg: &ToWorker, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let want = fds_carried(msg);
        if fds.len() != want {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a {} message carries {want} fds, not {}",
                    message_name(msg),
                    fds.len()
                ),
            ));
        }
        self.send(&msg.encode(), fds)
    }

    /// Worker side: the next message and the fds that came with it (not checked against the
    /// message: the worker answers a wrong count on an `Add` with `Refused`, see
    /// [`fds_carried`]). `None` when the supervisor closed its end.
    ///
    /// A message whose fds could not all be installed because this process is at its open-file
    /// limit still arrives, whole, with [`Inbound::fds_lost`] set and the fds that did fit: the
    /// kernel closed the others (for a `Conn`, that closes the connection). Hitting the limit is
    /// the worker's to refuse, never a broken channel.
    pub fn recv_to_worker(&self, buf: &mut Vec<u8>) -> Result<Option<Inbound>, ChannelError> {
        let Some((fds, fds_lost)) = self.recv_parts(buf, false)? else {
            return Ok(None);
        };
        // On a decode error the fds are dropped (closed) here.
        let msg = ToWorker::decode(buf)?;
        Ok(Some(Inbound { msg, fds, fds_lost }))
    }

    /// Worker side: send a message to the supervisor.
    pub fn send_from_worker(&self, msg: &FromWorker) -> io::Result<()> {
        self.send(&msg.encode(), &[])
    }

    /// Supervisor side: the next message of a worker, `None` when the worker's end is closed
    /// (it exited). A worker never sends fds: any that come are closed and it is an error.
    pub fn recv_from_worker(&self, buf: &mut Vec<u8>) -> Result<Option<FromWorker>, ChannelError> {
        let Some(fds) = self.recv(buf)? else {
            return Ok(None);
        };
        if !fds.is_empty() {
            return Err(ChannelError::FdCount {
                what: "worker",
                got: fds.len(),
                want: 0,
            });
        }
        Ok(Some(FromWorker::decode(buf)?))
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// How many fds a message to a worker carries.
pub fn fds_carried(msg: &ToWorker) -> usize {
    match msg {
        ToWorker::Setup { .. } | ToWorker::Conn { .. } => 1,
        ToWorker::Add { sockets, .. } => sockets.len(),
        ToWorker::Describe { .. }
        | ToWorker::Update { .. }
        | ToWorker::Remove { .. }
        | ToWorker::Commit { .. }
        | ToWorker::Shutdown => 0,
    }
}

/// The wire name of a message to a worker, for logs and errors.
pub fn message_name(msg: &ToWorker) -> &'static str {
    match msg {
        ToWorker::Setup { .. } => "setup",
        ToWorker::Add { .. } => "add",
        ToWorker::Update { .. } => "update",
        ToWorker::Describe { .. } => "describe",
        ToWorker::Conn { .. } => "conn",
        ToWorker::Remove { .. } => "remove",
        ToWorker::Commit { .. } => "commit",
        ToWorker::Shutdown => "shutdown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipc::SocketInfo;
    use shm::Proto;
    use std::net::UdpSocket;

    fn info(slot: u32, local: std::net::SocketAddr) -> SocketInfo {
        SocketInfo {
            slot,
            proto: Proto::Udp,
            local,
            contact: local.to_string(),
            tag: None,
            tls: None,
        }
    }

    #[test]
    fn udp_sockets_work_on_the_other_side() {
        let (sup, wrk) = Channel::pair().unwrap();
        let socks: Vec<UdpSocket> = (0..3)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let msg = ToWorker::Add {
            generation: 1,
            sockets: socks
                .iter()
                .enumerate()
                .map(|(i, s)| info(i as u32, s.local_addr().unwrap()))
                .collect(),
        };
        let fds: Vec<_> = socks.iter().map(|s| s.as_fd()).collect();
        sup.send_to_worker(&msg, &fds).unwrap();
        let mut buf = Vec::new();
        let Inbound {
            msg: got,
            fds,
            fds_lost,
        } = wrk.recv_to_worker(&mut buf).unwrap().unwrap();
        assert_eq!(got, msg);
        assert!(!fds_lost);
        assert_eq!(fds.len(), 3);
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        for (fd, original) in fds.into_iter().zip(&socks) {
            let received = UdpSocket::from(fd);
            // Same socket: same local address, and what is sent to it is read from the copy.
            assert_eq!(
                received.local_addr().unwrap(),
                original.local_addr().unwrap()
            );
            client
                .send_to(b"ping", original.local_addr().unwrap())
                .unwrap();
            received
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut b = [0u8; 8];
            let (n, from) = received.recv_from(&mut b).unwrap();
            assert_eq!(
                (&b[..n], from),
                (&b"ping"[..], client.local_addr().unwrap())
            );
            received.send_to(b"pong", from).unwrap();
            let (n, from) = client.recv_from(&mut b).unwrap();
            assert_eq!(
                (&b[..n], from),
                (&b"pong"[..], original.local_addr().unwrap())
            );
        }
    }

    #[test]
    fn fd_count_mismatch_is_detected() {
        let (sup, wrk) = Channel::pair().unwrap();
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let two = ToWorker::Add {
            generation: 1,
            sockets: vec![
                info(0, s.local_addr().unwrap()),
                info(1, s.local_addr().unwrap()),
            ],
        };
        // The typed sender refuses to send it...
        let err = sup.send_to_worker(&two, &[s.as_fd()]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(sup
            .send_to_worker(&ToWorker::Commit { generation: 1 }, &[s.as_fd()])
            .is_err());
        // ...and a raw one that does is seen by the receiver.
        sup.send(&two.encode(), &[s.as_fd()]).unwrap();
        let mut buf = Vec::new();
        let got = wrk.recv_to_worker(&mut buf).unwrap().unwrap();
        assert_ne!(fds_carried(&got.msg), got.fds.len());
        // A worker never sends fds.
        wrk.send(
            &FromWorker::Hello { rank: 0, pid: 1 }.encode(),
            &[s.as_fd()],
        )
        .unwrap();
        assert!(matches!(
            sup.recv_from_worker(&mut buf),
            Err(ChannelError::FdCount { got: 1, .. })
        ));
    }

    #[test]
    fn limits_eof_and_nonblocking() {
        let (a, b) = Channel::pair().unwrap();
        assert!(a.send(b"", &[]).is_err());
        assert!(a.send(&vec![b'x'; MAX_MESSAGE_SIZE + 1], &[]).is_err());
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let many = vec![s.as_fd(); MAX_FDS_PER_MESSAGE + 1];
        assert!(a.send(b"x", &many).is_err());
        let max = vec![s.as_fd(); MAX_FDS_PER_MESSAGE];
        a.send(&vec![b'y'; MAX_MESSAGE_SIZE], &max).unwrap();
        let mut buf = Vec::new();
        assert_eq!(
            b.recv(&mut buf).unwrap().unwrap().len(),
            MAX_FDS_PER_MESSAGE
        );
        assert_eq!(buf.len(), MAX_MESSAGE_SIZE);

        assert_eq!(
            b.try_recv(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        b.set_nonblocking(true).unwrap();
        assert_eq!(
            b.recv(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        assert!(!b.wait_readable(Some(Duration::from_millis(1))).unwrap());
        a.send_from_worker(&FromWorker::Ack {
            generation: 2,
            serving: 0,
        })
        .unwrap();
        assert!(b.wait_readable(Some(Duration::from_secs(10))).unwrap());
        assert_eq!(
            b.recv_from_worker(&mut buf).unwrap(),
            Some(FromWorker::Ack {
                generation: 2,
                serving: 0
            })
        );
        a.send(b"z", &[]).unwrap();
        b.set_nonblocking(false).unwrap();
        assert_eq!(b.try_recv(&mut buf).unwrap().unwrap().len(), 0);
        assert_eq!(buf, b"z");
        drop(a);
        assert!(b.try_recv(&mut buf).unwrap().is_none());
        assert!(b.recv_to_worker(&mut buf).unwrap().is_none());
        assert_eq!(
            b.send(b"x", &[]).unwrap_err().kind(),
            io::ErrorKind::BrokenPipe
        );
    }

    #[test]
    fn garbage_is_a_decode_error() {
        let (a, b) = Channel::pair().unwrap();
        a.send(b"{not json", &[]).unwrap();
        let mut buf = Vec::new();
        assert!(matches!(
            b.recv_to_worker(&mut buf),
            Err(ChannelError::Decode(_))
        ));
    }
}
