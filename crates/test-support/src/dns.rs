//! A tiny DNS responder on loopback that answers every `A` query with `127.0.0.1`, so a test
//! ACME server (pebble `-dnsserver`) resolves any test host name to the proxy under test.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A running responder; stops when dropped.
#[derive(Debug)]
pub struct LoopbackDns {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl LoopbackDns {
    /// Binds `127.0.0.1:0` (UDP) and answers in a background thread.
    ///
    /// # Panics
    /// If the socket cannot be bound.
    pub fn start() -> LoopbackDns {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind DNS socket");
        // Wake up regularly so the thread notices `stop`.
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("set read timeout");
        let addr = socket.local_addr().expect("DNS address");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !flag.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(reply) = answer(&buf[..n]) {
                    let _ = socket.send_to(&reply, from);
                }
            }
        });
        LoopbackDns { addr, stop }
    }

    /// The address to give pebble's `-dnsserver`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for LoopbackDns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The reply to one query: `A` → 127.0.0.1, anything else → no records (NOERROR).
fn answer(query: &[u8]) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    // Question: labels up to the zero byte, then QTYPE and QCLASS.
    let mut i = 12;
    loop {
        let len = usize::from(*query.get(i)?);
        i += 1;
        if len == 0 {
            break;
        }
        i += len;
    }
    let question_end = i + 4;
    let qtype = u16::from_be_bytes([*query.get(i)?, *query.get(i + 1)?]);
    let question = query.get(12..question_end)?;
    let is_a = qtype == 1;
    let mut reply = Vec::with_capacity(question_end + 16);
    reply.extend_from_slice(&query[..2]); // id
    reply.extend_from_slice(&[0x81, 0x80]); // response, recursion desired/available, NOERROR
    reply.extend_from_slice(&[0, 1, 0, u8::from(is_a), 0, 0, 0, 0]);
    reply.extend_from_slice(question);
    if is_a {
        // Name: pointer to the question; type A, class IN, TTL 60, 4 bytes of address.
        reply.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 1]);
    }
    Some(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_a_queries_with_loopback() {
        let dns = LoopbackDns::start();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        // id 0x1234, RD, one question: a.test A IN
        let mut q = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend_from_slice(&[1, b'a', 4, b't', b'e', b's', b't', 0, 0, 1, 0, 1]);
        client.send_to(&q, dns.addr()).unwrap();
        let mut buf = [0u8; 512];
        let n = client.recv(&mut buf).unwrap();
        assert_eq!(&buf[..2], &[0x12, 0x34]);
        assert_eq!(&buf[n - 4..n], &[127, 0, 0, 1]);
        assert_eq!(answer(&[0; 3]), None);
    }
}
