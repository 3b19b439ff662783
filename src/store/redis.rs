//! The Redis run store: not in this build yet (the next commit adds it);
//! `--store redis://…` is refused at start-up meanwhile.

use tungstenite::Utf8Bytes;

use super::{
    Deliveries, Follower, RedisTarget, ResumeLimits, ResumeRequest, Resumed, RunStart, StoreStats,
};

pub struct RedisStore {
    stats: StoreStats,
}

impl RedisStore {
    pub fn start(
        target: &RedisTarget,
        _limits: ResumeLimits,
        _deliveries: Deliveries,
    ) -> std::io::Result<RedisStore> {
        Err(std::io::Error::other(format!(
            "store {target:?}: the Redis store is not in this build yet"
        )))
    }

    pub fn stats(&self) -> &StoreStats {
        &self.stats
    }

    pub fn begin(&self, _run: &RunStart) {}

    pub fn append(&self, _id: &str, _seq: u64, _text: &Utf8Bytes) {}

    pub fn finish(&self, _id: &str, _last_seq: u64) {}

    pub fn resume(&self, _req: &ResumeRequest, _subject: Option<&str>, _f: Follower) -> Resumed {
        Resumed::Unavailable("the Redis store is not in this build yet")
    }

    pub fn unfollow(&self, _f: Follower) {}

    pub fn is_up(&self) -> bool {
        false
    }
}
