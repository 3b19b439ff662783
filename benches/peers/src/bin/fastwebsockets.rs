//! Echo server on fastwebsockets with hyper 1's upgrade, a second peer for
//! scripts/bench-peers: `peer-fastwebsockets ADDR THREADS`.
//!
//! Built like the tokio-tungstenite peer (src/main.rs) so the two compare:
//! a multi-threaded tokio runtime with THREADS workers, accept loop on the
//! main thread. Text and binary messages are echoed (fragments collected
//! first); pings are answered and Close is returned by fastwebsockets itself
//! (auto_pong, auto_close), after which the connection is dropped. Any
//! request that is not a WebSocket upgrade gets 400 with `Connection: close`.

use std::net::SocketAddr;

use fastwebsockets::{FragmentCollector, OpCode, WebSocketError, upgrade};
use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket};

async fn echo(fut: upgrade::UpgradeFut) -> Result<(), WebSocketError> {
    let mut ws = fut.await?;
    // Both default to true; set them so the peer's behaviour is explicit.
    ws.set_auto_pong(true);
    ws.set_auto_close(true);
    let mut ws = FragmentCollector::new(ws);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            // auto_close has already answered with a Close frame.
            OpCode::Close => return Ok(()),
            OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
            _ => {}
        }
    }
}

async fn handle(mut req: Request<Incoming>) -> Result<Response<Empty<Bytes>>, WebSocketError> {
    if !upgrade::is_upgrade_request(&req) {
        return Ok(Response::builder()
            .status(StatusCode::BAD_REQUEST)
            .header(hyper::header::CONNECTION, "close")
            .body(Empty::new())
            .expect("static response"));
    }
    let (response, fut) = match upgrade::upgrade(&mut req) {
        Ok(pair) => pair,
        Err(_) => {
            return Ok(Response::builder()
                .status(StatusCode::BAD_REQUEST)
                .header(hyper::header::CONNECTION, "close")
                .body(Empty::new())
                .expect("static response"));
        }
    };
    tokio::spawn(async move {
        let _ = tokio::task::unconstrained(echo(fut)).await;
    });
    Ok(response)
}

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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_io()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let listener = listen(addr).expect("bind");
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let conn = http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service_fn(handle))
                    .with_upgrades();
                let _ = conn.await;
            });
        }
    });
}
