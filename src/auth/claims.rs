//! The claims every JWT must meet, whatever signed it (HS256 or a key
//! from the identity provider's set): `exp` (required) and `nbf` within
//! the leeway, `aud` among the accepted audiences, `iss` the issuer.
//! One function for both paths, so both refuse for the same reasons.

use serde::{Deserialize, Serialize};

use super::AuthError;

/// What the claims are checked against.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rules {
    /// Accepted `aud` values; empty: `aud` is not checked.
    pub audience: Vec<String>,
    /// Required `iss`; `None`: not checked.
    pub issuer: Option<String>,
    /// Seconds of clock skew allowed on `exp` and `nbf`.
    pub leeway: u64,
}

/// `aud`: one string or a list (RFC 7519 §4.1.3).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Audience {
    /// One audience.
    One(String),
    /// Several: any one of them may be accepted.
    Many(Vec<String>),
}

impl Audience {
    fn contains(&self, want: &str) -> bool {
        match self {
            Audience::One(a) => a == want,
            Audience::Many(v) => v.iter().any(|a| a == want),
        }
    }
}

/// The claims this server reads and mints: `exp` is required.
#[derive(Deserialize, Serialize)]
pub struct Claims {
    /// Subject: who the token names; runs are owned by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Expiry (Unix seconds); past it, plus the leeway, the token is refused.
    pub exp: u64,
    /// Not before (Unix seconds), minus the leeway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issued at (Unix seconds); informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Audience; checked when [`Rules`] has audiences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
    /// Issuer; checked when [`Rules`] has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
}

impl Rules {
    /// Checks `c` at wall-clock `now_unix` (seconds).
    pub fn check(&self, c: &Claims, now_unix: u64) -> Result<(), AuthError> {
        if now_unix >= c.exp.saturating_add(self.leeway) {
            return Err(AuthError::Expired);
        }
        if c.nbf
            .is_some_and(|nbf| now_unix.saturating_add(self.leeway) < nbf)
        {
            return Err(AuthError::NotYetValid);
        }
        if !self.audience.is_empty()
            && !c
                .aud
                .as_ref()
                .is_some_and(|aud| self.audience.iter().any(|want| aud.contains(want)))
        {
            return Err(AuthError::Audience);
        }
        if let Some(iss) = &self.issuer
            && c.iss.as_deref() != Some(iss.as_str())
        {
            return Err(AuthError::Issuer);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn claims(json: &str) -> Claims {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn leeway_audience_and_issuer() {
        let rules = Rules {
            audience: vec!["app".into(), "app2".into()],
            issuer: Some("https://idp".into()),
            leeway: 30,
        };
        let ok = |extra: &str| {
            let c = claims(&format!(
                r#"{{"exp":{},"iss":"https://idp",{extra}}}"#,
                NOW + 60
            ));
            rules.check(&c, NOW)
        };
        assert_eq!(ok(r#""aud":"app""#), Ok(()));
        assert_eq!(ok(r#""aud":["x","app2"]"#), Ok(()));
        assert_eq!(ok(r#""aud":"other""#), Err(AuthError::Audience));
        assert_eq!(ok(r#""aud":[]"#), Err(AuthError::Audience));
        assert_eq!(ok(r#""sub":"no aud""#), Err(AuthError::Audience));
        let c = claims(&format!(r#"{{"exp":{},"aud":"app","iss":"x"}}"#, NOW + 60));
        assert_eq!(rules.check(&c, NOW), Err(AuthError::Issuer));
        let c = claims(&format!(r#"{{"exp":{},"aud":"app"}}"#, NOW + 60));
        assert_eq!(rules.check(&c, NOW), Err(AuthError::Issuer));
        // exp and nbf within the leeway pass; past it they do not.
        let at = |exp: u64, nbf: u64| {
            let c = claims(&format!(
                r#"{{"exp":{exp},"nbf":{nbf},"aud":"app","iss":"https://idp"}}"#
            ));
            rules.check(&c, NOW)
        };
        assert_eq!(at(NOW - 29, NOW - 100), Ok(()));
        assert_eq!(at(NOW - 30, NOW - 100), Err(AuthError::Expired));
        assert_eq!(at(NOW + 100, NOW + 30), Ok(()));
        assert_eq!(at(NOW + 100, NOW + 31), Err(AuthError::NotYetValid));
        // No rules: only exp and nbf, exactly.
        let c = claims(&format!(r#"{{"exp":{NOW}}}"#));
        assert_eq!(Rules::default().check(&c, NOW), Err(AuthError::Expired));
        assert_eq!(Rules::default().check(&c, NOW - 1), Ok(()));
        assert_eq!(
            Rules::default().check(&claims(&format!(r#"{{"exp":{}}}"#, u64::MAX)), u64::MAX - 1),
            Ok(())
        );
    }
}
