//! The identity provider's key set, kept fresh off the reactors: loaded
//! at start-up (no key set: a start-up error), then refreshed by a helper
//! thread every `jwks_refresh` and at once when a token names an unknown
//! `kid` — those refreshes at most once every [`KID_REFRESH_EVERY`], so
//! made-up `kid`s cannot hammer the provider. A fetch that fails or
//! answers garbage leaves the last good set in use; the state (`up`) is
//! reported, and logged once per change.
//!
//! A `--jwks-file` is checked every [`FILE_CHECK_EVERY`] (or
//! `jwks_refresh`, if shorter) and on an unknown `kid`, and reloaded when
//! its size or modification time changed, as the TLS files are.
//!
//! A reactor only reads the current set (one read lock and an `Arc`
//! clone per token) and, on an unknown `kid`, raises a flag: it never
//! waits for a fetch.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use super::claims::{Claims, Rules};
use super::keys::KeySet;
use super::{AuthError, JwksView};
use crate::httpc::{self, Target};
use crate::settings::Idp;

/// The shortest time between two fetches an unknown `kid` starts.
pub const KID_REFRESH_EVERY: Duration = Duration::from_secs(30);
/// How often a key set file's size and modification time are checked.
pub const FILE_CHECK_EVERY: Duration = Duration::from_secs(5);
/// Deadlines and size cap of one key set fetch.
pub const FETCH_CONNECT: Duration = Duration::from_secs(5);
pub const FETCH_RESPONSE: Duration = Duration::from_secs(10);
pub const MAX_JWKS_BYTES: usize = 1 << 20;

enum Source {
    Url(Target),
    File(PathBuf),
}

/// What the refresher thread waits on: a kick (unknown `kid`) or the end.
#[derive(Default)]
struct Signal {
    /// (kicked, stop)
    state: Mutex<(bool, bool)>,
    cv: Condvar,
}

/// The key set in use and its refresh state.
pub struct Jwks {
    source: Source,
    /// The URL or path, for logs and errors.
    pub shown: String,
    current: RwLock<Arc<KeySet>>,
    up: AtomicBool,
    fetches_ok: AtomicU64,
    fetches_failed: AtomicU64,
    kid_refreshes: AtomicU64,
    signal: Arc<Signal>,
    /// The file's (size, mtime) when last loaded.
    stamp: Mutex<Option<(u64, SystemTime)>>,
    tls: Option<httpc::TlsConfig>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("source", &self.shown)
            .field("view", &self.view())
            .finish()
    }
}

impl Drop for Jwks {
    fn drop(&mut self) {
        let mut st = self.signal.state.lock().unwrap_or_else(|p| p.into_inner());
        st.1 = true;
        self.signal.cv.notify_all();
    }
}

#[cfg(not(feature = "tls"))]
fn https_config() -> Result<httpc::TlsConfig, String> {
    Err("an https:// key set needs feature `tls`, which this build does not have".into())
}

#[cfg(feature = "tls")]
fn https_config() -> Result<httpc::TlsConfig, String> {
    let roots = crate::tls::roots(None)?;
    let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// One GET of `url` on this (helper) thread: connect and response
/// deadlines, a size cap, and a 200 required.
pub fn fetch(
    target: &Target,
    tls: Option<&httpc::TlsConfig>,
    connect: Duration,
    response: Duration,
    max_bytes: usize,
) -> Result<Vec<u8>, String> {
    let limits = httpc::Limits {
        connect,
        response,
        max_body: max_bytes,
    };
    let headers = [("accept", "application/json")];
    let got = httpc::fetch(target, "GET", &headers, &[], limits, tls).map_err(|e| e.to_string())?;
    if got.head.status != 200 {
        return Err(format!("HTTP status {}", got.head.status));
    }
    Ok(got.body)
}

impl Jwks {
    /// Loads the key set `idp` names (blocking: start-up) and starts its
    /// refresher thread. `Err` names the source and the problem.
    pub fn start(idp: &Idp) -> Result<Arc<Jwks>, String> {
        let (source, shown) = match (&idp.jwks_url, &idp.jwks_file) {
            (Some(url), _) => (
                Source::Url(Target::parse(url).map_err(|e| e.to_string())?),
                url.clone(),
            ),
            (None, Some(path)) => (Source::File(path.clone()), path.display().to_string()),
            (None, None) => return Err("no key set configured".into()),
        };
        let tls = match &source {
            Source::Url(t) if t.tls => Some(https_config()?),
            _ => None,
        };
        let mut jwks = Jwks {
            source,
            shown,
            current: RwLock::new(Arc::new(KeySet::empty())),
            up: AtomicBool::new(true),
            fetches_ok: AtomicU64::new(0),
            fetches_failed: AtomicU64::new(0),
            kid_refreshes: AtomicU64::new(0),
            signal: Arc::default(),
            stamp: Mutex::new(None),
            tls,
        };
        let first = jwks.load()?;
        tracing::info!(
            "key set loaded from {}: {} keys{}",
            jwks.shown,
            first.len(),
            skipped_note(&first)
        );
        jwks.fetches_ok.store(1, Relaxed);
        jwks.current = RwLock::new(Arc::new(first));
        let jwks = Arc::new(jwks);
        let every = match jwks.source {
            Source::Url(_) => idp.jwks_refresh,
            Source::File(_) => idp.jwks_refresh.min(FILE_CHECK_EVERY),
        };
        let weak = Arc::downgrade(&jwks);
        let signal = jwks.signal.clone();
        std::thread::Builder::new()
            .name("pollcap-jwks".into())
            .spawn(move || refresher(weak, signal, every))
            .map_err(|e| format!("cannot start the key set refresher: {e}"))?;
        Ok(jwks)
    }

    /// Fetches or reads the key set now (on the calling thread).
    fn load(&self) -> Result<KeySet, String> {
        match &self.source {
            Source::Url(t) => {
                let body = fetch(
                    t,
                    self.tls.as_ref(),
                    FETCH_CONNECT,
                    FETCH_RESPONSE,
                    MAX_JWKS_BYTES,
                )?;
                KeySet::parse(&body)
            }
            Source::File(path) => {
                let stamp = file_stamp(path)?;
                let text = std::fs::read(path).map_err(|e| format!("cannot be read: {e}"))?;
                if text.len() > MAX_JWKS_BYTES {
                    return Err(format!("is over {MAX_JWKS_BYTES} bytes"));
                }
                let set = KeySet::parse(&text)?;
                *self.stamp.lock().unwrap_or_else(|p| p.into_inner()) = Some(stamp);
                Ok(set)
            }
        }
    }

    /// Whether a refresh would read anything new: always for a URL; for a
    /// file, when its size or modification time changed (or it vanished).
    fn changed(&self) -> bool {
        match &self.source {
            Source::Url(_) => true,
            Source::File(path) => {
                let old = *self.stamp.lock().unwrap_or_else(|p| p.into_inner());
                file_stamp(path).ok() != old
            }
        }
    }

    /// One refresh: the new set replaces the old one, or the old one stays
    /// and the state goes down (logged once per change).
    fn refresh(&self, why: &str) {
        if !self.changed() {
            return self.set_up(Ok(self.current().len()));
        }
        match self.load() {
            Ok(set) => {
                self.fetches_ok.fetch_add(1, Relaxed);
                tracing::debug!("key set refreshed ({why}): {} keys", set.len());
                let n = set.len();
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
                self.set_up(Ok(n));
            }
            Err(e) => {
                self.fetches_failed.fetch_add(1, Relaxed);
                tracing::debug!("key set refresh ({why}) from {} failed: {e}", self.shown);
                self.set_up(Err(e));
            }
        }
    }

    /// Records the outcome of a refresh; one log line per change of state.
    fn set_up(&self, outcome: Result<usize, String>) {
        let up = outcome.is_ok();
        if self.up.swap(up, Relaxed) == up {
            return;
        }
        match outcome {
            Ok(keys) => {
                tracing::info!(
                    "key set from {} is reachable again ({keys} keys)",
                    self.shown
                )
            }
            Err(e) => tracing::warn!(
                "key set from {} could not be refreshed: {e}; the last good set ({} keys) \
                 stays in use (/health: degraded)",
                self.shown,
                self.current().len()
            ),
        }
    }

    /// The set in use now.
    pub fn current(&self) -> Arc<KeySet> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Verifies a token whose header named `alg` and `kid`. An unknown
    /// `kid` asks the refresher for a new set (it never waits for it).
    pub fn verify(
        &self,
        token: &str,
        alg: &str,
        kid: Option<&str>,
        rules: &Rules,
        now_unix: u64,
    ) -> Result<Claims, AuthError> {
        let r = self.current().verify(token, alg, kid, rules, now_unix);
        if r.as_ref().err() == Some(&AuthError::UnknownKey) && kid.is_some() {
            let mut st = self.signal.state.lock().unwrap_or_else(|p| p.into_inner());
            if !st.0 {
                st.0 = true;
                self.signal.cv.notify_one();
            }
        }
        r
    }

    pub fn view(&self) -> JwksView {
        JwksView {
            up: self.up.load(Relaxed),
            keys: self.current().len() as u64,
            fetches_ok: self.fetches_ok.load(Relaxed),
            fetches_failed: self.fetches_failed.load(Relaxed),
            kid_refreshes: self.kid_refreshes.load(Relaxed),
        }
    }
}

fn skipped_note(set: &KeySet) -> String {
    match set.skipped {
        0 => String::new(),
        n => format!(" ({n} unusable skipped)"),
    }
}

fn file_stamp(path: &std::path::Path) -> Result<(u64, SystemTime), String> {
    let m = std::fs::metadata(path).map_err(|e| format!("cannot be read: {e}"))?;
    Ok((m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)))
}

/// The refresher: a scheduled refresh every `every`, and one on a kick
/// (unknown `kid`) at most every [`KID_REFRESH_EVERY`]. Ends when the
/// key set is dropped.
fn refresher(jwks: Weak<Jwks>, signal: Arc<Signal>, every: Duration) {
    let mut next = Instant::now() + every;
    let mut last_kick: Option<Instant> = None;
    loop {
        let kicked = {
            let mut st = signal.state.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if st.1 {
                    return;
                }
                let now = Instant::now();
                let kick_at =
                    st.0.then(|| last_kick.map_or(now, |t| t + KID_REFRESH_EVERY));
                let due = kick_at.map_or(next, |k| k.min(next));
                if now >= due {
                    let kicked = kick_at.is_some_and(|k| now >= k);
                    if kicked {
                        st.0 = false;
                    }
                    break kicked;
                }
                st = signal
                    .cv
                    .wait_timeout(st, due - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        };
        let Some(jwks) = jwks.upgrade() else {
            return;
        };
        // The schedule follows `every` alone: a kick does not move it.
        if kicked {
            last_kick = Some(Instant::now());
            jwks.kid_refreshes.fetch_add(1, Relaxed);
            jwks.refresh("a token named an unknown kid");
        } else {
            next = Instant::now() + every;
            jwks.refresh("scheduled");
        }
    }
}
