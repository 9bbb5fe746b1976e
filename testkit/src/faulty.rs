//! Upstreams that are dead below HTTP: a port that refuses connections and a
//! listener that accepts connections and then never answers. std only.

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
