//! DNS and TCP under one connect deadline: IP literals need no lookup,
//! names go to the system resolver on a helper thread (abandoned if it
//! overruns: it cannot be cancelled), then each address is tried with what
//! is left of the deadline.

use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::ClientError;

/// A connected socket and how long each phase took.
pub(super) struct Connected {
    pub tcp: TcpStream,
    pub addr: SocketAddr,
    pub dns: Duration,
    pub tcp_time: Duration,
}

/// Resolves `host` and connects to the first address that answers, all
/// within `limit`.
pub(super) fn open(host: &str, port: u16, limit: Duration) -> Result<Connected, ClientError> {
    let t0 = Instant::now();
    let addrs = resolve(host, port, limit)?;
    let dns = t0.elapsed();

    let t1 = Instant::now();
    let deadline = t0 + limit;
    let mut last_err = None;
    for addr in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match TcpStream::connect_timeout(&addr, left) {
            Ok(tcp) => {
                let _ = tcp.set_nodelay(true);
                return Ok(Connected {
                    tcp,
                    addr,
                    dns,
                    tcp_time: t1.elapsed(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
            Err(e) => last_err = Some(ClientError::Connect(addr, e)),
        }
    }
    Err(last_err.unwrap_or(ClientError::ConnectTimeout(limit)))
}

/// Resolves `host` within `limit`. IP literals need no lookup; names go to
/// the system resolver on a helper thread, abandoned if it overruns.
fn resolve(host: &str, port: u16, limit: Duration) -> Result<Vec<SocketAddr>, ClientError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let name = host.to_string();
    std::thread::spawn(move || {
        let _ = tx.send((name.as_str(), port).to_socket_addrs().map(Vec::from_iter));
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(addrs)) if !addrs.is_empty() => Ok(addrs),
        Ok(Ok(_)) => Err(ClientError::Dns(format!("{host}: no addresses"))),
        Ok(Err(e)) => Err(ClientError::Dns(format!("{host}: {e}"))),
        Err(_) => Err(ClientError::DnsTimeout(limit)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ip_literal_is_not_looked_up() {
        let got = resolve("::1", 9, Duration::ZERO).unwrap();
        assert_eq!(got, ["[::1]:9".parse::<SocketAddr>().unwrap()]);
    }
}
