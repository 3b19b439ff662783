//! W3C Trace Context (`traceparent`): the trace an upgrade request came
//! with, and a child of it (or a new trace) for each upstream request, so
//! that an agent's logs and pollcap's can be joined on the trace id.

use std::fmt;

/// A trace: its id and flags (the parent id is per request).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Trace {
    id: [u8; 16],
    flags: u8,
}

impl fmt::Debug for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Trace({})", hex(&self.id))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn random<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut b = [0u8; N];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        // Trace ids need to be unique, not secret: a hashed counter will do.
        use std::hash::{BuildHasher, Hasher};
        for chunk in b.chunks_mut(8) {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_usize(chunk.as_ptr() as usize);
            let v = h.finish().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
    b
}

impl Trace {
    /// The trace of a `traceparent` header value (version `00` format;
    /// a later version is read by its first four fields, as the
    /// recommendation says). `None` for anything invalid.
    pub fn parse(header: &str) -> Option<Trace> {
        let mut parts = header.trim().split('-');
        let version = parts.next()?;
        let id = parts.next()?;
        let parent = parts.next()?;
        let flags = parts.next()?;
        let version: [u8; 1] = unhex(version)?;
        if version[0] == 0xff || (version[0] == 0 && parts.next().is_some()) {
            return None;
        }
        let id: [u8; 16] = unhex(id)?;
        let parent: [u8; 8] = unhex(parent)?;
        let flags: [u8; 1] = unhex(flags)?;
        if id == [0; 16] || parent == [0; 8] {
            return None;
        }
        Some(Trace {
            id,
            flags: flags[0],
        })
    }

    /// A new trace, sampled (an agent's tracing then records it).
    pub fn new() -> Trace {
        Trace {
            id: random(),
            flags: 1,
        }
    }

    /// The trace id, 32 hex digits (what logs are joined on).
    pub fn id(&self) -> String {
        hex(&self.id)
    }

    /// A `traceparent` for one request in this trace: a new parent id.
    pub fn child(&self) -> String {
        let parent: [u8; 8] = random();
        format!("00-{}-{}-{:02x}", hex(&self.id), hex(&parent), self.flags)
    }
}

impl Default for Trace {
    fn default() -> Trace {
        Trace::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_is_continued_and_anything_else_starts_anew() {
        let h = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = Trace::parse(h).unwrap();
        assert_eq!(t.id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let child = t.child();
        let parts: Vec<&str> = child.split('-').collect();
        assert_eq!(
            (parts[0], parts[1], parts[3]),
            ("00", t.id().as_str(), "01")
        );
        assert_ne!(parts[2], "00f067aa0ba902b7", "a new parent id per request");
        assert_eq!(Trace::parse(&child), Some(t));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(Trace::parse(bad), None, "{bad}");
        }
        // A later version: its first four fields.
        assert!(
            Trace::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what").is_some()
        );
        let (a, b) = (Trace::new(), Trace::new());
        assert_ne!(a.id(), b.id());
        assert_eq!(a.id().len(), 32);
    }
}
