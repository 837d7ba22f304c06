//! `kubectl sluice ui` in a real browser: Debian's headless Chromium driven over WebDriver (chromedriver, through
//! fantoccini), against the plugin's server started the way users start it (`kubectl sluice ui`, found by
//! kubectl's plugin discovery) on the local control plane, with the operator's FlowRun runtime in this process
//! and SDK workers claiming from its broker. `tests/scripts/install-browser.sh` installs Chromium and
//! chromedriver with apt-get when they are missing. Run with
//! `tests/scripts/with-cluster.sh cargo test -p kubectl-sluice --test ui`.
//!
//! Covered: the list shows a running flow, live; its DAG page shows each step's phase and follows the run
//! without a reload when a step finishes; a signal sent from the page (its JSON checked first) completes the
//! waiting step; cancel from the page; an action the user may not do shows the API server's Forbidden message
//! as it wrote it; requests with a foreign Host or Origin, or without the session token, are refused. The DAG
//! page of examples/order-flow.yaml is saved as a screenshot (`make ui-screenshot` copies it to docs/images),
//! and the render times of a 200-step DAG and a 5,000-instance forEach are measured and printed.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use fantoccini::{Client as Browser, ClientBuilder, Locator};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use sluice_api::{FlowPhase, FlowRun, StepPhase};
use sluice_e2e::{
    InProcessOperator, TestNamespace, cluster, free_port, install_crds, kubeconfig_path, kubectl,
    kubectl_path, repo_root, wait_for,
};
use sluice_worker::{Config, StepContext, StepError, Worker};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

const WAIT: Duration = Duration::from_secs(90);

// ---- the browser ------------------------------------------------------------------------------------------

/// chromedriver's path, installing Chromium and chromedriver (once per test binary) when missing.
fn chromedriver_path() -> Result<PathBuf> {
    static PATH: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PATH.get_or_init(|| {
        let script = repo_root().join("tests/scripts/install-browser.sh");
        let out = std::process::Command::new("bash")
            .arg(&script)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("running {}: {e}", script.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let last = stdout.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
        if !out.status.success() || !Path::new(last.trim()).is_file() {
            return Err(format!(
                "{} failed ({}): {stdout}",
                script.display(),
                out.status
            ));
        }
        Ok(PathBuf::from(last.trim()))
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// A headless Chromium session and its chromedriver. Dropped (a test ending, or failing before it closed the
/// session), it kills chromedriver's process group, so no browser outlives the test.
struct Chrome {
    browser: Browser,
    driver: Child,
}

impl Drop for Chrome {
    fn drop(&mut self) {
        if let Some(pid) = self.driver.id() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status();
        }
    }
}

async fn chrome() -> Result<Chrome> {
    let driver_path = tokio::task::spawn_blocking(chromedriver_path).await??;
    let port = free_port()?;
    let driver = Command::new(driver_path)
        .arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // A process group of its own: the browsers it starts go with it (see Drop for Chrome).
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .context("starting chromedriver")?;
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1440,1000", "--hide-scrollbars", "--no-first-run",
                     "--disable-extensions", "--lang=en-US"]
        }),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let browser = loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(b) => break b,
            // chromedriver is not listening yet.
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => bail!("no WebDriver session from chromedriver on port {port}: {e}"),
        }
    };
    browser.set_window_size(1440, 1000).await?;
    Ok(Chrome { browser, driver })
}

impl Chrome {
    /// Runs `script` (a function body; `arguments` are `args`) in the page.
    async fn js(&self, script: &str, args: Vec<Value>) -> Result<Value> {
        Ok(self.browser.execute(script, args).await?)
    }

    /// Polls `script` until it returns something truthy (returned), for at most `within`.
    async fn until(&self, what: &str, script: &str, within: Duration) -> Result<Value> {
        let deadline = Instant::now() + within;
        loop {
            let last = match self.browser.execute(script, vec![]).await {
                Ok(v) if !(v.is_null() || v == json!(false) || v == json!("")) => return Ok(v),
                Ok(v) => v,
                Err(e) => json!(e.to_string()),
            };
            if Instant::now() > deadline {
                let text = self.text("body").await.unwrap_or_default();
                bail!("timed out waiting for {what} (last: {last}); the page reads:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn text(&self, css: &str) -> Result<String> {
        Ok(self.browser.find(Locator::Css(css)).await?.text().await?)
    }

    /// Clicks the element, finding it again if a live update replaced it in between.
    async fn click(&self, css: &str) -> Result<()> {
        let mut tries = 0;
        loop {
            let el = self
                .browser
                .wait()
                .at_most(Duration::from_secs(20))
                .for_element(Locator::Css(css))
                .await
                .with_context(|| format!("no element {css}"))?;
            match el.click().await {
                Ok(()) => return Ok(()),
                Err(e) if tries < 5 && e.to_string().contains("stale element") => tries += 1,
                Err(e) => return Err(e).with_context(|| format!("clicking {css}")),
            }
        }
    }

    /// The phase the DAG shows for `step`.
    async fn node_phase(&self, step: &str) -> Result<String> {
        let v = self
            .js(
                "const g = [...document.querySelectorAll('#dag g.node')].find(n => n.dataset.step === arguments[0]);
                 return g ? g.dataset.phase : null;",
                vec![json!(step)],
            )
            .await?;
        Ok(v.as_str().unwrap_or_default().to_owned())
    }

    async fn wait_node_phase(&self, step: &str, phase: &str) -> Result<()> {
        self.until(
            &format!("step {step} to show {phase}"),
            &format!(
                "const g = [...document.querySelectorAll('#dag g.node')].find(n => n.dataset.step === {step:?});
                 return g && g.dataset.phase === {phase:?};"
            ),
            WAIT,
        )
        .await?;
        Ok(())
    }

    /// Opens `url` and waits until the page drew its data.
    async fn open_run(&self, url: &str) -> Result<()> {
        self.browser.goto(url).await?;
        let state = self
            .until(
                "the run page to render",
                "return document.body.dataset.rendered;",
                WAIT,
            )
            .await?;
        ensure!(
            state == json!("1"),
            "the run page failed to render: {}",
            self.text("main").await?
        );
        Ok(())
    }

    /// The text of the action result once it is not in progress, and whether it is an error.
    async fn action_result(&self) -> Result<(bool, String)> {
        let v = self
            .until(
                "the action's result",
                "const r = document.getElementById('action-result');
                 const busy = document.getElementById('actions').dataset.busy === '1';
                 return !busy && r && r.dataset.state ? [r.dataset.state, r.innerText] : null;",
                WAIT,
            )
            .await?;
        Ok((
            v[0] == json!("error"),
            v[1].as_str().unwrap_or_default().to_owned(),
        ))
    }
}

/// Saves a screenshot of the page as `target/ui/NAME.png` and returns its path.
async fn screenshot(chrome: &Chrome, name: &str) -> Result<PathBuf> {
    let png = chrome.browser.screenshot().await?;
    ensure!(png.starts_with(b"\x89PNG"), "not a PNG");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .context("target dir")?
        .join("ui");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.png"));
    std::fs::write(&path, &png)?;
    println!("screenshot: {} ({} bytes)", path.display(), png.len());
    Ok(path)
}

// ---- the server ---------------------------------------------------------------------------------------------

/// `kubectl sluice ui` running (killed when dropped).
struct Ui {
    url: String,
    port: u16,
    _child: Child,
}

fn plugin_path_env() -> Result<std::ffi::OsString> {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_kubectl-sluice"));
    ensure!(bin.is_file(), "{} was not built", bin.display());
    let mut paths = vec![bin.parent().context("binary directory")?.to_path_buf()];
    paths.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    Ok(std::env::join_paths(paths)?)
}

/// Starts `kubectl sluice ui --port 0 -n NAMESPACE` through kubectl (with `kubeconfig`, else the cluster's) and
/// reads the URL it prints.
async fn start_ui(namespace: &str, kubeconfig: Option<&Path>) -> Result<Ui> {
    let kubectl_bin = tokio::task::spawn_blocking(kubectl_path).await??;
    let config = match kubeconfig {
        Some(p) => p.to_path_buf(),
        None => tokio::task::spawn_blocking(kubeconfig_path).await??,
    };
    let mut child = Command::new(kubectl_bin)
        .args(["sluice", "ui", "--port", "0", "-n", namespace])
        .env("KUBECONFIG", &config)
        .env("PATH", plugin_path_env()?)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting kubectl sluice ui")?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let url = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(at) = line.find("http://127.0.0.1:") {
                let url = line[at..].split_whitespace().next().unwrap_or_default();
                return Ok::<_, anyhow::Error>(url.to_owned());
            }
        }
        bail!("kubectl sluice ui exited without printing its URL")
    })
    .await
    .context("kubectl sluice ui did not print its URL within 30s")??;
    // Keep reading stdout so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let port = url
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("no port in {url}"))?;
    Ok(Ui {
        url,
        port,
        _child: child,
    })
}

/// What a raw request got: status code and body.
struct Reply {
    status: u16,
    body: String,
}

/// One HTTP/1.1 request to the UI with exactly the given headers (the browser would not let a test forge Host
/// or Origin).
async fn raw(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Reply> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let mut req = format!("{method} {path} HTTP/1.1\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    stream.write_all(req.as_bytes()).await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut out)).await??;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status line in {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok(Reply { status, body })
}

// ---- the cluster side ---------------------------------------------------------------------------------------

struct Setup {
    ns: TestNamespace,
    api: Api<FlowRun>,
    _operator: InProcessOperator,
    worker: sluice_worker::ShutdownHandle,
}

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A namespace with the operator and a worker serving pool `pool` with `double` and the handlers of
/// examples/order-flow.yaml.
async fn setup(prefix: &str, pool: &str) -> Result<Setup> {
    init_logs();
    let client = cluster().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new(prefix).await?;
    let operator = InProcessOperator::start(ns.client(), ns.name()).await?;
    let config = Config::new(
        operator.broker_url(),
        format!("{}/{pool}", ns.name()),
        "ui-worker",
    );
    let worker = Worker::new(config)
        .concurrency(4)
        .handler("double", |_ctx: StepContext, input: Value| async move {
            let n = input["n"]
                .as_i64()
                .ok_or_else(|| StepError::fatal("BadInput", "n must be a number"))?;
            Ok(json!({ "n": n * 2 }))
        })
        .handler("charge_payment", |_ctx: StepContext, input: Value| async move {
            Ok(json!({ "chargeId": format!("ch_{}", input["orderId"].as_str().unwrap_or("?")), "amount": input["amount"] }))
        })
        .handler("reserve_inventory", |_ctx: StepContext, input: Value| async move {
            Ok(json!({ "sku": input["sku"], "reservation": format!("r-{}", input["line"]) }))
        })
        .handler("ship_order", |_ctx: StepContext, _input: Value| async move {
            Ok(json!({ "tracking": "TRACK-1" }))
        });
    let handle = worker.shutdown_handle();
    tokio::spawn(async move { worker.run_until(std::future::pending()).await });
    Ok(Setup {
        api: ns.api(),
        ns,
        _operator: operator,
        worker: handle,
    })
}

impl Setup {
    async fn create(&self, manifest: Value) -> Result<String> {
        let fr: FlowRun = serde_json::from_value(manifest)?;
        let created = self.api.create(&PostParams::default(), &fr).await?;
        Ok(created.metadata.name.unwrap_or_default())
    }

    async fn wait(
        &self,
        name: &str,
        what: &str,
        cond: impl Fn(&FlowRun) -> bool + Send + 'static,
    ) -> Result<FlowRun> {
        Ok(wait_for(
            &self.api,
            name,
            move |fr: Option<&FlowRun>| fr.is_some_and(&cond),
            WAIT,
            what,
        )
        .await?)
    }

    async fn finish(self) -> Result<()> {
        self.worker.shutdown();
        self.ns.cleanup().await?;
        Ok(())
    }
}

fn step_phase(fr: &FlowRun, step: &str) -> StepPhase {
    fr.status
        .as_ref()
        .and_then(|s| s.steps.get(step))
        .map(|s| s.phase)
        .unwrap_or_default()
}

fn run_phase(fr: &FlowRun) -> FlowPhase {
    fr.status.as_ref().and_then(|s| s.phase).unwrap_or_default()
}

/// `a`, then a wait for signal `approval`, then `b` doubling the signal's `n`; `c` after `a` and the wait.
fn approval_flow(name: &str) -> Value {
    json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
        "metadata": {"name": name, "labels": {"team": "ui-test"}},
        "spec": {
            "pool": "pool",
            "steps": [
                {"name": "a", "handler": "double", "input": {"n": 1}},
                {"name": "approval", "dependsOn": ["a"], "waitForSignal": {"name": "approval"}},
                {"name": "b", "dependsOn": ["approval"], "handler": "double",
                 "input": {"n": "${{ steps.approval.output.n }}"}},
                {"name": "c", "dependsOn": ["a", "approval"], "handler": "double",
                 "input": {"n": "${{ steps.a.output.n }}"}},
            ],
            "output": {"b": "${{ steps.b.output.n }}"}
        }
    })
}

// ---- the tests ----------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_list_and_the_dag_follow_a_run_and_its_buttons_steer_it() -> Result<()> {
    let s = setup("ui-live", "pool").await?;
    let ns = s.ns.name().to_owned();
    let name = s.create(approval_flow("approve-1")).await?;
    s.wait(&name, "step approval to wait for its signal", |fr| {
        step_phase(fr, "approval") == StepPhase::Waiting
    })
    .await?;
    let ui = start_ui(&ns, None).await?;
    let chrome = chrome().await?;
    let b = &chrome.browser;

    // The list shows the running flow, with its phase and progress.
    b.goto(&ui.url).await?;
    let row = format!("tr[data-run=\"{ns}/{name}\"]");
    chrome
        .until(
            "the run in the list, Running",
            &format!("const r = document.querySelector({row:?}); return r && r.dataset.phase === 'Running';"),
            WAIT,
        )
        .await?;
    let row_text = chrome.text(&row).await?;
    ensure!(
        row_text.contains("Running") && row_text.contains("1/4"),
        "{row_text}"
    );
    ensure!(row_text.contains("team=ui-test"), "{row_text}");
    // Filters: another phase hides it, the label shows it.
    b.find(Locator::Css("#filter-phase"))
        .await?
        .select_by_value("Failed")
        .await?;
    chrome
        .until(
            "the phase filter",
            &format!("return !document.querySelector({row:?});"),
            WAIT,
        )
        .await?;
    b.find(Locator::Css("#filter-phase"))
        .await?
        .select_by_value("")
        .await?;
    b.find(Locator::Css("#filter-label"))
        .await?
        .send_keys("team=ui-test")
        .await?;
    chrome
        .until(
            "the label filter",
            &format!("return !!document.querySelector({row:?});"),
            WAIT,
        )
        .await?;
    // A run created while the page is open appears without a reload (the list's watch).
    let second = s.create(approval_flow("approve-2")).await?;
    chrome
        .until(
            "a new run to appear live",
            &format!("return !!document.querySelector('tr[data-run=\"{ns}/{second}\"]');"),
            WAIT,
        )
        .await?;

    screenshot(&chrome, "list").await?;

    // The DAG page, reached from the list: each step's phase.
    chrome.click(&format!("{row} td.name a")).await?;
    chrome
        .until(
            "the run page",
            "return document.body.dataset.rendered === '1';",
            WAIT,
        )
        .await?;
    ensure!(b.current_url().await?.path() == format!("/runs/{ns}/{name}"));
    for (step, phase) in [
        ("a", "Succeeded"),
        ("approval", "Waiting"),
        ("b", "Pending"),
        ("c", "Pending"),
    ] {
        ensure!(
            chrome.node_phase(step).await? == phase,
            "step {step} should show {phase}"
        );
    }
    // The step panel: the finished step's worker, attempt and output.
    chrome.click("#dag g.node[data-step=\"a\"]").await?;
    chrome
        .until(
            "the step panel's output",
            "const o = document.getElementById('panel-output'); return o && o.textContent;",
            WAIT,
        )
        .await?;
    let panel = chrome.text("#step-panel").await?;
    ensure!(
        panel.contains("Succeeded") && panel.contains("ui-worker"),
        "{panel}"
    );
    ensure!(
        chrome.text("#panel-output").await?.contains("\"n\": 2"),
        "{panel}"
    );

    // Requests the browser would not make: a foreign Host (DNS rebinding), a foreign Origin (CSRF), no token.
    let own_host = format!("127.0.0.1:{}", ui.port);
    let page = raw(ui.port, "GET", "/", &[("Host", &own_host)], "").await?;
    ensure!(page.status == 200, "the page: {}", page.status);
    let token = page
        .body
        .split("name=\"sluice-token\" content=\"")
        .nth(1)
        .and_then(|t| t.split('"').next())
        .context("no token in the page")?
        .to_owned();
    ensure!(token.len() == 64, "{token}");
    let cancel_path = format!("/api/runs/{ns}/{name}/cancel");
    let rebound = raw(
        ui.port,
        "GET",
        "/api/runs",
        &[("Host", &format!("evil.example:{}", ui.port))],
        "",
    )
    .await?;
    ensure!(
        rebound.status == 403 && rebound.body.contains("is not this server's address"),
        "{}",
        rebound.body
    );
    let foreign = raw(
        ui.port,
        "POST",
        &cancel_path,
        &[
            ("Host", &own_host),
            ("Origin", "http://evil.example"),
            ("X-Sluice-Token", &token),
        ],
        "{}",
    )
    .await?;
    ensure!(
        foreign.status == 403 && foreign.body.contains("origin"),
        "{} {}",
        foreign.status,
        foreign.body
    );
    let foreign_read = raw(
        ui.port,
        "GET",
        "/api/runs",
        &[("Host", &own_host), ("Origin", "http://evil.example")],
        "",
    )
    .await?;
    ensure!(foreign_read.status == 403, "{}", foreign_read.status);
    let own_origin = format!("http://{own_host}");
    let tokenless = raw(
        ui.port,
        "POST",
        &cancel_path,
        &[("Host", &own_host), ("Origin", &own_origin)],
        "{}",
    )
    .await?;
    ensure!(
        tokenless.status == 403 && tokenless.body.contains("token"),
        "{}",
        tokenless.body
    );
    let wrong = raw(
        ui.port,
        "POST",
        &cancel_path,
        &[
            ("Host", &own_host),
            ("Origin", &own_origin),
            ("X-Sluice-Token", &"0".repeat(64)),
        ],
        "{}",
    )
    .await?;
    ensure!(wrong.status == 403, "{}", wrong.status);
    let list = raw(ui.port, "GET", "/api/runs", &[("Host", &own_host)], "").await?;
    ensure!(
        list.status == 200 && list.body.contains(&name),
        "{}",
        list.body
    );
    ensure!(
        !s.api.get(&name).await?.spec.cancel,
        "a refused request changed nothing"
    );

    // A signal from the page: invalid JSON is caught before anything is sent.
    chrome.js("window.__sameDocument = true;", vec![]).await?;
    let payload = b.find(Locator::Css("#signal-payload")).await?;
    payload.send_keys("{n: 5}").await?;
    let check = b.find(Locator::Css("#signal-check")).await?;
    ensure!(
        check.attr("class").await?.as_deref() == Some("bad"),
        "{}",
        check.text().await?
    );
    ensure!(check.text().await?.contains("Not valid JSON"));
    ensure!(
        !b.find(Locator::Css("#signal-send"))
            .await?
            .is_enabled()
            .await?
    );
    payload.clear().await?;
    payload.send_keys("{\"n\": 5}").await?;
    ensure!(
        b.find(Locator::Css("#signal-name"))
            .await?
            .prop("value")
            .await?
            .as_deref()
            == Some("approval")
    );
    chrome.click("#signal-send").await?;
    let (error, text) = chrome.action_result().await?;
    ensure!(
        !error && text.contains(&format!("flowrun/{name}: signal \"approval\" delivered")),
        "{text}"
    );
    // The page follows the run live: the wait completes, then b and c finish, with no reload.
    chrome.wait_node_phase("approval", "Succeeded").await?;
    chrome.wait_node_phase("b", "Succeeded").await?;
    chrome.wait_node_phase("c", "Succeeded").await?;
    chrome
        .until(
            "the run to show Succeeded",
            "return document.getElementById('run-phase').dataset.phase === 'Succeeded';",
            WAIT,
        )
        .await?;
    ensure!(
        chrome
            .js("return window.__sameDocument === true;", vec![])
            .await?
            == json!(true),
        "the page reloaded"
    );
    let fr = s.api.get(&name).await?;
    ensure!(fr.status.and_then(|s| s.output) == Some(json!({"b": 10})));
    ensure!(
        chrome
            .text("#signals-delivered")
            .await?
            .contains("{\"n\":5}")
    );

    // Cancel, from the second run's page (reached by URL), with its confirmation.
    s.wait(&second, "approve-2 to wait", |fr| {
        step_phase(fr, "approval") == StepPhase::Waiting
    })
    .await?;
    chrome
        .open_run(&format!("{}runs/{ns}/{second}", ui.url))
        .await?;
    chrome.click("#btn-cancel").await?;
    chrome.click("#btn-cancel-confirm").await?;
    let (error, text) = chrome.action_result().await?;
    ensure!(
        !error && text.contains(&format!("flowrun/{second}: spec.cancel false → true")),
        "{text}"
    );
    chrome
        .until(
            "the run to show Cancelled",
            "return document.getElementById('run-phase').dataset.phase === 'Cancelled';",
            WAIT,
        )
        .await?;
    chrome.wait_node_phase("approval", "Cancelled").await?;
    ensure!(run_phase(&s.api.get(&second).await?) == FlowPhase::Cancelled);

    chrome.browser.clone().close().await?;
    s.finish().await
}

/// A kubeconfig of the cluster's admin impersonating `user` (`as:` in the kubeconfig, like kubectl's `--as`).
fn impersonating_kubeconfig(dir: &Path, user: &str) -> Result<PathBuf> {
    let mut config = kube::config::Kubeconfig::read_from(kubeconfig_path()?)?;
    for named in &mut config.auth_infos {
        if let Some(info) = named.auth_info.as_mut() {
            info.impersonate = Some(user.to_owned());
        }
    }
    let path = dir.join("viewer.kubeconfig");
    // JSON is YAML: kubectl and the plugin read it as a kubeconfig.
    std::fs::write(&path, serde_json::to_vec(&config)?)?;
    Ok(path)
}

#[tokio::test]
async fn the_order_flow_page_is_captured_and_a_forbidden_action_shows_the_api_servers_message()
-> Result<()> {
    let s = setup("ui-order", "examples").await?;
    let ns = s.ns.name().to_owned();
    kubectl(["apply", "-n", &ns, "-f", "examples/order-flow.yaml"])
        .ok()
        .await?;
    let name = "order-1234";
    s.wait(name, "the order to wait for the manager's approval", |fr| {
        step_phase(fr, "approval") == StepPhase::Waiting
            && step_phase(fr, "reserve") == StepPhase::Succeeded
    })
    .await?;
    let ui = start_ui(&ns, None).await?;
    let chrome = chrome().await?;
    chrome
        .open_run(&format!("{}runs/{ns}/{name}", ui.url))
        .await?;
    for (step, phase) in [
        ("charge", "Succeeded"),
        ("reserve", "Succeeded"),
        ("approval", "Waiting"),
        ("cooling-off", "Pending"),
        ("ship", "Pending"),
    ] {
        ensure!(
            chrome.node_phase(step).await? == phase,
            "step {step} should show {phase}"
        );
    }
    // The forEach step is one node with its instance counts; its panel shows each instance.
    let reserve = chrome.text("#dag g.node[data-step=\"reserve\"]").await?;
    ensure!(
        reserve.contains("3/3") && reserve.contains("×3"),
        "{reserve}"
    );
    chrome.click("#dag g.node[data-step=\"reserve\"]").await?;
    chrome
        .until("the step's outputs", "const d = document.getElementById('panel-detail'); return d && d.innerText.includes('r-0');", WAIT)
        .await?;
    ensure!(
        chrome
            .text("#panel-instances")
            .await?
            .contains("3 succeeded")
    );
    // The README's picture (`make ui-screenshot` copies it to docs/images).
    screenshot(&chrome, "order-flow").await?;

    // A user who may read FlowRuns and Events but change nothing.
    let user = "sluice-ui-viewer";
    let roles: Api<Role> = s.ns.api();
    roles
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "flowrun-viewer"},
                "rules": [
                    {"apiGroups": ["sluice.dev"], "resources": ["flowruns"], "verbs": ["get", "list", "watch"]},
                    {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "list", "watch"]},
                ]
            }))?,
        )
        .await?;
    let bindings: Api<RoleBinding> = s.ns.api();
    bindings
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "flowrun-viewer"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "flowrun-viewer"},
                "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": user}],
            }))?,
        )
        .await?;
    let viewer_config = impersonating_kubeconfig(s.ns.scratch_dir(), user)?;
    let viewer = start_ui(&ns, Some(&viewer_config)).await?;
    // RBAC reaches the authorizer a moment after the binding: wait until the viewer can read the run.
    let host = format!("127.0.0.1:{}", viewer.port);
    let deadline = Instant::now() + WAIT;
    loop {
        let r = raw(
            viewer.port,
            "GET",
            &format!("/api/runs/{ns}/{name}"),
            &[("Host", &host)],
            "",
        )
        .await?;
        if r.status == 200 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the viewer still cannot read the run: {} {}",
            r.status,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    chrome
        .open_run(&format!("{}runs/{ns}/{name}", viewer.url))
        .await?;
    chrome.click("#btn-suspend").await?;
    let (error, text) = chrome.action_result().await?;
    let expected = format!(
        "flowruns.sluice.dev \"{name}\" is forbidden: User \"{user}\" cannot patch resource \"flowruns\" in API group \"sluice.dev\" in the namespace \"{ns}\""
    );
    ensure!(
        error && text.contains("Forbidden (403)") && text.contains(&expected),
        "{text}"
    );
    // The signal needs the status subresource, which the viewer may not patch either.
    b_send_signal(&chrome, "{\"approved\": true}").await?;
    let (error, text) = chrome.action_result().await?;
    ensure!(
        error && text.contains("cannot patch resource \"flowruns/status\""),
        "{text}"
    );
    let fr = s.api.get(name).await?;
    ensure!(
        !fr.spec.suspend && fr.status.is_some_and(|st| st.signals.is_empty()),
        "nothing was changed"
    );

    // The admin's page approves the order, and it ships.
    chrome
        .open_run(&format!("{}runs/{ns}/{name}", ui.url))
        .await?;
    b_send_signal(&chrome, "{\"approved\": true}").await?;
    let (error, text) = chrome.action_result().await?;
    ensure!(!error, "{text}");
    chrome.wait_node_phase("approval", "Succeeded").await?;
    chrome.wait_node_phase("cooling-off", "Sleeping").await?;
    chrome.browser.clone().close().await?;
    s.finish().await
}

async fn b_send_signal(chrome: &Chrome, payload: &str) -> Result<()> {
    let field = chrome.browser.find(Locator::Css("#signal-payload")).await?;
    field.clear().await?;
    field.send_keys(payload).await?;
    chrome.click("#signal-send").await
}

/// Big flows, drawn from statuses written here (no operator in this namespace): the time from navigation to the
/// drawn page, and the page's own layout and drawing times, printed, not asserted.
#[tokio::test]
async fn a_200_step_dag_and_a_5000_instance_for_each_render_quickly() -> Result<()> {
    init_logs();
    let client = cluster().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new("ui-big").await?;
    let api: Api<FlowRun> = ns.api();

    // 200 steps in 20 layers of 10; each step after the first layer depends on two steps of the layer before.
    let steps: Vec<Value> = (0..200)
        .map(|i| {
            let (layer, k) = (i / 10, i % 10);
            let deps: Vec<String> = if layer == 0 {
                vec![]
            } else {
                vec![
                    format!("step-{:03}", (layer - 1) * 10 + k),
                    format!("step-{:03}", (layer - 1) * 10 + (k + 3) % 10),
                ]
            };
            json!({"name": format!("step-{i:03}"), "handler": "work", "dependsOn": deps})
        })
        .collect();
    let statuses: serde_json::Map<String, Value> = (0..200)
        .map(|i| {
            let phase = match i {
                0..=119 => json!({"phase": "Succeeded", "attempts": 1, "startedAt": "2026-01-01T00:00:00Z", "finishedAt": "2026-01-01T00:00:05Z", "worker": "w-1"}),
                120..=129 => json!({"phase": "Running", "attempts": 1, "startedAt": "2026-01-01T00:01:00Z", "worker": "w-2"}),
                130..=131 => json!({"phase": "Retrying", "attempts": 2, "error": {"type": "Flaky", "message": "try again", "attempt": 1}}),
                _ => json!({"phase": "Pending"}),
            };
            (format!("step-{i:03}"), phase)
        })
        .collect();
    let total = 5000u32;
    let outputs: serde_json::Map<String, Value> = (0..3000)
        .map(|i| (i.to_string(), json!({"i": i})))
        .collect();
    let active: serde_json::Map<String, Value> = (3000..3040)
        .map(|i| (i.to_string(), json!({"phase": if i % 10 == 0 { "Retrying" } else { "Running" }, "attempts": 1, "worker": "w-3"})))
        .collect();
    let runs = [
        (
            "dag-200",
            json!({"pool": "pool", "steps": steps}),
            json!({"phase": "Running", "progress": "120/200", "startedAt": "2026-01-01T00:00:00Z", "steps": statuses}),
        ),
        (
            "fanout-5000",
            json!({"pool": "pool", "steps": [
                {"name": "split", "handler": "work"},
                {"name": "each", "dependsOn": ["split"], "handler": "work", "forEach": (0..total).collect::<Vec<_>>(), "maxParallel": 40},
                {"name": "join", "dependsOn": ["each"], "handler": "work"},
            ]}),
            json!({"phase": "Running", "progress": "1/3", "startedAt": "2026-01-01T00:00:00Z", "steps": {
                "split": {"phase": "Succeeded", "attempts": 1},
                "each": {"phase": "Running", "startedAt": "2026-01-01T00:00:01Z", "instances": {
                    // Packed in one string, as the operator stores them.
                    "total": total, "succeeded": 3000, "failed": 0,
                    "outputs": serde_json::to_string(&outputs)?, "active": active}},
                "join": {"phase": "Pending"},
            }}),
        ),
    ];
    for (name, spec, status) in &runs {
        let fr: FlowRun = serde_json::from_value(json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun", "metadata": {"name": name}, "spec": spec}))?;
        api.create(&PostParams::default(), &fr).await?;
        api.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": status})),
        )
        .await?;
    }
    let ui = start_ui(ns.name(), None).await?;
    let chrome = chrome().await?;
    // Warm the browser up (first page load compiles the scripts).
    chrome.browser.goto(&ui.url).await?;
    chrome
        .until(
            "the list",
            "return document.body.dataset.page === 'list';",
            WAIT,
        )
        .await?;

    let mut report = Vec::new();
    for (name, _, _) in &runs {
        chrome
            .open_run(&format!("{}runs/{}/{name}", ui.url, ns.name()))
            .await?;
        let stats = chrome
            .js(
                "const s = window.sluiceStats;
                 return [s.firstRenderAt, s.fetchMs, s.renderMs, s.layoutMs, s.drawMs, s.nodes,
                         document.querySelectorAll('#dag g.node').length];",
                vec![],
            )
            .await?;
        screenshot(&chrome, name).await?;
        let f = |i: usize| stats[i].as_f64().unwrap_or(f64::NAN);
        ensure!(stats[6] == stats[5], "every step is a node: {stats}");
        let line = format!(
            "{name}: {} nodes; page load to drawn {:.0} ms (fetch {:.0} ms, render {:.1} ms: layout {:.1} ms, SVG {:.1} ms)",
            stats[6],
            f(0),
            f(1),
            f(2),
            f(3),
            f(4)
        );
        report.push(line);
    }
    // The 5,000-instance step: one node; opening its panel draws every instance.
    let each = chrome.text("#dag g.node[data-step=\"each\"]").await?;
    ensure!(
        each.contains("3000/5000") && each.contains("×5000"),
        "{each}"
    );
    let opened = chrome
        .js(
            "const t = performance.now();
             document.querySelector('#dag g.node[data-step=\"each\"]').dispatchEvent(new MouseEvent('click', {bubbles: true}));
             const c = document.getElementById('instance-strip');
             return [performance.now() - t, c ? c.width * c.height : 0];",
            vec![],
        )
        .await?;
    ensure!(
        opened[1].as_f64().unwrap_or(0.0) > 0.0,
        "the instance strip is drawn: {opened}"
    );
    report.push(format!(
        "fanout-5000: the forEach panel with 5000 instances drawn in {:.1} ms",
        opened[0].as_f64().unwrap_or(f64::NAN)
    ));
    ensure!(
        chrome
            .text("#panel-instances")
            .await?
            .contains("3000 succeeded, 0 failed, 40 active, 1960 not started")
    );
    // Its detail shows the first instance outputs decoded, and counts the rest.
    let shown = chrome
        .until(
            "the instance outputs",
            "const o = document.getElementById('panel-instance-outputs');
             const d = document.getElementById('panel-detail');
             return o && d.innerText.includes('… and 2900 more outputs') && JSON.parse(o.innerText);",
            WAIT,
        )
        .await?;
    ensure!(
        shown.as_object().map(|o| o.len()) == Some(100) && shown["99"] == json!({"i": 99}),
        "{shown}"
    );
    // A live update of the 200-step DAG (a step finishes) is applied in place.
    api.patch_status(
        "dag-200",
        &PatchParams::default(),
        &Patch::Merge(
            &json!({"status": {"steps": {"step-120": {"phase": "Succeeded", "attempts": 1}}}}),
        ),
    )
    .await?;
    chrome
        .open_run(&format!("{}runs/{}/dag-200", ui.url, ns.name()))
        .await?;
    api.patch_status(
        "dag-200",
        &PatchParams::default(),
        &Patch::Merge(
            &json!({"status": {"steps": {"step-121": {"phase": "Failed", "attempts": 1}}}}),
        ),
    )
    .await?;
    chrome.wait_node_phase("step-121", "Failed").await?;
    let update = chrome
        .js("return window.sluiceStats.lastUpdateMs;", vec![])
        .await?;
    report.push(format!(
        "dag-200: a live update applied in {:.1} ms",
        update.as_f64().unwrap_or(f64::NAN)
    ));
    for line in &report {
        println!("ui render time: {line}");
    }
    chrome.browser.clone().close().await?;
    ns.cleanup().await?;
    Ok(())
}
