//! Volumes as plain directories: each volume's files live in `<pod>/volumes/<volume>`, and each container sees
//! its mounts under a root of its own, `<pod>/roots/<container>/<mountPath>` (a symlink to the volume, or to its
//! `subPath`). See the crate README for what processes are told.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, DownwardAPIVolumeFile, KeyToPath, Pod, Secret,
};
use kube::{Api, Client};

use super::address::NODE_IP;
use super::env::field_ref;
use crate::token::{self, DEFAULT_EXPIRATION_SECONDS, TokenError, TokenSpec};

/// Errors preparing volumes (the pod stays in `ContainerCreating` and is retried).
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{kind} {name:?} for volume {volume:?}: {source}")]
    Fetch {
        kind: &'static str,
        name: String,
        volume: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("{kind} {name:?} for volume {volume:?} not found")]
    NotFound {
        kind: &'static str,
        name: String,
        volume: String,
    },
    #[error("volume {volume:?}: path {path:?} must be relative and stay inside the volume")]
    BadPath { volume: String, path: String },
    #[error("mount {mount:?} of container {container:?} names no volume of the pod")]
    UnknownVolume { container: String, mount: String },
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("volume {volume:?}: {message}")]
    Unsupported { volume: String, message: String },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> VolumeError {
    let context = context.into();
    move |source| VolumeError::Io { context, source }
}

/// A projected token file and when to renew it.
#[derive(Debug, Clone)]
struct TokenFile {
    path: PathBuf,
    service_account: String,
    spec: TokenSpec,
    refresh_at: Timestamp,
}

/// The pod's prepared volumes.
#[derive(Debug, Default)]
pub struct Volumes {
    tokens: Vec<TokenFile>,
}

/// A container's mount as the process sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub mount_path: String,
    pub host_path: PathBuf,
}

/// Joins a relative in-volume path, refusing `..` and absolute paths.
fn inside(base: &Path, rel: &str, volume: &str) -> Result<PathBuf, VolumeError> {
    let rel_path = Path::new(rel);
    if rel.is_empty()
        || rel_path
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(VolumeError::BadPath {
            volume: volume.into(),
            path: rel.into(),
        });
    }
    Ok(base.join(rel_path))
}

/// Writes a file atomically (readers never see half a token).
pub fn write_file(path: &Path, data: &[u8]) -> Result<(), VolumeError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
    }
    let tmp = path.with_extension("sluice-tmp");
    std::fs::write(&tmp, data).map_err(io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io(format!("renaming {}", tmp.display())))
}

fn write_keys(
    dir: &Path,
    volume: &str,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
) -> Result<(), VolumeError> {
    match items {
        Some(items) => {
            for item in items {
                if let Some(value) = data.get(&item.key) {
                    write_file(&inside(dir, &item.path, volume)?, value)?;
                }
            }
        }
        None => {
            for (key, value) in data {
                write_file(&inside(dir, key, volume)?, value)?;
            }
        }
    }
    Ok(())
}

fn write_downward(
    dir: &Path,
    volume: &str,
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
) -> Result<(), VolumeError> {
    for item in items {
        if let Some(f) = &item.field_ref {
            // The API server admits only metadata fields in downwardAPI volume files, never status.podIP, so
            // the pod's own address is not needed here.
            let value = field_ref(pod, NODE_IP, f).map_err(|e| VolumeError::Unsupported {
                volume: volume.into(),
                message: e.to_string(),
            })?;
            write_file(&inside(dir, &item.path, volume)?, value.as_bytes())?;
        }
    }
    Ok(())
}

async fn config_map(
    client: &Client,
    ns: &str,
    name: &str,
    volume: &str,
    optional: bool,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, VolumeError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let cm = api
        .get_opt(name)
        .await
        .map_err(|source| VolumeError::Fetch {
            kind: "configmap",
            name: name.into(),
            volume: volume.into(),
            source: Box::new(source),
        })?;
    match cm {
        Some(cm) => {
            let mut data: BTreeMap<String, Vec<u8>> = cm
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            data.extend(
                cm.binary_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0)),
            );
            Ok(Some(data))
        }
        None if optional => Ok(None),
        None => Err(VolumeError::NotFound {
            kind: "configmap",
            name: name.into(),
            volume: volume.into(),
        }),
    }
}

async fn secret(
    client: &Client,
    ns: &str,
    name: &str,
    volume: &str,
    optional: bool,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, VolumeError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret = api
        .get_opt(name)
        .await
        .map_err(|source| VolumeError::Fetch {
            kind: "secret",
            name: name.into(),
            volume: volume.into(),
            source: Box::new(source),
        })?;
    match secret {
        Some(s) => Ok(Some(
            s.data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect(),
        )),
        None if optional => Ok(None),
        None => Err(VolumeError::NotFound {
            kind: "secret",
            name: name.into(),
            volume: volume.into(),
        }),
    }
}

impl Volumes {
    /// Writes every volume of `pod` under `volumes_dir`, requesting projected service-account tokens.
    ///
    /// A ConfigMap source inside a *projected* volume that does not exist is skipped with a warning instead of
    /// blocking the pod (the `kube-root-ca.crt` ConfigMap of the automounted token volume may not be published on
    /// a test control plane).
    pub async fn prepare(
        client: &Client,
        pod: &Pod,
        volumes_dir: &Path,
    ) -> Result<Self, VolumeError> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let spec = pod.spec.clone().unwrap_or_default();
        let service_account = spec
            .service_account_name
            .clone()
            .unwrap_or_else(|| "default".into());
        let mut this = Self::default();
        for volume in spec.volumes.iter().flatten() {
            let name = volume.name.as_str();
            let dir = inside(volumes_dir, name, name)?;
            std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
            if volume.empty_dir.is_some() {
                continue;
            } else if let Some(src) = &volume.config_map {
                if let Some(data) =
                    config_map(client, ns, &src.name, name, src.optional.unwrap_or(false)).await?
                {
                    write_keys(&dir, name, &data, src.items.as_ref())?;
                }
            } else if let Some(src) = &volume.secret {
                let secret_name = src.secret_name.clone().unwrap_or_default();
                if let Some(data) = secret(
                    client,
                    ns,
                    &secret_name,
                    name,
                    src.optional.unwrap_or(false),
                )
                .await?
                {
                    write_keys(&dir, name, &data, src.items.as_ref())?;
                }
            } else if let Some(src) = &volume.downward_api {
                write_downward(&dir, name, pod, src.items.as_deref().unwrap_or_default())?;
            } else if let Some(src) = &volume.host_path {
                // Point the volume at the host path itself.
                let _ = std::fs::remove_dir(&dir);
                std::os::unix::fs::symlink(&src.path, &dir)
                    .map_err(io(format!("linking {}", dir.display())))?;
            } else if let Some(src) = &volume.projected {
                for source in src.sources.iter().flatten() {
                    if let Some(t) = &source.service_account_token {
                        let token_spec = TokenSpec {
                            audience: t.audience.clone().filter(|a| !a.is_empty()),
                            expiration_seconds: t
                                .expiration_seconds
                                .unwrap_or(DEFAULT_EXPIRATION_SECONDS),
                        };
                        let mut file = TokenFile {
                            path: inside(&dir, &t.path, name)?,
                            service_account: service_account.clone(),
                            spec: token_spec,
                            refresh_at: Timestamp::now(),
                        };
                        write_token(client, pod, &mut file).await?;
                        this.tokens.push(file);
                    } else if let Some(cm) = &source.config_map {
                        match config_map(client, ns, &cm.name, name, cm.optional.unwrap_or(false))
                            .await
                        {
                            Ok(Some(data)) => write_keys(&dir, name, &data, cm.items.as_ref())?,
                            Ok(None) => {}
                            Err(VolumeError::NotFound { .. }) => {
                                tracing::warn!(volume = name, configmap = %cm.name, "projected configmap not found; skipped");
                            }
                            Err(e) => return Err(e),
                        }
                    } else if let Some(s) = &source.secret {
                        if let Some(data) =
                            secret(client, ns, &s.name, name, s.optional.unwrap_or(false)).await?
                        {
                            write_keys(&dir, name, &data, s.items.as_ref())?;
                        }
                    } else if let Some(d) = &source.downward_api {
                        write_downward(&dir, name, pod, d.items.as_deref().unwrap_or_default())?;
                    }
                }
            } else {
                tracing::warn!(
                    volume = name,
                    "unsupported volume type; an empty directory stands in"
                );
            }
        }
        Ok(this)
    }

    /// When the next token must be renewed.
    pub fn next_refresh(&self) -> Option<Timestamp> {
        self.tokens.iter().map(|t| t.refresh_at).min()
    }

    /// Renews the tokens that are due.
    pub async fn refresh(&mut self, client: &Client, pod: &Pod) -> Result<(), VolumeError> {
        let now = Timestamp::now();
        for file in self.tokens.iter_mut().filter(|t| t.refresh_at <= now) {
            write_token(client, pod, file).await?;
            tracing::debug!(path = %file.path.display(), "renewed projected token");
        }
        Ok(())
    }
}

async fn write_token(client: &Client, pod: &Pod, file: &mut TokenFile) -> Result<(), VolumeError> {
    let issued = token::request(
        client.clone(),
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        &file.service_account,
        pod.metadata.name.as_deref().unwrap_or_default(),
        pod.metadata.uid.as_deref().unwrap_or_default(),
        &file.spec,
    )
    .await?;
    write_file(&file.path, issued.token.as_bytes())?;
    file.refresh_at = issued.refresh_at();
    Ok(())
}

/// `SLUICE_MOUNT_<PATH>`: the mount path upper-cased, every other character than A-Z and 0-9 made `_`, and
/// leading/trailing `_` trimmed; `/var/run/secrets/kubernetes.io/serviceaccount` gives
/// `SLUICE_MOUNT_VAR_RUN_SECRETS_KUBERNETES_IO_SERVICEACCOUNT`.
pub fn mount_env_name(mount_path: &str) -> String {
    let sanitized: String = mount_path
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("SLUICE_MOUNT_{}", sanitized.trim_matches('_'))
}

/// Where `mount_path` is under a container's volume root.
pub fn host_path(root: &Path, mount_path: &str) -> PathBuf {
    let rel: PathBuf = Path::new(mount_path)
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect();
    root.join(rel)
}

/// Links the container's mounts under `root` to the pod's volumes and returns them.
pub fn mount(
    container: &Container,
    pod: &Pod,
    volumes_dir: &Path,
    root: &Path,
) -> Result<Vec<Mount>, VolumeError> {
    let _ = std::fs::remove_dir_all(root);
    std::fs::create_dir_all(root).map_err(io(format!("creating {}", root.display())))?;
    let volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_ref());
    let mut mounts = Vec::new();
    for m in container.volume_mounts.iter().flatten() {
        if !volumes.is_some_and(|v| v.iter().any(|v| v.name == m.name)) {
            return Err(VolumeError::UnknownVolume {
                container: container.name.clone(),
                mount: m.mount_path.clone(),
            });
        }
        let mut target = volumes_dir.join(&m.name);
        if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            target = inside(&target, sub, &m.name)?;
            if !target.exists() {
                std::fs::create_dir_all(&target)
                    .map_err(io(format!("creating {}", target.display())))?;
            }
        }
        let link = host_path(root, &m.mount_path);
        if link == root {
            return Err(VolumeError::BadPath {
                volume: m.name.clone(),
                path: m.mount_path.clone(),
            });
        }
        if let Some(parent) = link.parent() {
            std::fs::create_dir_all(parent)
                .map_err(io(format!("creating {}", parent.display())))?;
        }
        std::os::unix::fs::symlink(&target, &link)
            .map_err(io(format!("linking {}", link.display())))?;
        mounts.push(Mount {
            mount_path: m.mount_path.clone(),
            host_path: link,
        });
    }
    Ok(mounts)
}

/// Rewrites a value that names a path inside a mount (`/etc/cfg/app.yaml` with a mount at `/etc/cfg`) to where
/// the process finds it. Other values are returned unchanged.
pub fn rewrite_path(value: &str, mounts: &[Mount]) -> String {
    let best = mounts
        .iter()
        .filter(|m| {
            let mp = m.mount_path.trim_end_matches('/');
            value == mp
                || value
                    .strip_prefix(mp)
                    .is_some_and(|rest| rest.starts_with('/'))
        })
        .max_by_key(|m| m.mount_path.len());
    match best {
        Some(m) => {
            let rest = &value[m.mount_path.trim_end_matches('/').len()..];
            format!("{}{rest}", m.host_path.display())
        }
        None => value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{EmptyDirVolumeSource, PodSpec, Volume, VolumeMount};

    #[test]
    fn mount_env_names_are_sanitized() {
        assert_eq!(
            mount_env_name("/var/run/secrets/kubernetes.io/serviceaccount"),
            "SLUICE_MOUNT_VAR_RUN_SECRETS_KUBERNETES_IO_SERVICEACCOUNT"
        );
        assert_eq!(mount_env_name("/data/"), "SLUICE_MOUNT_DATA");
    }

    #[test]
    fn paths_inside_mounts_are_rewritten() {
        let mounts = [
            Mount {
                mount_path: "/var/run/secrets/sluice".into(),
                host_path: "/pods/x/roots/c/var/run/secrets/sluice".into(),
            },
            Mount {
                mount_path: "/var/run".into(),
                host_path: "/pods/x/roots/c/var/run".into(),
            },
        ];
        assert_eq!(
            rewrite_path("/var/run/secrets/sluice/token", &mounts),
            "/pods/x/roots/c/var/run/secrets/sluice/token"
        );
        assert_eq!(
            rewrite_path("/var/run/other", &mounts),
            "/pods/x/roots/c/var/run/other"
        );
        assert_eq!(rewrite_path("/var/running", &mounts), "/var/running");
        assert_eq!(rewrite_path("hello", &mounts), "hello");
    }

    #[test]
    fn in_volume_paths_stay_inside() {
        assert!(inside(Path::new("/v"), "a/b", "v").is_ok());
        assert!(inside(Path::new("/v"), "../x", "v").is_err());
        assert!(inside(Path::new("/v"), "/etc/passwd", "v").is_err());
        assert!(inside(Path::new("/v"), "", "v").is_err());
    }

    #[test]
    fn mounts_link_volumes_under_the_container_root() {
        let base = std::env::temp_dir().join(format!("sluice-kubelet-vol-{}", std::process::id()));
        let volumes = base.join("volumes");
        std::fs::create_dir_all(volumes.join("data")).unwrap();
        std::fs::write(volumes.join("data/hello"), "hi").unwrap();
        let pod = Pod {
            spec: Some(PodSpec {
                volumes: Some(vec![Volume {
                    name: "data".into(),
                    empty_dir: Some(EmptyDirVolumeSource::default()),
                    ..Volume::default()
                }]),
                ..PodSpec::default()
            }),
            ..Pod::default()
        };
        let container = Container {
            name: "c".into(),
            volume_mounts: Some(vec![VolumeMount {
                name: "data".into(),
                mount_path: "/srv/data".into(),
                ..VolumeMount::default()
            }]),
            ..Container::default()
        };
        let root = base.join("roots/c");
        let mounts = mount(&container, &pod, &volumes, &root).unwrap();
        assert_eq!(mounts[0].host_path, root.join("srv/data"));
        assert_eq!(
            std::fs::read_to_string(root.join("srv/data/hello")).unwrap(),
            "hi"
        );
        let bad = Container {
            volume_mounts: Some(vec![VolumeMount {
                name: "nope".into(),
                mount_path: "/x".into(),
                ..VolumeMount::default()
            }]),
            ..container
        };
        assert!(matches!(
            mount(&bad, &pod, &volumes, &root),
            Err(VolumeError::UnknownVolume { .. })
        ));
        std::fs::remove_dir_all(base).unwrap();
    }
}
