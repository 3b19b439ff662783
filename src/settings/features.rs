//! Settings that need a Cargo feature (`tls`, `idp`, `redis`): in a build
//! without it they still parse (a typo is still named as one, `pollcap
//! config` shows them), and are refused at start-up with one line naming
//! the setting and the feature.

use super::{ConfigError, Settings, StoreKind, display, find};

/// The first setting in use whose feature this build left out, refused.
pub(super) fn validate(s: &Settings) -> Result<(), ConfigError> {
    let (tls, idp, redis) = (
        cfg!(feature = "tls"),
        cfg!(feature = "idp"),
        cfg!(feature = "redis"),
    );
    let https = |url: Option<&str>| {
        url.and_then(|u| crate::httpc::Target::parse(u).ok())
            .is_some_and(|t| t.tls)
    };
    // (setting, in use, the feature it needs, whether it is built in)
    let needs = [
        ("tls_cert", s.tls_cert.is_some(), "tls", tls),
        ("tls_key", s.tls_key.is_some(), "tls", tls),
        (
            "agent_url",
            s.agent.url.as_ref().is_some_and(|t| t.tls),
            "tls",
            tls,
        ),
        ("agent_ca_file", s.agent.ca_file.is_some(), "tls", tls),
        ("jwks_url", s.idp.jwks_url.is_some(), "idp", idp),
        ("jwks_file", s.idp.jwks_file.is_some(), "idp", idp),
        ("jwks_url", https(s.idp.jwks_url.as_deref()), "tls", tls),
        (
            "store",
            matches!(s.store, StoreKind::Redis(_)),
            "redis",
            redis,
        ),
    ];
    let Some((name, _, feature, _)) = needs.iter().find(|n| n.1 && !n.3) else {
        return Ok(());
    };
    let d = find(name).expect("a declared setting");
    let shown = (d.show)(s).map_or_else(String::new, |v| display(d, &v));
    Err(ConfigError::new(
        &d.sources(),
        &shown,
        &format!(
            "needs feature `{feature}`, which is not built into this pollcap (build it \
             with --features {feature}, or the default features)"
        ),
    ))
}
