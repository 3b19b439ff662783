//! Name resolution for upstream calls: `getaddrinfo` blocks, so it runs
//! on one helper thread, never a reactor; each reactor keeps what it
//! learned for [`TTL`] and asks once per name however many runs wait.
//! An IP literal needs no lookup.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use crate::reactor::Mailbox;

/// How long a reactor reuses an answer.
pub const TTL: Duration = Duration::from_secs(30);

/// Lookups that may wait for the helper thread.
const QUEUE: usize = 256;

/// An answer, for the reactor that asked.
#[derive(Debug)]
pub struct Resolved {
    pub host: String,
    pub port: u16,
    pub addrs: Result<Vec<SocketAddr>, Unresolved>,
}

/// Why a name has no addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unresolved {
    pub message: String,
    /// This side failed (the resolver busy or stopped, no descriptor or
    /// memory for the lookup), not the name.
    pub local: bool,
}

impl Unresolved {
    /// This side's failure.
    pub fn local(message: &str) -> Unresolved {
        Unresolved {
            message: message.into(),
            local: true,
        }
    }
}

struct Job {
    host: String,
    port: u16,
    reply: Arc<Mailbox<Resolved>>,
}

/// The helper thread, shared by every reactor of a server.
pub struct Resolver {
    tx: SyncSender<Job>,
}

impl Resolver {
    pub fn start() -> std::io::Result<Resolver> {
        let (tx, rx) = sync_channel::<Job>(QUEUE);
        std::thread::Builder::new()
            .name("pollcap-resolver".into())
            .spawn(move || {
                for job in rx {
                    let addrs = (job.host.as_str(), job.port)
                        .to_socket_addrs()
                        .map(|a| a.collect::<Vec<_>>())
                        .map_err(|e| Unresolved {
                            message: e.to_string(),
                            local: crate::platform::is_local_shortage(&e),
                        })
                        .and_then(|a| match a.is_empty() {
                            true => Err(Unresolved {
                                message: "no address".into(),
                                local: false,
                            }),
                            false => Ok(a),
                        });
                    job.reply.post(Resolved {
                        host: job.host,
                        port: job.port,
                        addrs,
                    });
                }
            })?;
        Ok(Resolver { tx })
    }
}

/// One reactor's view: its cache and the names it is waiting for.
#[derive(Default)]
pub struct Names {
    cache: HashMap<(String, u16), (Vec<SocketAddr>, Instant)>,
    waiting: HashMap<(String, u16), Vec<u64>>,
}

/// What [`Names::lookup`] knows now.
pub enum Lookup {
    Now(Result<Vec<SocketAddr>, Unresolved>),
    /// The answer comes to the reactor's mailbox; `waiter` is told then.
    Later,
}

impl Names {
    /// Addresses of `host:port` for `waiter`, now or later.
    pub fn lookup(
        &mut self,
        resolver: &Resolver,
        reply: &Arc<Mailbox<Resolved>>,
        host: &str,
        port: u16,
        waiter: u64,
        now: Instant,
    ) -> Lookup {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Lookup::Now(Ok(vec![SocketAddr::new(ip, port)]));
        }
        let key = (host.to_string(), port);
        if let Some((addrs, until)) = self.cache.get(&key) {
            if now < *until {
                return Lookup::Now(Ok(addrs.clone()));
            }
            self.cache.remove(&key);
        }
        if let Some(w) = self.waiting.get_mut(&key) {
            w.push(waiter);
            return Lookup::Later;
        }
        let job = Job {
            host: host.to_string(),
            port,
            reply: reply.clone(),
        };
        match resolver.tx.try_send(job) {
            Ok(()) => {
                self.waiting.insert(key, vec![waiter]);
                Lookup::Later
            }
            Err(TrySendError::Full(_)) => {
                Lookup::Now(Err(Unresolved::local("name resolution is busy")))
            }
            Err(TrySendError::Disconnected(_)) => {
                Lookup::Now(Err(Unresolved::local("name resolution stopped")))
            }
        }
    }

    /// An answer came: who was waiting for it (and it is cached).
    pub fn answered(&mut self, r: &Resolved, now: Instant) -> Vec<u64> {
        let key = (r.host.clone(), r.port);
        if let Ok(addrs) = &r.addrs {
            self.cache.insert(key.clone(), (addrs.clone(), now + TTL));
        }
        self.waiting.remove(&key).unwrap_or_default()
    }
}
