//! UDP sockets with kernel receive timestamps and batched receive/send.
//!
//! A server thread calls [`UdpSocket::recv_batch`] (one `recvmmsg`: blocks for the first
//! datagram, then takes whatever else is queued), answers into a [`SendBatch`] and sends it with
//! [`UdpSocket::send_batch`] (one `sendmmsg`). Both batches own all their buffers, allocated once:
//! the loop allocates nothing per datagram. Each received datagram carries the time the kernel
//! stamped it on arrival (`SO_TIMESTAMPNS`), or, when the kernel attached none, one
//! `CLOCK_REALTIME` reading taken right after the batch returned.
//!
//! A client uses the single-datagram helpers [`UdpSocket::send_to`] and
//! [`UdpSocket::recv_from`], which also report the kernel receive timestamp, and
//! [`UdpSocket::take_transmit_timestamp`] for when the kernel sent its datagram.
//!
//! A load generator [`connect`](UdpSocket::connect)s its sockets to one server, queues requests
//! without a destination ([`SendBatch::commit_connected`]) and sends them with
//! [`UdpSocket::send_batch_in_order`], which says exactly which of them went out.

use crate::clock::realtime_nanos;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io;
use std::mem::{size_of, MaybeUninit};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::time::Duration;

/// Room for one `SCM_TIMESTAMPNS` control message (CMSG_SPACE(16) = 32 on 64-bit Linux) and
/// anything else the kernel might add, such as an `SCM_TIMESTAMPING` one (64) on a socket with
/// transmit timestamps; u64 elements keep the cmsghdr alignment.
type ControlBuf = [u64; 16];

/// Room for what one message of the error queue carries: an `SCM_TIMESTAMPING` control message,
/// the extended error that says what it stamps, and a packet-info message.
type ErrQueueControlBuf = [u64; 32];

/// How to set up a socket; the defaults suit a client.
#[derive(Clone, Debug, Default)]
pub struct UdpSocketOptions {
    /// Ask the kernel for receive timestamps (`SO_TIMESTAMPNS`).
    pub timestamps: bool,
    /// Ask the kernel, best effort, for software transmit timestamps (`SO_TIMESTAMPING`), read
    /// back with [`UdpSocket::take_transmit_timestamp`]; a kernel that refuses leaves the
    /// socket without them.
    pub transmit_timestamps: bool,
    /// `SO_RCVBUF` in bytes (the kernel doubles it and caps it at `net.core.rmem_max`).
    pub recv_buffer: Option<usize>,
    /// `SO_SNDBUF` in bytes.
    pub send_buffer: Option<usize>,
    /// `SO_RCVTIMEO`: how long a receive blocks before failing with `WouldBlock`.
    pub read_timeout: Option<Duration>,
    /// `SO_REUSEPORT`, so several sockets (threads) can share one address.
    pub reuse_port: bool,
    /// Receives fail with `WouldBlock` at once when nothing is queued (for event loops).
    pub nonblocking: bool,
}

/// A UDP socket, IPv4 or IPv6. An IPv6 socket is always `IPV6_V6ONLY`: listen on `0.0.0.0` and
/// `[::]` separately.
#[derive(Debug)]
pub struct UdpSocket {
    sock: Socket,
    local: SocketAddr,
}

impl UdpSocket {
    /// Creates a socket with `opts` and binds it to `addr` (port 0: the kernel picks one).
    pub fn bind(addr: SocketAddr, opts: &UdpSocketOptions) -> io::Result<UdpSocket> {
        let sock = new_socket(Domain::for_address(addr), Type::DGRAM, Protocol::UDP)?;
        crate::fd::set_nonblocking(sock.as_raw_fd(), opts.nonblocking)?;
        if addr.is_ipv6() {
            sock.set_only_v6(true)?;
        }
        if opts.reuse_port {
            sock.set_reuse_port(true)?;
        }
        if let Some(n) = opts.recv_buffer {
            // Best effort: a smaller buffer than asked for is not an error.
            let _ = sock.set_recv_buffer_size(n);
        }
        if let Some(n) = opts.send_buffer {
            let _ = sock.set_send_buffer_size(n);
        }
        if opts.read_timeout.is_some() {
            sock.set_read_timeout(opts.read_timeout)?;
        }
        if opts.timestamps {
            set_timestampns(&sock)?;
        }
        if opts.transmit_timestamps {
            let _ = set_transmit_timestamping(&sock);
        }
        sock.bind(&SockAddr::from(addr))?;
        let local = sock
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an IP socket"))?;
        Ok(UdpSocket { sock, local })
    }

    /// The bound address (with the kernel's port if 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Connects the socket to `peer`: datagrams queued without a destination go there, and the
    /// kernel delivers only datagrams from `peer`. A socket bound to an unspecified address gets
    /// the local address of the route to `peer` (see [`local_addr`](Self::local_addr)).
    pub fn connect(&mut self, peer: SocketAddr) -> io::Result<()> {
        self.sock.connect(&SockAddr::from(peer))?;
        if let Some(local) = self.sock.local_addr()?.as_socket() {
            self.local = local;
        }
        Ok(())
    }

    /// The address the socket is connected to, if it is.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.sock.peer_addr().ok().and_then(|a| a.as_socket())
    }

    /// Sets `SO_RCVTIMEO`; `None` blocks forever.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.sock.set_read_timeout(timeout)
    }

    /// Sends one datagram to `dest`.
    pub fn send_to(&self, data: &[u8], dest: SocketAddr) -> io::Result<usize> {
        self.sock.send_to(data, &SockAddr::from(dest))
    }

    /// Sends one datagram to `dest` and returns when it left (Unix ns): the kernel's transmit
    /// timestamp where the socket has them ([`UdpSocketOptions::transmit_timestamps`]) and it
    /// is there when the call returns, else the clock read right before the call. A timestamp
    /// that comes later stays in the error queue (see
    /// [`take_transmit_timestamp`](Self::take_transmit_timestamp)).
    pub fn send_to_timed(&self, data: &[u8], dest: SocketAddr) -> io::Result<i64> {
        let before = realtime_nanos();
        self.send_to(data, dest)?;
        // The kernel stamps the datagram later than any reading before the send; an earlier
        // datagram's stamp that came late is earlier than `before`.
        Ok(self
            .take_transmit_timestamp()
            .map_or(before, |kernel| kernel.max(before)))
    }

    /// Empties the socket's error queue and returns the latest software transmit timestamp in
    /// it (Unix ns), if any: when the kernel handed a datagram sent from this socket to the
    /// network device, later than any clock reading taken before the send. Nothing without
    /// [`UdpSocketOptions::transmit_timestamps`]. Also call it when the socket polls readable
    /// without a datagram: a timestamp left in the queue keeps it reporting an error.
    pub fn take_transmit_timestamp(&self) -> Option<i64> {
        let mut latest = None;
        // Each message is one timestamp; a bounded number per call (there is one per send).
        for _ in 0..16 {
            let mut data = [0u8; 256];
            let mut ctrl: ErrQueueControlBuf = [0; 32];
            let mut iov = libc::iovec {
                iov_base: data.as_mut_ptr().cast(),
                iov_len: data.len(),
            };
            // SAFETY: msghdr is plain data; all-zero is valid.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = ctrl.as_mut_ptr().cast();
            msg.msg_controllen = size_of::<ErrQueueControlBuf>() as _;
            // SAFETY: every pointer in `msg` refers to a live local buffer of the stated length.
            let n = unsafe {
                libc::recvmsg(
                    self.sock.as_raw_fd(),
                    &mut msg,
                    libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                break;
            }
            // SAFETY: `msg` describes `ctrl` as filled by the kernel.
            if let Some(t) = unsafe { tx_timestamp(&msg) } {
                latest = Some(latest.map_or(t, |l: i64| l.max(t)));
            }
        }
        latest
    }

    /// Receives one datagram into `buf`: its length, source and receive time (Unix ns; kernel
    /// timestamp if the socket has them, else the clock read right after the call). Datagrams
    /// longer than `buf` are truncated to it.
    pub fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, i64)> {
        let mut storage = MaybeUninit::<libc::sockaddr_storage>::zeroed();
        let mut ctrl: ControlBuf = [0; 16];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: msghdr is plain data; all-zero is valid.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = storage.as_mut_ptr().cast();
        msg.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = ctrl.as_mut_ptr().cast();
        msg.msg_controllen = size_of::<ControlBuf>() as _;
        // SAFETY: every pointer in `msg` refers to a live local buffer of the stated length.
        let n = unsafe { libc::recvmsg(self.sock.as_raw_fd(), &mut msg, 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel filled `msg_namelen` bytes of `storage` (zeroed beforehand).
        let storage = unsafe { storage.assume_init() };
        let source = raw_to_socket_addr(&storage, msg.msg_namelen)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unknown address family"))?;
        // SAFETY: `msg` describes `ctrl` as filled by the kernel.
        let rx = unsafe { rx_timestamp(&msg) }.unwrap_or_else(realtime_nanos);
        Ok((n as usize, source, rx))
    }

    /// Receives up to `batch.capacity()` datagrams with one `recvmmsg`: blocks until the first
    /// arrives (or the read timeout expires, `WouldBlock`), then takes only what is already
    /// queued. Returns how many were received; read them with [`RecvBatch::get`].
    pub fn recv_batch(&self, batch: &mut RecvBatch) -> io::Result<usize> {
        batch.count = 0;
        let cap = batch.capacity;
        for h in batch.hdrs.iter_mut() {
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_controllen = size_of::<ControlBuf>() as _;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        // SAFETY: `hdrs` holds `cap` mmsghdrs whose pointers refer to buffers owned by `batch`
        // (set up in `RecvBatch::new`, heap storage that does not move), with their lengths.
        let n = unsafe {
            libc::recvmmsg(
                self.sock.as_raw_fd(),
                batch.hdrs.as_mut_ptr(),
                cap as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        let mut fallback = None;
        for i in 0..n {
            let h = &batch.hdrs[i];
            batch.lens[i] = h.msg_len as usize;
            batch.truncated[i] = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            // SAFETY: the header describes this slot's control buffer as filled by the kernel.
            batch.rx[i] = match unsafe { rx_timestamp(&h.msg_hdr) } {
                Some(t) => t,
                None => *fallback.get_or_insert_with(realtime_nanos),
            };
        }
        batch.count = n;
        Ok(n)
    }

    /// Sends the datagrams queued in `batch` with `sendmmsg` (as many calls as the kernel needs),
    /// then clears it. A datagram the kernel refuses (an unreachable destination, say) is
    /// skipped, not retried. Returns how many were sent.
    pub fn send_batch(&self, batch: &mut SendBatch) -> io::Result<usize> {
        let total = batch.count;
        let mut off = 0;
        let mut sent = 0;
        let mut first_err = None;
        batch.prepare_headers();
        while off < total {
            match self.sendmmsg_from(batch, off) {
                Ok(n) => {
                    off += n;
                    sent += n;
                }
                Err(e) => {
                    // Skip the datagram that failed and carry on with the rest.
                    first_err.get_or_insert(e);
                    off += 1;
                }
            }
        }
        batch.count = 0;
        match first_err {
            Some(e) if sent == 0 => Err(e),
            _ => Ok(sent),
        }
    }
}

impl UdpSocket {
    /// Sends the datagrams queued in `batch` in order with `sendmmsg`, stopping at the first one
    /// the kernel refuses (on a non-blocking socket, typically a full send buffer:
    /// `WouldBlock`), then clears the batch. Returns how many went out: always the first `n`
    /// queued, none of the rest. Fails only if the first datagram was refused; an error after
    /// that is left to the next call.
    pub fn send_batch_in_order(&self, batch: &mut SendBatch) -> io::Result<usize> {
        let total = batch.count;
        let mut off = 0;
        batch.prepare_headers();
        let result = loop {
            if off == total {
                break Ok(off);
            }
            match self.sendmmsg_from(batch, off) {
                Ok(0) => break Ok(off),
                Ok(n) => off += n,
                Err(e) => break if off == 0 { Err(e) } else { Ok(off) },
            }
        };
        batch.count = 0;
        result
    }

    /// One `sendmmsg` of the prepared entries `off..` of `batch` (retried on EINTR): how many
    /// the kernel took, or why it took none.
    fn sendmmsg_from(&self, batch: &mut SendBatch, off: usize) -> io::Result<usize> {
        loop {
            // SAFETY: entries off..count are valid mmsghdrs pointing into `batch`'s own buffers
            // (`prepare_headers` ran), and `off < count`.
            let n = unsafe {
                libc::sendmmsg(
                    self.sock.as_raw_fd(),
                    batch.hdrs.as_mut_ptr().add(off),
                    (batch.count - off) as libc::c_uint,
                    0,
                )
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Sends the datagrams queued in `batch` one `sendmsg` each (for event loops that may run
    /// where `sendmmsg` is not available, e.g. under a preloaded simulator), then clears it.
    /// A datagram the kernel refuses is skipped. Returns how many were sent.
    pub fn send_batch_each(&self, batch: &mut SendBatch) -> io::Result<usize> {
        let total = batch.count;
        let mut sent = 0;
        let mut first_err = None;
        batch.prepare_headers();
        for i in 0..total {
            // SAFETY: entry i is a valid msghdr pointing into `batch`'s own buffers.
            let n = unsafe { libc::sendmsg(self.sock.as_raw_fd(), &batch.hdrs[i].msg_hdr, 0) };
            if n < 0 {
                first_err.get_or_insert(io::Error::last_os_error());
            } else {
                sent += 1;
            }
        }
        batch.count = 0;
        match first_err {
            Some(e) if sent == 0 => Err(e),
            _ => Ok(sent),
        }
    }
}

impl AsRawFd for UdpSocket {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.sock.as_raw_fd()
    }
}

/// A socket without flags in its type (see [`crate::fd`]), then close-on-exec.
pub(crate) fn new_socket(domain: Domain, ty: Type, protocol: Protocol) -> io::Result<Socket> {
    let sock = Socket::new_raw(domain, ty, Some(protocol))?;
    crate::fd::set_cloexec(sock.as_raw_fd())?;
    Ok(sock)
}

/// Sets a `SOL_SOCKET` option whose value is one C int.
fn set_socket_int(sock: &Socket, option: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `value` is a valid c_int option value of the stated size.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_timestampns(sock: &Socket) -> io::Result<()> {
    set_socket_int(sock, libc::SO_TIMESTAMPNS, 1)
}

/// `ee_info` of an error-queue message that stamps a datagram's send (linux/net_tstamp.h).
const SCM_TSTAMP_SND: u32 = 0;

/// Software transmit timestamps, reported through the error queue without the packet
/// (`OPT_TSONLY`).
fn set_transmit_timestamping(sock: &Socket) -> io::Result<()> {
    let flags = libc::SOF_TIMESTAMPING_TX_SOFTWARE
        | libc::SOF_TIMESTAMPING_SOFTWARE
        | libc::SOF_TIMESTAMPING_OPT_TSONLY;
    set_socket_int(sock, libc::SO_TIMESTAMPING, flags as libc::c_int)
}

/// The software transmit timestamp of a message read from the error queue, as Unix
/// nanoseconds: its `SCM_TIMESTAMPING` message, if an extended error says it stamps a send.
///
/// # Safety
/// As for [`rx_timestamp`].
unsafe fn tx_timestamp(msg: &libc::msghdr) -> Option<i64> {
    if msg.msg_control.is_null() || msg.msg_controllen == 0 {
        return None;
    }
    let (mut stamp, mut is_send) = (None, false);
    // SAFETY: per the function's contract, the control buffer is valid; the CMSG_* macros keep
    // within msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            let c = &*cmsg;
            let data = libc::CMSG_DATA(cmsg);
            if c.cmsg_level == libc::SOL_SOCKET && c.cmsg_type == libc::SCM_TIMESTAMPING {
                // Three timespecs; the first is the software one.
                let ts = std::ptr::read_unaligned(data as *const libc::timespec);
                if ts.tv_sec != 0 || ts.tv_nsec != 0 {
                    stamp = Some(ts.tv_sec as i64 * 1_000_000_000 + ts.tv_nsec as i64);
                }
            } else if (c.cmsg_level == libc::SOL_IP && c.cmsg_type == libc::IP_RECVERR)
                || (c.cmsg_level == libc::SOL_IPV6 && c.cmsg_type == libc::IPV6_RECVERR)
            {
                let e = std::ptr::read_unaligned(data as *const libc::sock_extended_err);
                is_send = e.ee_errno == libc::ENOMSG as u32
                    && e.ee_origin == libc::SO_EE_ORIGIN_TIMESTAMPING
                    && e.ee_info == SCM_TSTAMP_SND;
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    stamp.filter(|_| is_send)
}

/// The `SCM_TIMESTAMPNS` control message of a received message, as Unix nanoseconds.
///
/// # Safety
/// `msg.msg_control` must point to a buffer of at least `msg.msg_controllen` bytes as filled by
/// the kernel (or `msg_controllen` must be 0).
unsafe fn rx_timestamp(msg: &libc::msghdr) -> Option<i64> {
    if msg.msg_control.is_null() || msg.msg_controllen == 0 {
        return None;
    }
    // SAFETY: per the function's contract, the control buffer is valid; the CMSG_* macros keep
    // within msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            let c = &*cmsg;
            if c.cmsg_level == libc::SOL_SOCKET && c.cmsg_type == libc::SCM_TIMESTAMPNS {
                let data = libc::CMSG_DATA(cmsg) as *const libc::timespec;
                let ts = std::ptr::read_unaligned(data);
                return Some(ts.tv_sec as i64 * 1_000_000_000 + ts.tv_nsec as i64);
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    None
}

/// Reads an IPv4 or IPv6 socket address out of a `sockaddr_storage`.
pub(crate) fn raw_to_socket_addr(
    s: &libc::sockaddr_storage,
    len: libc::socklen_t,
) -> Option<SocketAddr> {
    match s.ss_family as libc::c_int {
        libc::AF_INET if len as usize >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says this storage holds a sockaddr_in, which it is large enough
            // for and aligned for.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if len as usize >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Writes `addr` into `out`; returns the length to pass to the kernel.
fn socket_addr_to_raw(addr: &SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large enough and aligned for a sockaddr_in.
            let s =
                unsafe { &mut *(out as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            s.sin_family = libc::AF_INET as libc::sa_family_t;
            s.sin_port = a.port().to_be();
            s.sin_addr = libc::in_addr {
                s_addr: u32::from(*a.ip()).to_be(),
            };
            s.sin_zero = [0; 8];
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let s =
                unsafe { &mut *(out as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            s.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            s.sin6_port = a.port().to_be();
            s.sin6_flowinfo = a.flowinfo();
            s.sin6_addr = libc::in6_addr {
                s6_addr: a.ip().octets(),
            };
            s.sin6_scope_id = a.scope_id();
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

fn zeroed_storage() -> libc::sockaddr_storage {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

/// One datagram of a [`RecvBatch`].
#[derive(Clone, Copy, Debug)]
pub struct Received<'a> {
    /// The payload (cut at the buffer size if `truncated`).
    pub data: &'a [u8],
    /// The datagram was longer than the buffer.
    pub truncated: bool,
    /// Receive time, Unix nanoseconds (kernel timestamp, or one clock read per batch).
    pub rx_nanos: i64,
}

/// Buffers for [`UdpSocket::recv_batch`]: `capacity` datagrams of up to `buf_size` bytes each,
/// their source addresses and receive timestamps. Allocated once, reused for every call.
pub struct RecvBatch {
    capacity: usize,
    buf_size: usize,
    count: usize,
    bufs: Box<[u8]>,
    addrs: Box<[libc::sockaddr_storage]>,
    ctrl: Box<[ControlBuf]>,
    iovs: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
    lens: Box<[usize]>,
    truncated: Box<[bool]>,
    rx: Box<[i64]>,
}

// SAFETY: the raw pointers inside `iovs` and `hdrs` point only into the batch's own boxed
// buffers, whose heap storage moves with the batch and is never shared.
unsafe impl Send for RecvBatch {}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("capacity", &self.capacity)
            .field("buf_size", &self.buf_size)
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

impl RecvBatch {
    /// Buffers for `capacity` (1–1024) datagrams of `buf_size` bytes each.
    pub fn new(capacity: usize, buf_size: usize) -> RecvBatch {
        let capacity = capacity.clamp(1, 1024);
        let buf_size = buf_size.max(1);
        let mut b = RecvBatch {
            capacity,
            buf_size,
            count: 0,
            bufs: vec![0u8; capacity * buf_size].into_boxed_slice(),
            addrs: (0..capacity).map(|_| zeroed_storage()).collect(),
            ctrl: vec![[0u64; 16]; capacity].into_boxed_slice(),
            iovs: (0..capacity)
                .map(|_| libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                })
                .collect(),
            // SAFETY: mmsghdr is plain data; all-zero is valid.
            hdrs: (0..capacity)
                .map(|_| unsafe { std::mem::zeroed() })
                .collect(),
            lens: vec![0; capacity].into_boxed_slice(),
            truncated: vec![false; capacity].into_boxed_slice(),
            rx: vec![0; capacity].into_boxed_slice(),
        };
        for i in 0..capacity {
            b.iovs[i].iov_base = b.bufs[i * buf_size..].as_mut_ptr().cast();
            b.iovs[i].iov_len = buf_size;
            let h = &mut b.hdrs[i].msg_hdr;
            h.msg_name = (&mut b.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_iov = &mut b.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = b.ctrl[i].as_mut_ptr().cast();
        }
        b
    }

    /// How many datagrams one call can take.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many datagrams the last call received.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True if the last call received nothing.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Datagram `i` (< [`len`](Self::len)) of the last call.
    pub fn get(&self, i: usize) -> Received<'_> {
        assert!(i < self.count, "datagram {i} of {}", self.count);
        let start = i * self.buf_size;
        Received {
            data: &self.bufs[start..start + self.lens[i].min(self.buf_size)],
            truncated: self.truncated[i],
            rx_nanos: self.rx[i],
        }
    }

    /// Source address of datagram `i`; None for a family other than IPv4/IPv6.
    pub fn source(&self, i: usize) -> Option<SocketAddr> {
        assert!(i < self.count, "datagram {i} of {}", self.count);
        raw_to_socket_addr(&self.addrs[i], self.hdrs[i].msg_hdr.msg_namelen)
    }
}

/// Datagrams queued for one [`UdpSocket::send_batch`]: write each into
/// [`next_buf`](Self::next_buf), then [`commit`](Self::commit) it with its destination.
pub struct SendBatch {
    capacity: usize,
    buf_size: usize,
    count: usize,
    bufs: Box<[u8]>,
    addrs: Box<[libc::sockaddr_storage]>,
    addr_lens: Box<[libc::socklen_t]>,
    lens: Box<[usize]>,
    iovs: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
}

// SAFETY: as for RecvBatch: the pointers refer only to the batch's own boxed buffers.
unsafe impl Send for SendBatch {}

impl std::fmt::Debug for SendBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendBatch")
            .field("capacity", &self.capacity)
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

impl SendBatch {
    /// Room for `capacity` (1–1024) datagrams of up to `buf_size` bytes.
    pub fn new(capacity: usize, buf_size: usize) -> SendBatch {
        let capacity = capacity.clamp(1, 1024);
        let buf_size = buf_size.max(1);
        let mut b = SendBatch {
            capacity,
            buf_size,
            count: 0,
            bufs: vec![0u8; capacity * buf_size].into_boxed_slice(),
            addrs: (0..capacity).map(|_| zeroed_storage()).collect(),
            addr_lens: vec![0; capacity].into_boxed_slice(),
            lens: vec![0; capacity].into_boxed_slice(),
            iovs: (0..capacity)
                .map(|_| libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                })
                .collect(),
            // SAFETY: mmsghdr is plain data; all-zero is valid.
            hdrs: (0..capacity)
                .map(|_| unsafe { std::mem::zeroed() })
                .collect(),
        };
        for i in 0..capacity {
            b.iovs[i].iov_base = b.bufs[i * buf_size..].as_mut_ptr().cast();
            let h = &mut b.hdrs[i].msg_hdr;
            h.msg_name = (&mut b.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_iov = &mut b.iovs[i];
            h.msg_iovlen = 1;
        }
        b
    }

    /// Datagrams queued.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True if nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Drops everything queued.
    pub fn clear(&mut self) {
        self.count = 0;
    }

    /// The buffer for the next datagram, or None when the batch is full. Nothing is queued
    /// until [`commit`](Self::commit).
    pub fn next_buf(&mut self) -> Option<&mut [u8]> {
        if self.count == self.capacity {
            return None;
        }
        let start = self.count * self.buf_size;
        Some(&mut self.bufs[start..start + self.buf_size])
    }

    /// Queues the first `len` bytes written into [`next_buf`](Self::next_buf), to `dest`.
    pub fn commit(&mut self, len: usize, dest: &SocketAddr) {
        let i = self.count;
        assert!(i < self.capacity, "send batch full");
        self.addr_lens[i] = socket_addr_to_raw(dest, &mut self.addrs[i]);
        self.lens[i] = len.min(self.buf_size);
        self.count += 1;
    }

    /// Queues the first `len` bytes written into [`next_buf`](Self::next_buf) without a
    /// destination, for a [connected](UdpSocket::connect) socket (the kernel refuses it on any
    /// other: `EDESTADDRREQ`).
    pub fn commit_connected(&mut self, len: usize) {
        let i = self.count;
        assert!(i < self.capacity, "send batch full");
        self.addr_lens[i] = 0;
        self.lens[i] = len.min(self.buf_size);
        self.count += 1;
    }

    /// Queues the first `len` bytes written into [`next_buf`](Self::next_buf) as a reply to
    /// datagram `index` of `recv` (its source address copied as the kernel gave it).
    pub fn commit_reply(&mut self, len: usize, recv: &RecvBatch, index: usize) {
        let i = self.count;
        assert!(i < self.capacity, "send batch full");
        assert!(index < recv.count, "datagram {index} of {}", recv.count);
        self.addrs[i] = recv.addrs[index];
        self.addr_lens[i] = recv.hdrs[index].msg_hdr.msg_namelen;
        self.lens[i] = len.min(self.buf_size);
        self.count += 1;
    }

    /// Fills in the lengths of the queued datagrams' headers before a send; a datagram without a
    /// destination gets a null name, as `sendmsg` on a connected socket expects.
    fn prepare_headers(&mut self) {
        for i in 0..self.count {
            self.iovs[i].iov_len = self.lens[i];
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_namelen = self.addr_lens[i];
            h.msg_name = if self.addr_lens[i] == 0 {
                std::ptr::null_mut()
            } else {
                (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast()
            };
        }
    }

    /// Visits every queued datagram mutably, e.g. to stamp transmit timestamps just before
    /// [`UdpSocket::send_batch`].
    pub fn for_each_mut(&mut self, mut f: impl FnMut(&mut [u8])) {
        for i in 0..self.count {
            let start = i * self.buf_size;
            f(&mut self.bufs[start..start + self.lens[i]]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock(addr: &str) -> UdpSocket {
        UdpSocket::bind(
            addr.parse().unwrap(),
            &UdpSocketOptions {
                timestamps: true,
                read_timeout: Some(Duration::from_secs(2)),
                ..Default::default()
            },
        )
        .unwrap()
    }

    #[test]
    fn addr_round_trip() {
        for a in ["127.0.0.1:123", "[::1]:4567", "[fe80::1%2]:9"] {
            let a: SocketAddr = a.parse().unwrap();
            let mut s = zeroed_storage();
            let len = socket_addr_to_raw(&a, &mut s);
            assert_eq!(raw_to_socket_addr(&s, len), Some(a));
        }
    }

    #[test]
    fn single_datagram_has_kernel_timestamp() {
        let server = sock("127.0.0.1:0");
        let client = sock("127.0.0.1:0");
        let before = realtime_nanos();
        client.send_to(b"hello", server.local_addr()).unwrap();
        let mut buf = [0u8; 64];
        let (n, from, rx) = server.recv_from(&mut buf).unwrap();
        let after = realtime_nanos();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(from, client.local_addr());
        assert!(before <= rx && rx <= after, "{before} {rx} {after}");
    }

    #[test]
    fn a_sent_datagram_has_a_kernel_transmit_timestamp_taken_before_it_arrives() {
        for addr in ["127.0.0.1:0", "[::1]:0"] {
            let server = sock(addr);
            let opts = UdpSocketOptions {
                timestamps: true,
                transmit_timestamps: true,
                ..Default::default()
            };
            let client = UdpSocket::bind(addr.parse().unwrap(), &opts).unwrap();
            for _ in 0..3 {
                let before = realtime_nanos();
                client.send_to(b"hello", server.local_addr()).unwrap();
                let tx = client
                    .take_transmit_timestamp()
                    .expect("a transmit timestamp");
                let mut buf = [0u8; 64];
                let (n, _, rx) = server.recv_from(&mut buf).unwrap();
                assert_eq!(&buf[..n], b"hello");
                assert!(before <= tx && tx <= rx, "{addr}: {before} {tx} {rx}");
                // One timestamp per send: the queue is empty now.
                assert_eq!(client.take_transmit_timestamp(), None);
                // The same in one call, which takes the kernel's timestamp off the queue.
                let before = realtime_nanos();
                let sent = client.send_to_timed(b"again", server.local_addr()).unwrap();
                let (n, _, rx) = server.recv_from(&mut buf).unwrap();
                assert_eq!(&buf[..n], b"again");
                assert!(before <= sent && sent <= rx, "{addr}: {before} {sent} {rx}");
                assert_eq!(client.take_transmit_timestamp(), None);
            }
            // The client's own receives are as before (the error queue is not their way in).
            let before = realtime_nanos();
            server.send_to(b"back", client.local_addr()).unwrap();
            let mut buf = [0u8; 64];
            let (n, _, rx) = client.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"back");
            assert!(
                before <= rx && rx <= realtime_nanos(),
                "{addr}: {before} {rx}"
            );
            assert_eq!(client.take_transmit_timestamp(), None);
        }
        // A socket without them has none.
        let plain = sock("127.0.0.1:0");
        let server = sock("127.0.0.1:0");
        plain.send_to(b"x", server.local_addr()).unwrap();
        assert_eq!(plain.take_transmit_timestamp(), None);
    }

    #[test]
    fn batch_echo_v4_and_v6() {
        for addr in ["127.0.0.1:0", "[::1]:0"] {
            let server = sock(addr);
            let client = sock(addr);
            for i in 0..10u8 {
                client.send_to(&[i; 48], server.local_addr()).unwrap();
            }
            let mut recv = RecvBatch::new(64, 128);
            let mut send = SendBatch::new(64, 128);
            let mut got = 0;
            while got < 10 {
                let n = server.recv_batch(&mut recv).unwrap();
                for i in 0..n {
                    let r = recv.get(i);
                    assert!(!r.truncated);
                    assert_eq!(recv.source(i), Some(client.local_addr()));
                    let len = r.data.len();
                    let out = send.next_buf().unwrap();
                    out[..len].copy_from_slice(r.data);
                    out[0] = out[0].wrapping_add(100);
                    send.commit_reply(len, &recv, i);
                }
                got += n;
                assert_eq!(server.send_batch(&mut send).unwrap(), n);
            }
            for i in 0..10u8 {
                let mut buf = [0u8; 128];
                let (n, from, _) = client.recv_from(&mut buf).unwrap();
                assert_eq!((n, from), (48, server.local_addr()));
                assert_eq!(buf[0], i + 100);
            }
        }
    }

    #[test]
    fn oversize_datagram_is_flagged_truncated() {
        let server = sock("127.0.0.1:0");
        let client = sock("127.0.0.1:0");
        client.send_to(&[7u8; 300], server.local_addr()).unwrap();
        let mut recv = RecvBatch::new(4, 100);
        assert_eq!(server.recv_batch(&mut recv).unwrap(), 1);
        assert!(recv.get(0).truncated);
        assert_eq!(recv.get(0).data.len(), 100);
    }

    #[test]
    fn connected_batches_reach_the_peer_and_only_the_peer_is_heard() {
        for addr in ["127.0.0.1:0", "[::1]:0"] {
            let server = sock(addr);
            let stranger = sock(addr);
            let unspecified = if addr.starts_with('[') {
                "[::]:0"
            } else {
                "0.0.0.0:0"
            };
            let mut client = sock(unspecified);
            assert_eq!(client.peer_addr(), None);
            client.connect(server.local_addr()).unwrap();
            assert_eq!(client.peer_addr(), Some(server.local_addr()));
            // Bound to the unspecified address, it now has the route's local address.
            assert_eq!(client.local_addr().ip(), server.local_addr().ip());
            assert_ne!(client.local_addr().port(), 0);

            let mut send = SendBatch::new(8, 64);
            for i in 0..5u8 {
                send.next_buf().unwrap()[..4].copy_from_slice(&[i; 4]);
                send.commit_connected(4);
            }
            assert_eq!(client.send_batch_in_order(&mut send).unwrap(), 5);
            assert!(send.is_empty());
            let mut recv = RecvBatch::new(8, 64);
            let mut got = Vec::new();
            while got.len() < 5 {
                let n = server.recv_batch(&mut recv).unwrap();
                for i in 0..n {
                    assert_eq!(recv.source(i), Some(client.local_addr()));
                    got.push(recv.get(i).data.to_vec());
                }
            }
            let want: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 4]).collect();
            assert_eq!(got, want);

            // A datagram from anyone but the peer is not delivered to a connected socket.
            stranger.send_to(b"noise", client.local_addr()).unwrap();
            server.send_to(b"reply", client.local_addr()).unwrap();
            let mut buf = [0u8; 16];
            let (n, from, _) = client.recv_from(&mut buf).unwrap();
            assert_eq!((&buf[..n], from), (&b"reply"[..], server.local_addr()));
        }
    }

    #[test]
    fn in_order_send_stops_at_the_first_refused_datagram() {
        let server = sock("127.0.0.1:0");
        let client = sock("127.0.0.1:0");
        let mut send = SendBatch::new(4, 64);
        // Not connected: the kernel refuses a datagram without a destination (EDESTADDRREQ).
        send.next_buf().unwrap()[0] = 1;
        send.commit(1, &server.local_addr());
        send.next_buf().unwrap()[0] = 2;
        send.commit_connected(1);
        send.next_buf().unwrap()[0] = 3;
        send.commit(1, &server.local_addr());
        assert_eq!(client.send_batch_in_order(&mut send).unwrap(), 1);
        assert!(send.is_empty());
        let mut buf = [0u8; 8];
        let (n, _, _) = server.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], &[1]);
        server
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        assert!(
            server.recv_from(&mut buf).is_err(),
            "nothing after the refused one"
        );

        send.next_buf().unwrap()[0] = 4;
        send.commit_connected(1);
        let e = client.send_batch_in_order(&mut send).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EDESTADDRREQ), "{e}");
        assert!(send.is_empty());
    }

    #[test]
    fn commit_to_address() {
        let server = sock("[::1]:0");
        let client = sock("[::1]:0");
        let mut send = SendBatch::new(2, 64);
        send.next_buf().unwrap()[..3].copy_from_slice(b"abc");
        send.commit(3, &client.local_addr());
        send.for_each_mut(|b| b[0] = b'x');
        assert_eq!(server.send_batch(&mut send).unwrap(), 1);
        let mut buf = [0u8; 8];
        let (n, _, _) = client.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"xbc");
    }
}
