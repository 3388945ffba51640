//! Backend echo servers and the clients that talk to them.
//!
//! Every backend address runs a TCP listener (and usually a UDP socket) that answers
//! `BACKEND-IP CLIENT-IP-AS-SEEN\n` (or, with [`ServerOpts::report_port`],
//! `BACKEND-IP CLIENT-IP CLIENT-PORT\n`), so a client learns which endpoint answered and
//! whether it was masqueraded.

// Shared test support: not every test crate uses every helper.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use super::NetNs;

/// Socket timeout for every client and server operation.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// How long [`Servers::start`] waits for the servers to report readiness.
const READY_WAIT: Duration = Duration::from_secs(10);

/// `ip:port` from an IP literal.
pub fn sockaddr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse::<IpAddr>().expect("IP literal"), port)
}

/// Locks a mutex; a panicking thread must not wedge the others.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------
// Servers

/// What the backend servers run.
#[derive(Clone, Copy, Debug)]
pub struct ServerOpts {
    /// also a UDP socket on every address (otherwise TCP only)
    pub udp: bool,
    /// answers also carry the client port the backend saw
    pub report_port: bool,
}

impl Default for ServerOpts {
    /// TCP and UDP; answers `BACKEND-IP CLIENT-IP`.
    fn default() -> ServerOpts {
        ServerOpts {
            udp: true,
            report_port: false,
        }
    }
}

/// One backend address: its server threads.
struct Backend {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Backend {
    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Servers on every backend address, in the backends namespace, each address stoppable
/// on its own; all stopped (joined) on drop. Declare it after the topology so that it
/// is dropped first.
pub struct Servers {
    backends: Mutex<BTreeMap<String, Backend>>,
}

impl Servers {
    /// A TCP listener and a UDP socket on `port` of every address in `addrs`.
    pub fn start(ns: &NetNs, addrs: &[&str], port: u16) -> Servers {
        Servers::start_with(ns, addrs, port, ServerOpts::default())
    }

    /// Servers on `port` of every address in `addrs`, as `opts` says.
    pub fn start_with(ns: &NetNs, addrs: &[&str], port: u16, opts: ServerOpts) -> Servers {
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let protocols: &[bool] = if opts.udp { &[false, true] } else { &[false] };
        let mut backends = BTreeMap::new();
        for a in addrs {
            let stop = Arc::new(AtomicBool::new(false));
            let mut threads = Vec::new();
            let addr = sockaddr(a, port);
            for &udp in protocols {
                let stop = stop.clone();
                let ready = ready_tx.clone();
                let report_port = opts.report_port;
                threads.push(ns.spawn(move || {
                    if udp {
                        serve_udp(addr, &stop, &ready, report_port)
                    } else {
                        serve_tcp(addr, &stop, &ready, report_port)
                    }
                }));
            }
            backends.insert(a.to_string(), Backend { stop, threads });
        }
        let servers = Servers {
            backends: Mutex::new(backends),
        };
        for _ in 0..addrs.len() * protocols.len() {
            match ready_rx.recv_timeout(READY_WAIT) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => panic!("backend server failed to start: {e}"),
                Err(e) => panic!("backend servers did not report readiness: {e}"),
            }
        }
        servers
    }

    /// Stops the servers of one address (the pod is gone; its address still exists, so
    /// TCP is reset and UDP gets ICMP port unreachable).
    pub fn stop(&self, addr: &str) {
        if let Some(mut b) = lock(&self.backends).remove(addr) {
            b.shutdown();
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        let mut all = std::mem::take(&mut *lock(&self.backends));
        // Tell every server to stop first, then join them.
        for b in all.values() {
            b.stop.store(true, Ordering::SeqCst);
        }
        for b in all.values_mut() {
            b.shutdown();
        }
    }
}

/// Waits up to `ms` for `fd` to become readable.
fn wait_readable(fd: i32, ms: i32) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, its count is 1.
    unsafe { libc::poll(&mut pfd, 1, ms) };
}

fn answer_text(local: SocketAddr, peer: SocketAddr, report_port: bool) -> String {
    if report_port {
        format!("{} {} {}\n", local.ip(), peer.ip(), peer.port())
    } else {
        format!("{} {}\n", local.ip(), peer.ip())
    }
}

fn serve_tcp(
    addr: SocketAddr,
    stop: &AtomicBool,
    ready: &mpsc::Sender<Result<(), String>>,
    report_port: bool,
) {
    let listener = match TcpListener::bind(addr).and_then(|l| {
        l.set_nonblocking(true)?;
        Ok(l)
    }) {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(format!("tcp {addr}: {e}")));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, peer)) => answer_tcp(stream, addr, peer, report_port),
            // WouldBlock, or a connection that went away before accept: wait (at most
            // 100 ms, so that `stop` is seen) and try again.
            Err(_) => wait_readable(listener.as_raw_fd(), 100),
        }
    }
}

fn answer_tcp(mut stream: TcpStream, local: SocketAddr, peer: SocketAddr, report_port: bool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(TIMEOUT));
    let _ = stream.set_write_timeout(Some(TIMEOUT));
    let _ = stream.write_all(answer_text(local, peer, report_port).as_bytes());
    // Let the client close first (bounded by the read timeout), so TIME_WAIT stays on
    // the client, which never reuses such a port, instead of on this listener.
    let mut buf = [0u8; 64];
    for _ in 0..16 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

fn serve_udp(
    addr: SocketAddr,
    stop: &AtomicBool,
    ready: &mpsc::Sender<Result<(), String>>,
    report_port: bool,
) {
    let sock = match UdpSocket::bind(addr).and_then(|s| {
        s.set_read_timeout(Some(Duration::from_millis(100)))?;
        Ok(s)
    }) {
        Ok(s) => s,
        Err(e) => {
            let _ = ready.send(Err(format!("udp {addr}: {e}")));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::SeqCst) {
        if let Ok((_, peer)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(answer_text(addr, peer, report_port).as_bytes(), peer);
        }
    }
}

// ---------------------------------------------------------------------------------
// Clients (call these on a thread inside the client namespace); they expect answers
// without the port (`ServerOpts::report_port` false).

/// What a backend answered.
#[derive(Debug)]
pub struct Answer {
    /// the backend's own address
    pub backend: String,
    /// the client address the backend saw
    pub seen_client: String,
}

/// Parses `BACKEND-IP CLIENT-IP`.
pub fn parse_answer(text: &str) -> io::Result<Answer> {
    let mut words = text.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some(b), Some(c), None) => Ok(Answer {
            backend: b.to_string(),
            seen_client: c.to_string(),
        }),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected answer {text:?}"),
        )),
    }
}

/// What an empty answer (the connection closed before a line came) is reported as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmptyAnswer {
    /// `UnexpectedEof`: "connection closed without an answer"
    Eof,
    /// whatever [`parse_answer`] says about "" (`InvalidData`)
    Unparsed,
}

/// Reads one answer line from `stream` (setting its timeouts first).
pub fn read_answer(stream: &TcpStream, empty: EmptyAnswer) -> io::Result<Answer> {
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    if line.is_empty() && empty == EmptyAnswer::Eof {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed without an answer",
        ));
    }
    parse_answer(&line)
}

/// A new TCP connection to `dst`; reads the backend's answer, then closes it
/// gracefully (TIME_WAIT stays on the client, which does not reuse such a port).
pub fn tcp_ask(dst: SocketAddr) -> io::Result<Answer> {
    let stream = TcpStream::connect_timeout(&dst, TIMEOUT)?;
    read_answer(&stream, EmptyAnswer::Eof)
}

/// Sets `SO_LINGER` 0 on `stream`, so that closing it sends a reset.
pub fn set_linger_zero(stream: &TcpStream) -> io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a `linger` of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Like [`tcp_ask`], but ends the connection with a reset (`SO_LINGER` 0), so that it
/// leaves no TIME_WAIT behind: a tight loop of these cannot run out of ephemeral ports,
/// and its conntrack entries expire after 10 s (a SYN on a reset entry starts a new
/// one, with a new NAT decision). `empty` says how an empty answer is reported.
pub fn tcp_ask_reset(dst: SocketAddr, empty: EmptyAnswer) -> io::Result<Answer> {
    let stream = TcpStream::connect_timeout(&dst, TIMEOUT)?;
    let answer = read_answer(&stream, empty);
    set_linger_zero(&stream)?;
    answer
}

/// One request datagram to `dst` from a new socket bound to `local`; returns the
/// answer.
pub fn udp_ask_from(local: SocketAddr, dst: SocketAddr) -> io::Result<Answer> {
    let sock = UdpSocket::bind(local)?;
    sock.set_read_timeout(Some(TIMEOUT))?;
    sock.set_write_timeout(Some(TIMEOUT))?;
    sock.connect(dst)?;
    sock.send(b"who are you?\n")?;
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf)?;
    parse_answer(&String::from_utf8_lossy(&buf[..n]))
}

/// Panics unless `result` is a refusal (ECONNREFUSED: the node's ICMP port unreachable).
pub fn expect_refused(result: io::Result<Answer>, what: &str) {
    match result {
        Ok(a) => panic!("{what}: expected to be refused, but {a:?} answered"),
        Err(e) => assert_eq!(
            e.kind(),
            io::ErrorKind::ConnectionRefused,
            "{what}: expected ECONNREFUSED (ICMP port unreachable), got {e}"
        ),
    }
}
