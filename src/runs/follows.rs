//! The one table of what each connection follows: a run of this reactor
//! (its token is the run's number) or a run followed through the store (a
//! resume; a token of its own). Each follow remembers the last `seq` it
//! forwarded, so every event reaches its connection once and in order.
//! The per-connection list is an index of this table, kept by the two
//! functions that change it ([`Follows::link`], [`Follows::unlink`]).

use std::collections::HashMap;
use std::sync::Arc;

use super::ConnRef;

/// One connection following one run.
#[derive(Clone, Debug)]
pub(super) struct Follow {
    pub conn: ConnRef,
    pub run_id: Arc<str>,
    /// Last event `seq` forwarded (events up to it are not sent again).
    pub last_seq: u64,
    /// A run of this reactor, rather than one followed through the store.
    pub home: bool,
}

#[derive(Debug, Default)]
pub(super) struct Follows {
    by_token: HashMap<u64, Follow>,
    /// Tokens followed by each connection, by its slot key.
    by_conn: HashMap<usize, Vec<u64>>,
}

impl Follows {
    pub fn link(&mut self, token: u64, follow: Follow) {
        self.by_conn.entry(follow.conn.key).or_default().push(token);
        if let Some(old) = self.by_token.insert(token, follow) {
            // Tokens are never reused; keep the index exact regardless.
            self.drop_index(token, old.conn.key);
        }
    }

    /// Ends follow `token`; the connection's remaining count with it.
    pub fn unlink(&mut self, token: u64) -> Option<(Follow, usize)> {
        let f = self.by_token.remove(&token)?;
        let left = self.drop_index(token, f.conn.key);
        Some((f, left))
    }

    fn drop_index(&mut self, token: u64, key: usize) -> usize {
        let Some(list) = self.by_conn.get_mut(&key) else {
            return 0;
        };
        list.retain(|t| *t != token);
        let left = list.len();
        if left == 0 {
            self.by_conn.remove(&key);
        }
        left
    }

    /// Tokens followed by connection `conn` (none if the slot now holds
    /// another connection).
    pub fn of(&self, conn: ConnRef) -> Vec<u64> {
        let Some(list) = self.by_conn.get(&conn.key) else {
            return Vec::new();
        };
        list.iter()
            .copied()
            .filter(|t| self.by_token.get(t).is_some_and(|f| f.conn == conn))
            .collect()
    }

    pub fn count(&self, conn: ConnRef) -> usize {
        self.of(conn).len()
    }

    /// Notes that event `seq` of follow `token` goes out; false when the
    /// follow is gone or `seq` went out already (or an earlier one did:
    /// events only move forward). Returns the connection to send to.
    pub fn forward(&mut self, token: u64, seq: u64) -> Option<ConnRef> {
        match self.by_token.get_mut(&token) {
            Some(f) if seq > f.last_seq => {
                f.last_seq = seq;
                Some(f.conn)
            }
            _ => None,
        }
    }

    /// The connection following `token`, if any (for what is sent
    /// outside the event sequence).
    pub fn conn_of(&self, token: u64) -> Option<ConnRef> {
        self.by_token.get(&token).map(|f| f.conn)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        debug_assert_eq!(
            self.by_token.len(),
            self.by_conn.values().map(Vec::len).sum::<usize>()
        );
        self.by_token.len()
    }
}
