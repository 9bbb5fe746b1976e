//! Upstreams that are dead below HTTP: a port that refuses connections, a
//! listener that accepts connections and then never answers, and a TCP
//! proxy in front of a real server that goes silent on demand (at once, or
//! after so many bytes of a response). std only.

use std::collections::HashMap;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// A loopback port with nothing listening on it: connecting is refused at
/// once. (Bound and released here; as racy as any free-port helper.)
pub fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let port = l.local_addr().unwrap().port();
    drop(l);
    port
}

/// Accepts every TCP connection, reads (and discards) what the client
/// sends, and never writes a byte nor closes: the client waits for response
/// headers until its own timeout. Drop closes every held connection.
pub struct StallServer {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    held: Arc<Mutex<Vec<TcpStream>>>,
    thread: Option<JoinHandle<()>>,
}

impl StallServer {
    pub fn start() -> StallServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let held: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (acc, st, h) = (accepted.clone(), stop.clone(), held.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                acc.fetch_add(1, Ordering::SeqCst);
                // Drain the request so that the client's write never blocks
                // and nothing unread turns our eventual close into a reset
                // that the client could take for an answer.
                if let Ok(mut reader) = conn.try_clone() {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 4096];
                        while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
                    });
                }
                h.lock().unwrap().push(conn);
            }
        });
        StallServer {
            addr,
            accepted,
            stop,
            held,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for StallServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for c in self.held.lock().unwrap().drain(..) {
            // Ends the reader threads too.
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// What a [`FaultProxy`] does with each new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forwards both ways.
    Pass,
    /// Accepts and reads, never answers, never closes: an overloaded proxy
    /// or a half-dead load balancer.
    Silent,
    /// Forwards the first `n` bytes of what the server sends on the
    /// connection, then goes silent with the connection open: a body that
    /// stops mid-way.
    StallAfter(u64),
}

/// A TCP proxy in front of a real server (e.g. a registry) that misbehaves
/// on demand ([`ProxyMode`]). std only; every connection gets two threads.
pub struct FaultProxy {
    pub addr: SocketAddr,
    mode: Arc<Mutex<ProxyMode>>,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    /// Open connections (client side, server side) by id, for Drop; a
    /// connection leaves when its client closes it.
    held: Arc<Mutex<HashMap<u64, (TcpStream, TcpStream)>>>,
    thread: Option<JoinHandle<()>>,
}

impl FaultProxy {
    pub fn start(target: SocketAddr, mode: ProxyMode) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(Mutex::new(mode));
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let held: Arc<Mutex<HashMap<u64, (TcpStream, TcpStream)>>> = Arc::default();
        let (m, acc, st, h) = (mode.clone(), accepted.clone(), stop.clone(), held.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = conn else { continue };
                let id = acc.fetch_add(1, Ordering::SeqCst) as u64;
                let mode = *m.lock().unwrap();
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                if let (Ok(c), Ok(s)) = (client.try_clone(), server.try_clone()) {
                    h.lock().unwrap().insert(id, (c, s));
                }
                let limit = match mode {
                    ProxyMode::Pass => u64::MAX,
                    ProxyMode::Silent => 0,
                    ProxyMode::StallAfter(n) => n,
                };
                // Client to server: everything (a silent proxy reads and drops).
                let (mut c_read, mut s_write) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let silent = mode == ProxyMode::Silent;
                let h2 = h.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 << 10];
                    loop {
                        match c_read.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) if !silent => {
                                if std::io::Write::write_all(&mut s_write, &buf[..n]).is_err() {
                                    break;
                                }
                            }
                            Ok(_) => {}
                        }
                    }
                    // The client is gone: close the server side too (which
                    // ends the other thread) and forget the connection.
                    let _ = s_write.shutdown(std::net::Shutdown::Both);
                    h2.lock().unwrap().remove(&id);
                });
                // Server to client: up to the limit, then nothing (the
                // connection stays open).
                let (mut s_read, mut c_write) = (server, client);
                std::thread::spawn(move || {
                    let mut sent = 0u64;
                    let mut buf = [0u8; 16 << 10];
                    loop {
                        let n = match s_read.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let room = limit.saturating_sub(sent) as usize;
                        let k = n.min(room);
                        if k > 0 && std::io::Write::write_all(&mut c_write, &buf[..k]).is_err() {
                            break;
                        }
                        sent += k as u64;
                        if k < n {
                            // Silent from here on; keep reading so the server
                            // is not blocked, and drop what it sends.
                            while matches!(s_read.read(&mut buf), Ok(n) if n > 0) {}
                            break;
                        }
                    }
                    // Without a limit, pass the server's close on.
                    if limit == u64::MAX {
                        let _ = c_write.shutdown(std::net::Shutdown::Write);
                    }
                });
            }
        });
        FaultProxy {
            addr,
            mode,
            accepted,
            stop,
            held,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Mode for connections accepted from now on.
    pub fn set_mode(&self, mode: ProxyMode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// Closes every open connection (a load balancer restarting): clients
    /// must connect again, and get the current mode.
    pub fn reset(&self) {
        for (_, (c, s)) in self.held.lock().unwrap().drain() {
            let _ = c.shutdown(std::net::Shutdown::Both);
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for (_, (c, s)) in self.held.lock().unwrap().drain() {
            let _ = c.shutdown(std::net::Shutdown::Both);
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}
