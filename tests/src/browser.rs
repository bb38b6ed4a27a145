//! Headless Chromium driven over WebDriver (chromedriver, started here on a
//! free port), for the dashboard's browser tests.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder};

const INSTALL: &str = "apt-get install chromium chromium-driver (Debian's packages; scripts/test installs them)";

fn find_program(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|directory| directory.join(name))
        .find(|path| path.is_file())
}

/// A chromedriver process and one headless Chromium session; both end when dropped.
pub struct Browser {
    pub client: Client,
    driver: Child,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a window of `width` x `height`.
    pub async fn start(width: u32, height: u32) -> Browser {
        let chromedriver = find_program("chromedriver").unwrap_or_else(|| panic!("chromedriver is missing: {INSTALL}"));
        let chromium = ["chromium", "chromium-browser", "google-chrome"]
            .iter()
            .find_map(|name| find_program(name))
            .unwrap_or_else(|| panic!("chromium is missing: {INSTALL}"));
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port for chromedriver")
            .port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", chromedriver.display()));
        let webdriver = format!("http://127.0.0.1:{port}");
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": chromium,
                "args": [
                    "--headless=new",
                    // Tests run as root in containers, where Chromium's sandbox cannot start.
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    format!("--window-size={width},{height}"),
                ],
            }),
        );
        let client = crate::wait_for("chromedriver to start a session", Duration::from_secs(60), || {
            let webdriver = webdriver.clone();
            let capabilities = capabilities.clone();
            async move {
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                    .capabilities(capabilities)
                    .connect(&webdriver)
                    .await
                    .map_err(|error| error.to_string())
            }
        })
        .await;
        Browser { client, driver }
    }

    /// Saves a screenshot of the page as `<directory>/<name>.png`.
    pub async fn screenshot(&self, directory: &Path, name: &str) {
        let png = self.client.screenshot().await.expect("a screenshot");
        std::fs::create_dir_all(directory).expect("the screenshot directory");
        std::fs::write(directory.join(format!("{name}.png")), png).expect("the screenshot written");
    }

    /// The text of the first element matching the CSS selector, or why there is none.
    pub async fn text(&self, selector: &str) -> Result<String, String> {
        let element = self
            .client
            .find(fantoccini::Locator::Css(selector))
            .await
            .map_err(|error| format!("no {selector}: {error}"))?;
        element.text().await.map_err(|error| format!("{selector}: {error}"))
    }

    /// Ends the browser session; dropping then stops chromedriver.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Where the dashboard's screenshots go: `target/dashboard-screenshots/`.
pub fn screenshot_directory() -> PathBuf {
    crate::binary("ccfleet")
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/ccfleet")
        .join("dashboard-screenshots")
}
