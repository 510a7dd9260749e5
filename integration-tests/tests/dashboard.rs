//! The dashboard in a real browser: headless Chromium driven over WebDriver
//! (chromedriver on a loopback port) against the real `ota-server` with a
//! fleet of simulated devices. An operator's screen, end to end: log in,
//! watch the fleet update without reloading, a canary roll back and the
//! rollout pause by itself, be refused as a viewer, resume as an operator.
//! Screenshots of each page go to `target/dashboard-shots/`.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`./test` installs them);
//! without them this test fails, it does not skip.

use fantoccini::{Client, ClientBuilder, Locator};
use integration_tests::device::SimDevice;
use integration_tests::fixture::Fixture;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One failure in a wave pauses it (as in tests/rollout.rs).
const STRICT_SERVER: &str = "[rollouts]\nmax_failure_rate = 0.4\nmin_devices = 1\n";
/// Longest wait for the page to show something.
const PAGE_TIMEOUT: Duration = Duration::from_secs(60);

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}

/// `target/` of this build (the test runs as target/debug/deps/dashboard-*).
fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()))
        .unwrap_or_else(|| PathBuf::from("target"))
}

/// chromedriver, killed when dropped: also when the test fails before
/// the browser session exists.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// chromedriver and a headless Chromium session, with blocking helpers.
struct Browser {
    rt: tokio::runtime::Runtime,
    client: Option<Client>,
    // After `client`: the session is closed before its driver goes.
    _driver: Driver,
    base: String,
    shots: PathBuf,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start(base: &str) -> Browser {
        let chromium = on_path("chromium").expect(
            "chromium is not installed: the dashboard test needs Debian's chromium and \
             chromium-driver (./test installs them)",
        );
        let chromedriver = on_path("chromedriver")
            .expect("chromedriver is not installed (Debian package chromium-driver)");
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
            probe.local_addr().expect("addr").port()
        };
        let profile = tempfile::tempdir().expect("profile dir");
        let driver = Driver(
            Command::new(chromedriver)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start chromedriver"),
        );
        let driver_url = format!("http://127.0.0.1:{port}");
        let http = integration_tests::server::http_client().expect("HTTP client");
        let deadline = Instant::now() + Duration::from_secs(20);
        while http
            .get(format!("{driver_url}/status"))
            .send()
            .map(|r| !r.status().is_success())
            .unwrap_or(true)
        {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        // Without the background-networking flags Chromium keeps trying to
        // reach Google on a closed network and stalls.
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--window-size=1280,860",
        ]
        .into_iter()
        .map(String::from)
        .chain([format!("--user-data-dir={}", profile.path().display())])
        .collect::<Vec<_>>();
        let caps = serde_json::json!({
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
        });
        let caps = match caps {
            serde_json::Value::Object(map) => map,
            _ => unreachable!("a JSON object"),
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = rt
            .block_on(
                ClientBuilder::new(connector)
                    .capabilities(caps)
                    .connect(&driver_url),
            )
            .expect("a Chromium session through chromedriver");
        let shots = target_dir().join("dashboard-shots");
        std::fs::create_dir_all(&shots).expect("screenshot dir");
        Browser {
            rt,
            client: Some(client),
            _driver: driver,
            base: base.to_owned(),
            shots,
            _profile: profile,
        }
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("session open")
    }

    /// Opens the dashboard at `fragment` (`#/fleet`, ...).
    fn open(&self, fragment: &str) {
        let url = format!("{}/dashboard{fragment}", self.base);
        self.rt
            .block_on(self.client().goto(&url))
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// Follows an in-page link: only the fragment changes, no reload.
    fn navigate(&self, fragment: &str) {
        let script = format!("location.hash = {};", serde_json::json!(fragment));
        self.rt
            .block_on(self.client().execute(&script, vec![]))
            .expect("navigate");
    }

    fn click(&self, css: &str) {
        self.rt
            .block_on(async {
                self.client()
                    .wait()
                    .at_most(PAGE_TIMEOUT)
                    .for_element(Locator::Css(css))
                    .await?
                    .click()
                    .await
            })
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    fn type_into(&self, css: &str, text: &str) {
        self.rt
            .block_on(async {
                let field = self
                    .client()
                    .wait()
                    .at_most(PAGE_TIMEOUT)
                    .for_element(Locator::Css(css))
                    .await?;
                field.clear().await?;
                field.send_keys(text).await
            })
            .unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    /// The text of the first element matching `css` ("" while there is none).
    fn text(&self, css: &str) -> String {
        self.rt.block_on(async {
            match self.client().find(Locator::Css(css)).await {
                Ok(e) => e.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            }
        })
    }

    /// Waits until the text of `css` satisfies `ok`; on time-out saves a
    /// screenshot and fails naming what was expected and what was shown.
    fn wait_text(&self, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PAGE_TIMEOUT;
        loop {
            let text = self.text(css);
            if ok(&text) {
                return text;
            }
            if Instant::now() > deadline {
                self.save_screenshot("failure");
                panic!(
                    "{css}: waited {PAGE_TIMEOUT:?} for {what}; it shows {text:?}; \
                     screenshot in {}",
                    self.shots.display()
                );
            }
            std::thread::sleep(Duration::from_millis(150));
        }
    }

    /// Saves a screenshot, after checking the page shows no leftovers of
    /// a script bug (a missing field rendered as text).
    fn shot(&self, name: &str) {
        let body = self.text("body");
        for leftover in ["null", "undefined", "NaN", "[object"] {
            assert!(
                !body.contains(leftover),
                "{leftover} on page {name}: {body}"
            );
        }
        self.save_screenshot(name);
    }

    fn save_screenshot(&self, name: &str) {
        let png = self
            .rt
            .block_on(self.client().screenshot())
            .expect("screenshot");
        std::fs::write(self.shots.join(format!("{name}.png")), png).expect("write screenshot");
    }

    fn log_in(&self, token: &str) {
        self.type_into("#token", token);
        self.click("#login-button");
        self.wait_text("#who", "the logged-in token", |t| !t.is_empty());
    }

    fn log_out(&self) {
        self.click("#logout");
        self.wait_text("#message", "the log-out", |t| t.contains("Logged out"));
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let _ = self.rt.block_on(client.close());
        }
    }
}

fn token(fx: &Fixture, name: &str, role: &str) -> String {
    fx.server
        .admin_command(&["token", "create", "--name", name, "--role", role])
        .expect("token create")
        .trim()
        .to_owned()
}

/// Runs devices side by side until each settles.
fn run_fleet(devices: &[&SimDevice], max_boots: usize) {
    std::thread::scope(|s| {
        for d in devices {
            s.spawn(move || {
                d.run_until_settled(max_boots)
                    .unwrap_or_else(|e| panic!("device {}: {e:#}", d.id))
            });
        }
    });
}

fn number(text: &str) -> u64 {
    text.trim().parse().unwrap_or(u64::MAX)
}

#[test]
fn an_operator_watches_a_rollout_pause_itself_and_resumes_it() {
    let started = Instant::now();
    // Targets signed for 10 days only: inside the 14 days the releases
    // page warns about.
    let fx =
        Fixture::with_options(&["--expires", "targets=10d"], Some(STRICT_SERVER)).expect("fixture");
    let viewer = token(&fx, "night-shift", "viewer");
    let operator = token(&fx, "release-ops", "operator");
    let canary = fx.device("canary-1").expect("device");
    canary.set_rollout_groups(&["canary"]).expect("groups");
    let field: Vec<SimDevice> = (1..=3)
        .map(|i| fx.device(&format!("field-{i}")).expect("device"))
        .collect();
    let all: Vec<&SimDevice> = std::iter::once(&canary).chain(&field).collect();

    let b = Browser::start(&fx.server.url);
    b.open("");
    b.wait_text("#login", "the log-in form", |t| t.contains("Log in"));
    b.shot("01-login");

    // A wrong token is refused on the page.
    b.log_in_expecting_refusal("not-a-token");

    // The viewer's fleet page is open while the fleet updates to 1.1.0:
    // the counts move without a reload.
    b.log_in(&viewer);
    b.wait_text("#count-total", "an empty fleet", |t| t == "0");
    fx.release(
        "1.1.0",
        true,
        96 * 1024,
        &[integration_tests::fixture::HARDWARE_ID],
    )
    .expect("release 1.1.0");
    std::thread::scope(|s| {
        let updating = s.spawn(|| run_fleet(&all, 6));
        b.wait_text("#count-total", "four devices", |t| number(t) == 4);
        b.wait_text(
            "#version-counts [data-version=\"1.1.0\"] .n",
            "four devices on 1.1.0",
            |t| number(t) == 4,
        );
        updating.join().expect("fleet update");
    });
    let rows = b.text("#fleet-rows");
    for d in &all {
        assert!(rows.contains(&d.id), "{rows}");
    }
    assert!(rows.contains("1.1.0"), "{rows}");
    b.shot("02-fleet");

    // A broken release as a staged rollout: the canary rolls back, the
    // server pauses the rollout by itself, the rest never start it.
    let target = fx
        .staged_release(
            "1.2.0",
            false,
            96 * 1024,
            &["canary=canary@+0h", "fleet=100%@+0h"],
        )
        .expect("staged release 1.2.0");
    run_fleet(&[&canary], 6);
    let field_refs: Vec<&SimDevice> = field.iter().collect();
    run_fleet(&field_refs, 2);
    // Still everyone on 1.1.0: the canary went back to it.
    b.wait_text(
        "#version-counts [data-version=\"1.1.0\"] .n",
        "four devices still on 1.1.0",
        |t| number(t) == 4,
    );
    assert!(b
        .text("#version-counts")
        .lines()
        .all(|l| !l.contains("1.2.0")));

    // The search filter: only the canary.
    b.type_into("#filter-search", "canary");
    b.wait_text("#fleet-shown", "one device shown", |t| {
        t.starts_with("1 of 4")
    });
    assert!(b.text("#fleet-rows").contains("canary-1"));

    // The canary's page: its slot, version and the whole history.
    b.click("#fleet-rows a");
    let history = b.wait_text("#device-events", "the roll-back in the history", |t| {
        t.contains("rolled back")
    });
    for step in ["downloading", "installed", "rebooting", "committed"] {
        assert!(history.contains(step), "{step} in {history}");
    }
    assert_eq!(b.text("#device-version"), "1.1.0");
    assert!(!b.text("#device-slot").is_empty());
    b.shot("03-device");

    b.navigate("#/releases");
    let releases = b.wait_text("#releases", "both releases", |t| {
        t.contains("rootfs-1.1.0.img") && t.contains(&target)
    });
    assert!(releases.contains("sha256"), "{releases}");
    let roles = b.text("#roles");
    for role in ["root", "timestamp", "snapshot", "targets"] {
        assert!(roles.contains(role), "{role} in {roles}");
    }
    let flagged: Vec<&str> = roles
        .lines()
        .filter(|l| l.contains("expires soon"))
        .collect();
    assert!(
        flagged.len() == 1 && flagged[0].starts_with("targets"),
        "only targets is near expiry: {roles}"
    );
    assert!(b.text("#expiry-warning").contains("targets"));
    b.shot("04-releases");

    // The automatic pause, with its figures, and the viewer refused.
    b.navigate("#/rollouts");
    let card = format!("section.rollout[data-target=\"{target}\"]");
    let shown = b.wait_text(&card, "the automatic pause", |t| {
        t.contains("Paused") && t.contains("automatic")
    });
    assert!(shown.contains("canary-1"), "the failure is listed: {shown}");
    b.shot("05-rollout-paused");
    b.click(&format!("{card} button[data-action=resume]"));
    let refused = b.wait_text("#message", "the server's refusal", |t| {
        t.contains("refused")
    });
    assert!(refused.contains("needs role operator"), "{refused}");
    assert!(b.text(&card).contains("Paused"));
    b.shot("06-viewer-refused");

    // The operator resumes it.
    b.log_out();
    b.log_in(&operator);
    b.navigate("#/rollouts");
    b.wait_text(&card, "the paused rollout", |t| t.contains("Paused"));
    b.click(&format!("{card} button[data-action=resume]"));
    b.wait_text("#message", "the resume", |t| t.contains("resume of"));
    let resumed = b.wait_text(&format!("{card} h2"), "the rollout active", |t| {
        t.contains("active")
    });
    assert!(!resumed.contains("paused"), "{resumed}");
    assert!(
        b.text(&format!("{card} .history")).contains("release-ops"),
        "the history names who resumed"
    );
    b.shot("07-rollout-resumed");

    // Text from devices is shown as text, never run as markup.
    let hostile = "<img id=\"injected\" src=x onerror=\"document.title='owned'\">";
    let resp = integration_tests::server::http_client()
        .expect("client")
        .post(format!(
            "{}/api/v1/devices/intruder-1/reports",
            fx.server.url
        ))
        .json(
            &serde_json::json!({"hardware_id": "board-rev-a", "installed_version": "1.0.0",
            "status": "failed", "reason": hostile}),
        )
        .send()
        .expect("report");
    assert!(resp.status().is_success(), "{}", resp.status());
    b.navigate("#/fleet");
    b.type_into("#filter-search", "intruder");
    b.wait_text("#fleet-rows", "the hostile reason as text", |t| {
        t.contains(hostile)
    });
    let injected =
        b.rt.block_on(b.client().find_all(Locator::Css("#injected")))
            .expect("find");
    assert!(injected.is_empty(), "device text became markup");
    let title = b.rt.block_on(b.client().title()).expect("title");
    assert_eq!(title, "OTA fleet dashboard");

    let hold = fx
        .server
        .admin_get(&format!("/admin/v1/rollouts/{target}"))
        .expect("status");
    assert_eq!(hold["state"], "active", "{hold}");
    assert_eq!(hold["changed_by"], "release-ops", "{hold}");
    eprintln!(
        "dashboard test: {:.1} s; screenshots in {}",
        started.elapsed().as_secs_f64(),
        b.shots.display()
    );
}

impl Browser {
    fn log_in_expecting_refusal(&self, token: &str) {
        self.type_into("#token", token);
        self.click("#login-button");
        self.wait_text("#message", "the refusal", |t| t.contains("Log-in refused"));
        assert!(self.text("#who").is_empty());
    }
}
