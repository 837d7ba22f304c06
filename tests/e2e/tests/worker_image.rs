//! The worker image (worker-image/Dockerfile), checked without a container engine:
//! - hadolint lints it at its strictest threshold (and does catch a root user, so the lint is live);
//! - its final stages run as a numeric non-root user with an exec-form entrypoint, and the Rust worker stage
//!   is `scratch` (no shell);
//! - umoci assembles an OCI image per final stage from what the stage copies (the locally built binaries stand
//!   in for the build stage's static ones) with the stage's user and entrypoint, and the image, inspected
//!   and unpacked, has that user and entrypoint and a worker binary that runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use sluice_e2e::{build_binaries, repo_root, tool_path};

/// The user every final stage runs as: numeric, so `runAsNonRoot` can verify it.
const WORKER_USER: &str = "65532:65532";

/// One `FROM` section of a Dockerfile.
#[derive(Debug, Default)]
struct Stage {
    base: String,
    user: Option<String>,
    entrypoint: Option<Vec<String>>,
    /// `COPY --from=<stage> <src> <dest>`: (from, src, dest).
    copies: Vec<(String, String, String)>,
}

/// The instructions of a Dockerfile, joined across `\` continuations, without comments and blank lines.
fn instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
        } else {
            current.push_str(trimmed);
            out.push(std::mem::take(&mut current));
        }
    }
    out
}

fn stages(text: &str) -> Result<BTreeMap<String, Stage>> {
    let mut stages = BTreeMap::new();
    let mut name: Option<String> = None;
    for ins in instructions(text) {
        let (keyword, rest) = ins.split_once(' ').unwrap_or((&ins, ""));
        let rest = rest.trim();
        match keyword.to_ascii_uppercase().as_str() {
            "FROM" => {
                let words: Vec<&str> = rest.split_whitespace().collect();
                let stage_name = match words.as_slice() {
                    [_, as_kw, n] if as_kw.eq_ignore_ascii_case("as") => n.to_string(),
                    _ => format!("#{}", stages.len()),
                };
                stages.insert(
                    stage_name.clone(),
                    Stage {
                        base: words.first().copied().unwrap_or_default().to_string(),
                        ..Stage::default()
                    },
                );
                name = Some(stage_name);
            }
            other => {
                let Some(stage) = name.as_ref().and_then(|n| stages.get_mut(n)) else {
                    continue;
                };
                match other {
                    "USER" => stage.user = Some(rest.to_string()),
                    "ENTRYPOINT" => {
                        let exec_form: Vec<String> =
                            serde_json::from_str(rest).with_context(|| {
                                format!("ENTRYPOINT {rest} is not in exec (JSON) form")
                            })?;
                        stage.entrypoint = Some(exec_form);
                    }
                    "COPY" => {
                        let words: Vec<&str> = rest.split_whitespace().collect();
                        if let [from, src, dest] = words.as_slice()
                            && let Some(from) = from.strip_prefix("--from=")
                        {
                            stage.copies.push((
                                from.to_string(),
                                src.to_string(),
                                dest.to_string(),
                            ));
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(stages)
}

fn dockerfile() -> PathBuf {
    repo_root().join("worker-image/Dockerfile")
}

fn hadolint(path: &Path) -> Result<(bool, Vec<Value>)> {
    let out = Command::new(tool_path("hadolint")?)
        .args([
            "--no-color",
            "--failure-threshold",
            "style",
            "--format",
            "json",
        ])
        .arg(path)
        .output()
        .context("running hadolint")?;
    let findings: Vec<Value> = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "hadolint printed no JSON: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok((out.status.success(), findings))
}

#[test]
fn the_dockerfile_passes_hadolint_which_does_flag_a_root_user() -> Result<()> {
    let (ok, findings) = hadolint(&dockerfile())?;
    ensure!(ok && findings.is_empty(), "hadolint findings: {findings:?}");

    // The same file with its last USER made root must be refused: proves the linter really read it.
    let text = std::fs::read_to_string(dockerfile())?;
    let at = text.rfind("USER ").context("the Dockerfile has no USER")?;
    let end = at + text[at..].find('\n').unwrap_or(text.len() - at);
    let root = format!("{}USER root{}", &text[..at], &text[end..]);
    let dir = tempfile::tempdir()?;
    let mutated = dir.path().join("Dockerfile");
    std::fs::write(&mutated, root)?;
    let (ok, findings) = hadolint(&mutated)?;
    ensure!(
        !ok,
        "hadolint accepted a Dockerfile whose last USER is root"
    );
    ensure!(
        findings.iter().any(|f| f["code"] == "DL3002"),
        "expected DL3002 (last USER should not be root), got {findings:?}"
    );
    Ok(())
}

#[test]
fn final_stages_run_as_a_numeric_non_root_user_and_the_rust_worker_has_no_shell() -> Result<()> {
    let stages = stages(&std::fs::read_to_string(dockerfile())?)?;
    for name in ["rust", "exec"] {
        let stage = stages
            .get(name)
            .with_context(|| format!("no stage {name}"))?;
        ensure!(
            stage.user.as_deref() == Some(WORKER_USER),
            "stage {name}: USER {:?}, want {WORKER_USER}",
            stage.user
        );
        let entrypoint = stage
            .entrypoint
            .as_ref()
            .with_context(|| format!("stage {name} has no ENTRYPOINT"))?;
        ensure!(
            stage
                .copies
                .iter()
                .any(|(_, _, dest)| *dest == entrypoint[0]),
            "stage {name}: the entrypoint {} is not a file the stage copies in",
            entrypoint[0]
        );
    }
    ensure!(
        stages["rust"].base == "scratch",
        "the Rust worker image must be `scratch` (no shell), not {}",
        stages["rust"].base
    );
    // The default target (the last stage) is the exec worker image.
    let text = std::fs::read_to_string(dockerfile())?;
    let last_from = instructions(&text)
        .into_iter()
        .rfind(|i| i.to_ascii_uppercase().starts_with("FROM "))
        .context("no FROM")?;
    ensure!(
        last_from.ends_with(" AS exec"),
        "the last stage is {last_from}"
    );
    Ok(())
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The image config of `tag` in the OCI layout at `layout`: index → manifest → config blob.
fn image_config(layout: &Path, tag: &str) -> Result<Value> {
    let blob = |digest: &str| -> Result<Value> {
        let hex = digest
            .strip_prefix("sha256:")
            .with_context(|| format!("digest {digest}"))?;
        Ok(serde_json::from_slice(&std::fs::read(
            layout.join("blobs/sha256").join(hex),
        )?)?)
    };
    let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)?;
    let manifest = index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .with_context(|| format!("no manifest tagged {tag} in {index}"))?;
    let manifest = blob(manifest["digest"].as_str().context("manifest digest")?)?;
    blob(
        manifest["config"]["digest"]
            .as_str()
            .context("config digest")?,
    )
}

#[tokio::test]
async fn images_assembled_from_the_final_stages_have_their_user_and_entrypoint() -> Result<()> {
    let bin = build_binaries().await?;
    let umoci = tool_path("umoci")?;
    let stages = stages(&std::fs::read_to_string(dockerfile())?)?;
    // What each stage's build output stands for here.
    let worker_binary = BTreeMap::from([
        ("rust", bin.join("sluice-example-worker")),
        ("exec", bin.join("sluice-worker")),
    ]);
    let dir = tempfile::tempdir()?;
    let layout = dir.path().join("oci");
    run(Command::new(&umoci)
        .arg("init")
        .arg("--layout")
        .arg(&layout))?;

    for (name, binary) in &worker_binary {
        let stage = &stages[*name];
        let image = format!("{}:{name}", layout.display());
        run(Command::new(&umoci).args(["new", "--image", &image]))?;
        for (from, src, dest) in &stage.copies {
            ensure!(from == "build", "stage {name} copies from {from}");
            let local = match src.as_str() {
                "/out/worker" => binary.clone(),
                other => PathBuf::from(other),
            };
            ensure!(
                local.is_file(),
                "{} (for {src}) is missing",
                local.display()
            );
            run(Command::new(&umoci)
                .args(["insert", "--rootless", "--image", &image])
                .arg(&local)
                .arg(dest))?;
        }
        let user = stage.user.as_deref().context("USER")?;
        let entrypoint = stage.entrypoint.as_ref().context("ENTRYPOINT")?;
        let mut config = Command::new(&umoci);
        config.args(["config", "--image", &image, "--config.user", user]);
        for arg in entrypoint {
            config.args(["--config.entrypoint", arg]);
        }
        run(&mut config)?;

        // Inspect the image as a runtime would see it.
        let cfg = image_config(&layout, name)?;
        ensure!(
            cfg["config"]["User"] == WORKER_USER,
            "{name}: image user {}",
            cfg["config"]["User"]
        );
        ensure!(
            cfg["config"]["Entrypoint"] == serde_json::json!(entrypoint),
            "{name}: image entrypoint {}",
            cfg["config"]["Entrypoint"]
        );
        let bundle = dir.path().join(format!("bundle-{name}"));
        run(Command::new(&umoci)
            .args(["unpack", "--rootless", "--image", &image])
            .arg(&bundle))?;
        let runtime: Value = serde_json::from_slice(&std::fs::read(bundle.join("config.json"))?)?;
        ensure!(
            runtime["process"]["user"]["uid"] == 65532
                && runtime["process"]["user"]["gid"] == 65532,
            "{name}: runtime user {}",
            runtime["process"]["user"]
        );
        ensure!(
            runtime["process"]["args"] == serde_json::json!(entrypoint),
            "{name}: runtime args {}",
            runtime["process"]["args"]
        );
        let rootfs = bundle.join("rootfs");
        if *name == "rust" {
            // Everything the `scratch` image holds is what the stage copies: no shell.
            ensure!(
                !rootfs.join("bin/sh").exists(),
                "{name}: the assembled image has a shell"
            );
        }
        // The binary in the image starts and knows it is a worker: with an empty environment both the
        // exec worker's --help and the SDK's start-up error name the broker URL variable.
        let exe = rootfs.join(entrypoint[0].trim_start_matches('/'));
        let out = Command::new(&exe)
            .arg("--help")
            .env_clear()
            .output()
            .with_context(|| format!("running {}", exe.display()))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(
            text.contains("SLUICE_BROKER_URL"),
            "{name}: {} does not behave like a worker: {text}",
            entrypoint[0]
        );
    }
    Ok(())
}
