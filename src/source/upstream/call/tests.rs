//! The call's decisions that need no socket: whom a failure is held
//! against, and the message a refusal gives.

use super::*;

fn call() -> Call {
    let target = crate::httpc::Target::parse("http://127.0.0.1:9/agent").unwrap();
    let d = Duration::from_secs(1);
    let cfg = Arc::new(UpstreamConfig {
        target: target.clone(),
        authorization: None,
        #[cfg(feature = "tls")]
        tls: None,
        timeouts: super::super::AgentTimeouts {
            connect: d,
            response: d,
            idle: d,
        },
        max_line: 1024,
        max_deltas: 1024,
    });
    let x = Exchange::new("POST", &target, &[], b"{}").unwrap();
    Call::new(cfg, x, Instant::now())
}

fn blame_of(out: &[Output]) -> Blame {
    match out {
        [Output::Failed { blame, .. }] => *blame,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_failure_of_this_side_is_not_the_agents() {
    let now = Instant::now();
    let (mut c, mut out) = (call(), Vec::new());
    c.resolved(
        Err(Unresolved::local("name resolution is busy")),
        now,
        &mut out,
    );
    assert_eq!(blame_of(&out), Blame::Local);
    let (mut c, mut out) = (call(), Vec::new());
    let nx = Unresolved {
        message: "no address".into(),
        local: false,
    };
    c.resolved(Err(nx), now, &mut out);
    assert_eq!(blame_of(&out), Blame::Agent);
    let (mut c, mut out) = (call(), Vec::new());
    c.fail_here("cannot watch the agent's socket".into(), &mut out);
    assert_eq!(blame_of(&out), Blame::Local);
    assert!(c.is_done());
    c.fail_here("twice".into(), &mut out);
    assert_eq!(out.len(), 1, "a call ends once");
}

#[test]
fn a_shortage_of_descriptors_memory_or_ports_is_told_apart() {
    use crate::platform::is_local_shortage;
    #[cfg(unix)]
    {
        for code in [
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOBUFS,
            libc::EADDRNOTAVAIL,
        ] {
            assert!(is_local_shortage(&io::Error::from_raw_os_error(code)));
        }
        for code in [libc::ECONNREFUSED, libc::ETIMEDOUT, libc::EHOSTUNREACH] {
            assert!(!is_local_shortage(&io::Error::from_raw_os_error(code)));
        }
    }
    assert!(is_local_shortage(&io::ErrorKind::OutOfMemory.into()));
    assert!(!is_local_shortage(&io::ErrorKind::ConnectionRefused.into()));
}

#[test]
fn a_refusal_is_named_by_its_body_when_it_says_something() {
    assert_eq!(
        message_of(br#"{"detail":"Not authenticated"}"#).as_deref(),
        Some("Not authenticated")
    );
    assert_eq!(
        message_of(br#"{"detail":[{"loc":["body"],"msg":"field required"}]}"#).as_deref(),
        Some("field required")
    );
    assert_eq!(
        message_of(br#"{"error":{"message":"quota"}}"#).as_deref(),
        Some("quota")
    );
    assert_eq!(message_of(b"slow down").as_deref(), Some("slow down"));
    assert_eq!(message_of(b"<html>busy</html>"), None);
    assert_eq!(message_of(b""), None);
    let long = format!("{{\"message\":\"{}\"}}", "x".repeat(500));
    assert_eq!(message_of(long.as_bytes()).unwrap().len(), 200);
}
