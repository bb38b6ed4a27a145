//! `ccfleet dashboard`: a web view of the fleet served on the admin's own
//! machine, talking to the server over the Admin API with the admin's
//! credential. `security` admits requests, `model` decides what is shown,
//! `pages`, `records` and `rollouts` fetch and render (askama templates under
//! `cli/templates/dashboard/`).

pub mod frame;
pub mod model;
pub mod pages;
pub mod records;
pub mod rollouts;
pub mod security;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ccfleet_proto::pb::admin_client::AdminClient;
use tokio::sync::watch;
use tonic::transport::Channel;

use self::security::{Admission, RequestFacts, Secrets};

#[derive(Debug, Clone, clap::Args)]
pub struct DashboardArgs {
    /// Address to serve on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Serve on a non-loopback address. The dashboard speaks plain HTTP:
    /// anyone on that network path can read the pages and the token.
    #[arg(long)]
    pub allow_remote: bool,
    /// Open the printed address in the desktop's web browser.
    #[arg(long)]
    pub open: bool,
}

/// What every handler shares.
pub struct Dashboard {
    pub client: AdminClient<Channel>,
    pub secrets: Secrets,
    /// The server's address, shown in the page footer.
    pub server_url: String,
    /// Turns true when the dashboard stops: live streams end with it.
    pub stopping: watch::Receiver<bool>,
}

/// Refuses what `--listen` must not be: a non-loopback address without
/// `--allow-remote`, and an unspecified one (the Host check needs the address).
pub fn check_listen(listen: SocketAddr, allow_remote: bool) -> anyhow::Result<()> {
    if listen.ip().is_unspecified() {
        anyhow::bail!(
            "--listen {listen}: give a specific address, not {}; the Host check accepts only the address served",
            listen.ip()
        );
    }
    if !listen.ip().is_loopback() && !allow_remote {
        anyhow::bail!(
            "--listen {listen} is not a loopback address: the dashboard serves plain HTTP with your admin rights; \
             pass --allow-remote to serve there anyway"
        );
    }
    Ok(())
}

/// Serves the dashboard until Ctrl-C or SIGTERM. Prints the address with its token on stdout.
pub async fn run(client: AdminClient<Channel>, server_url: String, args: DashboardArgs) -> anyhow::Result<()> {
    check_listen(args.listen, args.allow_remote)?;
    if !args.listen.ip().is_loopback() {
        eprintln!(
            "warning: serving the dashboard on {} (not loopback) over plain HTTP: anyone who can reach it and \
             read the traffic can act as you",
            args.listen
        );
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr().context("cannot read the listening address")?;
    let secrets = Secrets::new(address)?;
    let url = format!("http://{address}/?token={}", secrets.token);
    let (stop, stopping) = watch::channel(false);
    let dashboard = Arc::new(Dashboard {
        client,
        secrets,
        server_url,
        stopping,
    });
    {
        use std::io::Write;
        let mut stdout = std::io::stdout();
        writeln!(stdout, "dashboard at {url}").context("cannot write to stdout")?;
        stdout.flush().context("cannot write to stdout")?;
    }
    if args.open {
        if let Err(error) = open::that_detached(&url) {
            eprintln!("cannot open a browser ({error}); open the address above yourself");
        }
    }
    let app = pages::router(dashboard.clone()).layer(axum::middleware::from_fn_with_state(dashboard, guard));
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            stop_signal().await;
            // Live streams end now, so that the graceful stop does not wait for browsers.
            let _ = stop.send(true);
        })
        .await
        .context("the dashboard's server failed")?;
    eprintln!("dashboard stopped");
    Ok(())
}

async fn stop_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match terminate.as_mut() {
                Some(signal) => { signal.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}

/// The middleware in front of every route: admits or refuses, and puts the
/// security headers on every answer, refusals included.
async fn guard(State(dashboard): State<Arc<Dashboard>>, request: Request, next: Next) -> Response {
    let admission = {
        let text = |name: header::HeaderName| request.headers().get(name).and_then(|value| value.to_str().ok());
        let facts = RequestFacts {
            method_is_safe: request.method() == axum::http::Method::GET || request.method() == axum::http::Method::HEAD,
            path: request.uri().path(),
            query: request.uri().query(),
            host: text(header::HOST),
            cookie: text(header::COOKIE),
            origin: text(header::ORIGIN),
            sec_fetch_site: request
                .headers()
                .get("sec-fetch-site")
                .and_then(|value| value.to_str().ok()),
        };
        security::admit(&facts, &dashboard.secrets)
    };
    let mut response = match admission {
        Admission::Allow => next.run(request).await,
        Admission::SetCookieAndRedirect(path) => {
            let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, path)]).into_response();
            if let Ok(cookie) = HeaderValue::from_str(&dashboard.secrets.cookie()) {
                response.headers_mut().insert(header::SET_COOKIE, cookie);
            }
            response
        }
        Admission::Refuse(status, reason) => frame::refusal(status, &reason),
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(security::CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // The first address holds the token: never send an address to another
    // origin. (Not `no-referrer`: with it browsers send `Origin: null` on the
    // dashboard's own forms, and the origin check needs the real one.)
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_are_checked() {
        let check = |listen: &str, allow_remote: bool, expect: Result<(), &str>| {
            let result = check_listen(listen.parse().unwrap(), allow_remote).map_err(|error| error.to_string());
            match (result, expect) {
                (Ok(()), Ok(())) => {}
                (Err(error), Err(fragment)) => assert!(error.contains(fragment), "{listen}: {error}"),
                (result, expect) => panic!("{listen} allow_remote={allow_remote}: {result:?}, expected {expect:?}"),
            }
        };
        check("127.0.0.1:0", false, Ok(()));
        check("[::1]:8080", false, Ok(()));
        check("192.0.2.10:8080", false, Err("not a loopback address"));
        check("192.0.2.10:8080", true, Ok(()));
        check("0.0.0.0:8080", true, Err("give a specific address"));
        check("[::]:8080", false, Err("give a specific address"));
    }
}
