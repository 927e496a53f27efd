//! A real browser for the web console's tests: Debian's Chromium, headless, driven
//! over WebDriver (`chromedriver` from Debian's `chromium-driver`) with fantoccini.
//! Each [`Browser::session`] has a fresh profile, so two sessions are two people
//! with their own cookies. [`axe`] runs axe-core (npm, pinned in
//! `tests/servers/browser`) in the page.

use anyhow::{Context, bail};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub use fantoccini;

/// axe-core's browser build.
pub fn axe_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../servers/browser/node_modules/axe-core/axe.min.js")
}

/// A running chromedriver, stopped on drop.
#[derive(Debug)]
pub struct Browser {
    driver: Child,
    port: u16,
    profiles: PathBuf,
}

impl Browser {
    pub fn start() -> anyhow::Result<Self> {
        let port = crate::free_port()?;
        use std::os::unix::process::CommandExt as _;
        // In a process group of its own: the browsers it starts go with it on drop,
        // even when a failing test never closed its sessions.
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("chromedriver is not installed; run scripts/setup.sh")?;
        let profiles = std::env::temp_dir().join(format!("ebb-browser-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&profiles)?;
        let browser = Self {
            driver,
            port,
            profiles,
        };
        if !crate::wait_for_port(port, Duration::from_secs(10)) {
            bail!("chromedriver does not listen on port {port}");
        }
        Ok(browser)
    }

    /// A new browser window with a profile of its own (no cookies).
    pub async fn session(&self) -> anyhow::Result<fantoccini::Client> {
        let profile = self
            .profiles
            .join(format!("profile-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&profile)?;
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                    "--window-size=1280,900", "--force-device-scale-factor=1",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        fantoccini::ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .context("starting Chromium through chromedriver")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        crate::kill_group(&mut self.driver);
        let _ = std::fs::remove_dir_all(&self.profiles);
    }
}

/// The serious and critical accessibility violations axe-core finds in the page
/// (`id: help — selectors`), after injecting it (WebDriver's scripts are not
/// subject to the page's Content-Security-Policy).
pub async fn axe(client: &fantoccini::Client) -> anyhow::Result<Vec<String>> {
    let source = std::fs::read_to_string(axe_path()).context("reading axe-core")?;
    client
        .execute(&source, vec![])
        .await
        .context("injecting axe-core")?;
    let found = client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             axe.run(document, { resultTypes: ['violations'] })
               .then(r => done(r.violations
                 .filter(v => v.impact === 'serious' || v.impact === 'critical')
                 .map(v => v.id + ' (' + v.impact + '): ' + v.help + ' — '
                   + v.nodes.map(n => n.target.join(' ')).join(', '))))
               .catch(e => done(['axe failed: ' + e]));",
            vec![],
        )
        .await
        .context("running axe-core")?;
    Ok(serde_json::from_value(found)?)
}
