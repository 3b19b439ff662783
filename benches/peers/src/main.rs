//! Echo server on stock tokio-tungstenite, the peer pollcap is measured
//! against: `peer-tokio-tungstenite ADDR THREADS [READ_BUFFER_BYTES]`.

use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// A listener with a backlog of 1024, like pollcap's.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr: SocketAddr = args
        .get(1)
        .map(String::as_str)
        .unwrap_or("127.0.0.1:9200")
        .parse()
        .expect("ADDR must be IP:PORT");
    let threads: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1);
    // Without a size: tungstenite's defaults (128 KiB read buffer).
    let read_buffer: Option<usize> = args.get(3).and_then(|s| s.parse().ok());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_io()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        // Not TcpListener::bind: mio 1.2 listens with std's backlog of 128.
        let listener = listen(addr).expect("bind");
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let config = read_buffer.map(|n| {
                    WebSocketConfig::default()
                        .read_buffer_size(n)
                        .write_buffer_size(0)
                });
                let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(tcp, config).await
                else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
}
