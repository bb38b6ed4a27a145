//! Who may use the dashboard: the per-run token (in the printed URL, then
//! an `HttpOnly`/`SameSite=Strict` cookie), the `Host` check against DNS
//! rebinding, the same-origin check on actions, the CSRF token and the
//! headers every answer carries. `admit` decides; the middleware acts.

use std::net::SocketAddr;

/// The secrets of one run of `ccfleet dashboard`, made at start and never written anywhere.
#[derive(Debug, Clone)]
pub struct Secrets {
    /// Opens the dashboard: in the printed URL, then in the cookie.
    pub token: String,
    /// Every action's form carries it.
    pub csrf: String,
    /// The cookie's name, per port: two dashboards on one machine do not overwrite each other's.
    pub cookie_name: String,
    /// `Host` header values accepted (the address served, and `localhost` for loopback).
    pub allowed_hosts: Vec<String>,
}

/// The Content-Security-Policy of every answer: only the dashboard's own
/// script, style and connections; no inline code, no frames, forms only to itself.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// 32 random bytes as hex.
pub fn random_secret() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|error| anyhow::anyhow!("cannot draw a random token: {error}"))?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

impl Secrets {
    pub fn new(address: SocketAddr) -> anyhow::Result<Secrets> {
        let mut allowed_hosts = vec![address.to_string()];
        if address.ip().is_loopback() {
            allowed_hosts.push(format!("localhost:{}", address.port()));
        }
        Ok(Secrets {
            token: random_secret()?,
            csrf: random_secret()?,
            cookie_name: format!("ccfleet_dashboard_{}", address.port()),
            allowed_hosts,
        })
    }

    /// The `Set-Cookie` value that admits this browser for the rest of the run.
    pub fn cookie(&self) -> String {
        format!("{}={}; Path=/; HttpOnly; SameSite=Strict", self.cookie_name, self.token)
    }
}

/// What a request brings that decides whether it is let in.
#[derive(Debug, Clone, Default)]
pub struct RequestFacts<'a> {
    pub method_is_safe: bool,
    pub path: &'a str,
    /// The query string without `?`, if any.
    pub query: Option<&'a str>,
    pub host: Option<&'a str>,
    pub cookie: Option<&'a str>,
    pub origin: Option<&'a str>,
    pub sec_fetch_site: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    Allow,
    /// The token in the URL was right: set the cookie and send the browser
    /// to the same place without the token in its address bar (nor history).
    SetCookieAndRedirect(String),
    Refuse(u16, String),
}

/// Constant-time equality for secrets.
pub fn same_secret(given: &str, expected: &str) -> bool {
    given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |difference, (a, b)| difference | (a ^ b))
            == 0
}

fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        (key == name).then_some(value)
    })
}

fn query_token(query: &str) -> Option<&str> {
    query.split('&').find_map(|pair| pair.strip_prefix("token="))
}

/// Decides whether a request is let in.
pub fn admit(facts: &RequestFacts, secrets: &Secrets) -> Admission {
    let Some(host) = facts.host else {
        return Admission::Refuse(400, "a Host header is required".into());
    };
    if !secrets.allowed_hosts.iter().any(|allowed| allowed == host) {
        return Admission::Refuse(
            400,
            format!("unexpected Host {host:?} (DNS rebinding protection): open the address ccfleet dashboard printed"),
        );
    }
    if let Some(token) = facts.query.and_then(query_token) {
        if facts.method_is_safe && same_secret(token, &secrets.token) {
            return Admission::SetCookieAndRedirect(facts.path.to_owned());
        }
        return Admission::Refuse(
            401,
            "wrong dashboard token: open the address ccfleet dashboard printed".into(),
        );
    }
    let cookie_ok = facts
        .cookie
        .and_then(|header| cookie_value(header, &secrets.cookie_name))
        .is_some_and(|value| same_secret(value, &secrets.token));
    if !cookie_ok {
        return Admission::Refuse(
            401,
            "not signed in to this dashboard: open the address (with its token) that ccfleet dashboard printed".into(),
        );
    }
    if !facts.method_is_safe {
        // Actions only from the dashboard's own pages: browsers send Origin
        // (and Sec-Fetch-Site) with every POST; a page of another origin,
        // another port of this machine included, is refused.
        let expected_origin = format!("http://{host}");
        if facts.origin.is_some_and(|origin| origin != expected_origin) {
            return Admission::Refuse(403, "cross-origin request refused".into());
        }
        if facts
            .sec_fetch_site
            .is_some_and(|site| site != "same-origin" && site != "none")
        {
            return Admission::Refuse(403, "cross-site request refused".into());
        }
    }
    Admission::Allow
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets() -> Secrets {
        Secrets {
            token: "t0k3n".into(),
            csrf: "csrf".into(),
            cookie_name: "ccfleet_dashboard_8080".into(),
            allowed_hosts: vec!["127.0.0.1:8080".into(), "localhost:8080".into()],
        }
    }

    fn check(facts: RequestFacts, expect: Admission) {
        assert_eq!(admit(&facts, &secrets()), expect, "{facts:?}");
    }

    const COOKIE: &str = "other=1; ccfleet_dashboard_8080=t0k3n";

    fn get<'a>(host: &'a str, cookie: Option<&'a str>) -> RequestFacts<'a> {
        RequestFacts {
            method_is_safe: true,
            path: "/matrix",
            host: Some(host),
            cookie,
            ..RequestFacts::default()
        }
    }

    #[test]
    fn only_the_token_holder_on_the_right_host_gets_in() {
        check(get("127.0.0.1:8080", Some(COOKIE)), Admission::Allow);
        check(get("localhost:8080", Some(COOKIE)), Admission::Allow);
        let refused = |facts: RequestFacts, status: u16| {
            let answer = admit(&facts, &secrets());
            assert!(
                matches!(answer, Admission::Refuse(code, _) if code == status),
                "{facts:?}: {answer:?}"
            );
        };
        refused(get("evil.example:8080", Some(COOKIE)), 400);
        refused(get("127.0.0.1:8081", Some(COOKIE)), 400);
        refused(
            RequestFacts {
                host: None,
                ..get("", None)
            },
            400,
        );
        refused(get("127.0.0.1:8080", None), 401);
        refused(get("127.0.0.1:8080", Some("ccfleet_dashboard_8080=t0k3m")), 401);
        refused(get("127.0.0.1:8080", Some("ccfleet_dashboard_8081=t0k3n")), 401);
        refused(get("127.0.0.1:8080", Some("ccfleet_dashboard_8080=t0k3n0")), 401);
        // The token in the URL sets the cookie, and only on a GET.
        check(
            RequestFacts {
                query: Some("token=t0k3n"),
                ..get("127.0.0.1:8080", None)
            },
            Admission::SetCookieAndRedirect("/matrix".into()),
        );
        refused(
            RequestFacts {
                query: Some("token=wrong"),
                ..get("127.0.0.1:8080", None)
            },
            401,
        );
        refused(
            RequestFacts {
                query: Some("token=t0k3n"),
                method_is_safe: false,
                ..get("127.0.0.1:8080", None)
            },
            401,
        );
    }

    #[test]
    fn actions_come_only_from_the_same_origin() {
        let post = |origin: Option<&'static str>, site: Option<&'static str>| RequestFacts {
            method_is_safe: false,
            origin,
            sec_fetch_site: site,
            ..get("127.0.0.1:8080", Some(COOKIE))
        };
        check(
            post(Some("http://127.0.0.1:8080"), Some("same-origin")),
            Admission::Allow,
        );
        check(post(None, None), Admission::Allow);
        for (origin, site) in [
            (Some("http://evil.example"), Some("cross-site")),
            (Some("http://127.0.0.1:9999"), Some("same-site")),
            (Some("null"), None),
            (None, Some("same-site")),
        ] {
            assert!(
                matches!(admit(&post(origin, site), &secrets()), Admission::Refuse(403, _)),
                "{origin:?} {site:?}"
            );
        }
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("ab", "abc"));
        assert!(!same_secret("", "abc"));
        let secret = random_secret().unwrap();
        assert_eq!(secret.len(), 64);
        assert_ne!(secret, random_secret().unwrap());
    }
}
