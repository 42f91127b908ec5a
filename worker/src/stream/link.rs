//! The byte pipe of one connection: the TCP socket itself, or TLS over it.
//!
//! A [`Link`] is `Read + Write` for plaintext, never blocks, and says `WouldBlock` the way a
//! non-blocking socket does, so the SIP framing and tungstenite above it need not know whether
//! TLS is there. Records rustls has ready but the socket did not take yet stay in rustls and are
//! pushed by [`Link::flush_tls`] (also run by `flush`) when the socket is writable again.
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]

use mio::net::TcpStream;
use rustls::ServerConnection;
use std::io::{self, Read, Write};

/// A connection's transport below SIP or WebSocket framing.
#[derive(Debug)]
pub(crate) enum Link {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsLink>),
}

/// rustls's state machine and the socket under it.
#[derive(Debug)]
pub(crate) struct TlsLink {
    tls: ServerConnection,
    sock: TcpStream,
}

impl Link {
    /// TLS over `sock`.
    pub(crate) fn tls(tls: ServerConnection, sock: TcpStream) -> Link {
        Link::Tls(Box::new(TlsLink { tls, sock }))
    }

    /// The socket, to (de)register it.
    pub(crate) fn socket_mut(&mut self) -> &mut TcpStream {
        match self {
            Link::Plain(sock) => sock,
            Link::Tls(t) => &mut t.sock,
        }
    }

    /// True while a TLS handshake is in progress.
    pub(crate) fn handshaking(&self) -> bool {
        match self {
            Link::Plain(_) => false,
            Link::Tls(t) => t.tls.is_handshaking(),
        }
    }

    /// Push the TLS records rustls holds to the socket: true when none is left (always true for
    /// plain TCP, which buffers nothing here).
    pub(crate) fn flush_tls(&mut self) -> io::Result<bool> {
        match self {
            Link::Plain(_) => Ok(true),
            Link::Tls(t) => t.flush_tls(),
        }
    }

    /// Before dropping: a TLS close_notify, written if the socket takes it now (best effort: the
    /// connection is going away whatever the peer does). Nothing during a handshake: there is no
    /// session to close, and a client that never spoke gets nothing.
    pub(crate) fn say_goodbye(&mut self) {
        if let Link::Tls(t) = self {
            if t.tls.is_handshaking() {
                return;
            }
            t.tls.send_close_notify();
            let _ = t.flush_tls();
        }
    }
}

impl TlsLink {
    fn flush_tls(&mut self) -> io::Result<bool> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.sock) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Each turn either returns or takes bytes off the socket, so this ends when the socket
        // has nothing more (WouldBlock) or the peer closed.
        loop {
            match self.tls.reader().read(buf) {
                // Plaintext, or 0 after the peer's close_notify.
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // UnexpectedEof: TCP closed without close_notify.
                Err(e) => return Err(e),
            }
            match self.tls.read_tls(&mut self.sock) {
                // EOF: rustls notes it, and the reader says so on the next turn.
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if let Err(e) = self.tls.process_new_packets() {
                // The alert rustls queued, if the socket takes it.
                let _ = self.flush_tls();
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            // Handshake messages (or alerts) to send; the rest goes at the next writable event.
            self.flush_tls()?;
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        for _ in 0..2 {
            let n = self.tls.writer().write(buf)?;
            let flushed = self.flush_tls()?;
            if n > 0 {
                return Ok(n);
            }
            if !flushed {
                // rustls's buffer is full and the socket takes no more.
                break;
            }
            // The buffer was full but has just been written out: try once more.
        }
        Err(io::ErrorKind::WouldBlock.into())
    }
}

impl Read for Link {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Link::Plain(sock) => loop {
                match sock.read(buf) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    other => return other,
                }
            },
            Link::Tls(t) => t.read(buf),
        }
    }
}

impl Write for Link {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Link::Plain(sock) => loop {
                match sock.write(buf) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    other => return other,
                }
            },
            Link::Tls(t) => t.write(buf),
        }
    }

    /// `WouldBlock` while TLS records wait for the socket.
    fn flush(&mut self) -> io::Result<()> {
        if self.flush_tls()? {
            Ok(())
        } else {
            Err(io::ErrorKind::WouldBlock.into())
        }
    }
}
