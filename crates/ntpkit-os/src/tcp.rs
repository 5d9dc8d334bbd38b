//! Non-blocking TCP sockets for an event loop: a listener and its connections.
//!
//! Made with plain `socket`, `accept`, `recv` and `send` (flags set by `fcntl`, see
//! [`crate::fd`]), so that the same calls work under a preloaded network simulator.

use crate::udp::new_socket;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io;
use std::mem::{size_of, MaybeUninit};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

/// A listening socket (IPv6 listeners are v6-only).
#[derive(Debug)]
pub struct TcpListener {
    sock: Socket,
    local: SocketAddr,
}

impl TcpListener {
    /// Binds `addr` (port 0: the kernel picks one) and listens, non-blocking.
    pub fn bind(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
        let sock = new_socket(Domain::for_address(addr), Type::STREAM, Protocol::TCP)?;
        crate::fd::set_nonblocking(sock.as_raw_fd(), true)?;
        if addr.is_ipv6() {
            sock.set_only_v6(true)?;
        }
        sock.set_reuse_address(true)?;
        sock.bind(&SockAddr::from(addr))?;
        sock.listen(backlog)?;
        let local = sock
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an IP socket"))?;
        Ok(TcpListener { sock, local })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Accepts one waiting connection (`WouldBlock` if none), non-blocking, with `TCP_NODELAY`.
    pub fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let mut storage = MaybeUninit::<libc::sockaddr_storage>::zeroed();
        let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: `storage` is writable for `len` bytes. Plain accept(2), not accept4: flags go
        // through fcntl.
        let fd =
            unsafe { libc::accept(self.sock.as_raw_fd(), storage.as_mut_ptr().cast(), &mut len) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: accept returned a new descriptor that nobody else owns.
        let sock = unsafe { Socket::from_raw_fd(fd) };
        crate::fd::set_nonblocking_cloexec(fd)?;
        let _ = sock.set_nodelay(true);
        // SAFETY: the kernel filled `len` bytes of the zeroed storage.
        let storage = unsafe { storage.assume_init() };
        let peer = crate::udp::raw_to_socket_addr(&storage, len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unknown address family"))?;
        Ok((TcpStream { sock }, peer))
    }
}

impl AsRawFd for TcpListener {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

/// An accepted, non-blocking connection.
#[derive(Debug)]
pub struct TcpStream {
    sock: Socket,
}

impl TcpStream {
    /// Reads what is available into `buf`: `Ok(0)` at the end of the stream, `WouldBlock` if
    /// nothing is.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is writable for its length.
        let n = unsafe {
            libc::recv(
                self.sock.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Writes what the socket takes of `data` now (`WouldBlock` if nothing); never raises
    /// SIGPIPE.
    pub fn send(&self, data: &[u8]) -> io::Result<usize> {
        // SAFETY: `data` is readable for its length.
        let n = unsafe {
            libc::send(
                self.sock.as_raw_fd(),
                data.as_ptr().cast(),
                data.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

impl AsRawFd for TcpStream {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn accept_echo_and_end_of_stream() {
        let l = TcpListener::bind("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        assert_eq!(
            l.accept().unwrap_err().kind(),
            io::ErrorKind::WouldBlock,
            "nothing waiting"
        );
        let mut c = std::net::TcpStream::connect(l.local_addr()).unwrap();
        let (s, peer) = loop {
            match l.accept() {
                Ok(x) => break x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(peer, c.local_addr().unwrap());
        let mut buf = [0u8; 16];
        assert_eq!(
            s.recv(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        c.write_all(b"ping").unwrap();
        let n = loop {
            match s.recv(&mut buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(&buf[..n], b"ping");
        assert_eq!(s.send(b"pong").unwrap(), 4);
        let mut got = [0u8; 4];
        c.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"pong");
        drop(c);
        let end = loop {
            match s.recv(&mut buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(end, 0);
    }
}
