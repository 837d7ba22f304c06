//! A container's environment: `env` (values, `$(VAR)` expansion, `fieldRef`, `resourceFieldRef`,
//! `configMapKeyRef`, `secretKeyRef`) and `envFrom`. Pure: ConfigMaps and Secrets are looked up in
//! [`EnvSources`], fetched beforehand.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ObjectFieldSelector, Pod, ResourceFieldSelector, Secret,
};

use super::address::NODE_IP;

/// Why a container's environment cannot be built (a kubelet reports `CreateContainerConfigError`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("{kind} {name:?} not found")]
    MissingObject { kind: &'static str, name: String },
    #[error("couldn't find key {key} in {kind} {name}")]
    MissingKey {
        kind: &'static str,
        name: String,
        key: String,
    },
    #[error("unsupported fieldPath {0:?}")]
    UnsupportedField(String),
    #[error("unsupported resource {0:?}")]
    UnsupportedResource(String),
    #[error("env var {0:?} has neither value nor a supported valueFrom")]
    NoSource(String),
}

/// ConfigMap and Secret data by name; a name that is absent does not exist.
#[derive(Debug, Clone, Default)]
pub struct EnvSources {
    pub config_maps: HashMap<String, BTreeMap<String, String>>,
    pub secrets: HashMap<String, BTreeMap<String, String>>,
}

impl EnvSources {
    pub fn add_config_map(&mut self, cm: &ConfigMap) {
        let mut data = cm.data.clone().unwrap_or_default();
        for (k, v) in cm.binary_data.iter().flatten() {
            data.insert(k.clone(), String::from_utf8_lossy(&v.0).into_owned());
        }
        self.config_maps
            .insert(cm.metadata.name.clone().unwrap_or_default(), data);
    }

    pub fn add_secret(&mut self, secret: &Secret) {
        let data = secret
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
            .collect();
        self.secrets
            .insert(secret.metadata.name.clone().unwrap_or_default(), data);
    }

    fn lookup(&self, kind: &'static str, name: &str) -> Option<&BTreeMap<String, String>> {
        match kind {
            "configmap" => self.config_maps.get(name),
            _ => self.secrets.get(name),
        }
    }
}

/// The ConfigMaps and Secrets a container's environment refers to.
pub fn referenced(container: &Container) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut cms = BTreeSet::new();
    let mut secrets = BTreeSet::new();
    for var in container.env.iter().flatten() {
        if let Some(from) = &var.value_from {
            if let Some(r) = &from.config_map_key_ref {
                cms.insert(r.name.clone());
            }
            if let Some(r) = &from.secret_key_ref {
                secrets.insert(r.name.clone());
            }
        }
    }
    for from in container.env_from.iter().flatten() {
        if let Some(r) = &from.config_map_ref {
            cms.insert(r.name.clone());
        }
        if let Some(r) = &from.secret_ref {
            secrets.insert(r.name.clone());
        }
    }
    (cms, secrets)
}

/// The environment of `container`: `base` first, then `envFrom`, then `env`, later entries overriding earlier.
/// `pod_ip` is what `status.podIP` resolves to (see [`super::address`]).
pub fn resolve(
    pod: &Pod,
    pod_ip: Ipv4Addr,
    container: &Container,
    base: &[(String, String)],
    sources: &EnvSources,
) -> Result<Vec<(String, String)>, EnvError> {
    let mut vars: Vec<(String, String)> = Vec::new();
    let set = |vars: &mut Vec<(String, String)>, name: String, value: String| {
        if let Some(slot) = vars.iter_mut().find(|(n, _)| *n == name) {
            slot.1 = value;
        } else {
            vars.push((name, value));
        }
    };
    for (k, v) in base {
        set(&mut vars, k.clone(), v.clone());
    }
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (kind, name, optional) = if let Some(r) = &from.config_map_ref {
            ("configmap", &r.name, r.optional.unwrap_or(false))
        } else if let Some(r) = &from.secret_ref {
            ("secret", &r.name, r.optional.unwrap_or(false))
        } else {
            continue;
        };
        match sources.lookup(kind, name) {
            Some(data) => {
                for (k, v) in data {
                    set(&mut vars, format!("{prefix}{k}"), v.clone());
                }
            }
            None if optional => {}
            None => {
                return Err(EnvError::MissingObject {
                    kind,
                    name: name.clone(),
                });
            }
        }
    }
    for var in container.env.iter().flatten() {
        let value = if let Some(from) = &var.value_from {
            if let Some(f) = &from.field_ref {
                Some(field_ref(pod, pod_ip, f)?)
            } else if let Some(r) = &from.resource_field_ref {
                Some(resource_field_ref(container, r)?)
            } else if let Some(r) = &from.config_map_key_ref {
                key_ref(
                    sources,
                    "configmap",
                    &r.name,
                    &r.key,
                    r.optional.unwrap_or(false),
                )?
            } else if let Some(r) = &from.secret_key_ref {
                key_ref(
                    sources,
                    "secret",
                    &r.name,
                    &r.key,
                    r.optional.unwrap_or(false),
                )?
            } else {
                return Err(EnvError::NoSource(var.name.clone()));
            }
        } else {
            let known: HashMap<&str, &str> =
                vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            Some(expand(var.value.as_deref().unwrap_or_default(), &known))
        };
        if let Some(value) = value {
            set(&mut vars, var.name.clone(), value);
        }
    }
    Ok(vars)
}

fn key_ref(
    sources: &EnvSources,
    kind: &'static str,
    name: &str,
    key: &str,
    optional: bool,
) -> Result<Option<String>, EnvError> {
    match sources.lookup(kind, name).map(|d| d.get(key)) {
        Some(Some(v)) => Ok(Some(v.clone())),
        _ if optional => Ok(None),
        None => Err(EnvError::MissingObject {
            kind,
            name: name.to_string(),
        }),
        Some(None) => Err(EnvError::MissingKey {
            kind,
            name: name.to_string(),
            key: key.to_string(),
        }),
    }
}

/// The value of a downward-API `fieldRef` for this kubelet's pods, whose address is `pod_ip`.
pub fn field_ref(
    pod: &Pod,
    pod_ip: Ipv4Addr,
    field: &ObjectFieldSelector,
) -> Result<String, EnvError> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let path = field.field_path.as_str();
    let map_entry = |map: &Option<BTreeMap<String, String>>, rest: &str| {
        let key = rest.trim_start_matches("['").trim_end_matches("']");
        map.as_ref()
            .and_then(|m| m.get(key))
            .cloned()
            .unwrap_or_default()
    };
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" | "status.podIPs" => pod_ip.to_string(),
        "status.hostIP" | "status.hostIPs" => NODE_IP.to_string(),
        "metadata.labels" => format_map(&meta.labels),
        "metadata.annotations" => format_map(&meta.annotations),
        _ if path.starts_with("metadata.labels[") => {
            map_entry(&meta.labels, &path["metadata.labels".len()..])
        }
        _ if path.starts_with("metadata.annotations[") => {
            map_entry(&meta.annotations, &path["metadata.annotations".len()..])
        }
        _ => return Err(EnvError::UnsupportedField(path.to_string())),
    })
}

fn format_map(map: &Option<BTreeMap<String, String>>) -> String {
    map.iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `limits.cpu` and friends: the container's own value, or the node's size when unset (as a kubelet does).
fn resource_field_ref(
    container: &Container,
    r: &ResourceFieldSelector,
) -> Result<String, EnvError> {
    let (kind, resource) = r
        .resource
        .split_once('.')
        .ok_or_else(|| EnvError::UnsupportedResource(r.resource.clone()))?;
    let resources = container.resources.as_ref();
    let set = match kind {
        "limits" => resources.and_then(|r| r.limits.as_ref()),
        "requests" => resources.and_then(|r| r.requests.as_ref()),
        _ => return Err(EnvError::UnsupportedResource(r.resource.clone())),
    };
    if let Some(q) = set.and_then(|s| s.get(resource)) {
        return Ok(q.0.clone());
    }
    match resource {
        "cpu" => Ok(crate::node::cpu_count().to_string()),
        "memory" => Ok(crate::node::memory_bytes().to_string()),
        "ephemeral-storage" => Ok("0".to_string()),
        _ => Err(EnvError::UnsupportedResource(r.resource.clone())),
    }
}

/// Kubernetes' `$(VAR)` expansion: known variables are replaced, `$$` escapes a `$`, unknown references stay.
pub fn expand(input: &str, vars: &HashMap<&str, &str>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match vars.get(name) {
                Some(v) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::{
        ConfigMapEnvSource, ConfigMapKeySelector, EnvFromSource, EnvVar, EnvVarSource, PodSpec,
        SecretKeySelector,
    };
    use kube::api::ObjectMeta;

    fn pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web-1".into()),
                namespace: Some("ns1".into()),
                uid: Some("u-1".into()),
                labels: Some([("app".to_string(), "web".to_string())].into()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: Some("sluice-local".into()),
                service_account_name: Some("runner".into()),
                ..PodSpec::default()
            }),
            ..Pod::default()
        }
    }

    fn field(name: &str, path: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: path.into(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        }
    }

    fn value(name: &str, value: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: Some(value.into()),
            ..EnvVar::default()
        }
    }

    fn sources() -> EnvSources {
        let mut s = EnvSources::default();
        s.add_config_map(&ConfigMap {
            metadata: ObjectMeta {
                name: Some("cfg".into()),
                ..ObjectMeta::default()
            },
            data: Some([("mode".to_string(), "fast".to_string())].into()),
            ..ConfigMap::default()
        });
        s.add_secret(&Secret {
            metadata: ObjectMeta {
                name: Some("creds".into()),
                ..ObjectMeta::default()
            },
            data: Some([("password".to_string(), ByteString(b"hunter2".to_vec()))].into()),
            ..Secret::default()
        });
        s
    }

    fn get<'a>(vars: &'a [(String, String)], name: &str) -> Option<&'a str> {
        vars.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn field_refs_resolve() {
        let container = Container {
            env: Some(vec![
                field("POD_NAME", "metadata.name"),
                field("POD_NAMESPACE", "metadata.namespace"),
                field("POD_UID", "metadata.uid"),
                field("POD_IP", "status.podIP"),
                field("NODE", "spec.nodeName"),
                field("SA", "spec.serviceAccountName"),
                field("APP", "metadata.labels['app']"),
            ]),
            ..Container::default()
        };
        let vars = resolve(&pod(), NODE_IP, &container, &[], &EnvSources::default()).unwrap();
        assert_eq!(get(&vars, "POD_NAME"), Some("web-1"));
        assert_eq!(get(&vars, "POD_NAMESPACE"), Some("ns1"));
        assert_eq!(get(&vars, "POD_UID"), Some("u-1"));
        assert_eq!(get(&vars, "POD_IP"), Some("127.0.0.1"));
        assert_eq!(get(&vars, "NODE"), Some("sluice-local"));
        assert_eq!(get(&vars, "SA"), Some("runner"));
        assert_eq!(get(&vars, "APP"), Some("web"));
    }

    #[test]
    fn the_pod_ip_is_the_one_given_and_the_host_ip_the_nodes() {
        let container = Container {
            env: Some(vec![
                field("POD_IP", "status.podIP"),
                field("POD_IPS", "status.podIPs"),
                field("HOST_IP", "status.hostIP"),
                value("URL", "http://$(POD_IP):8443"),
            ]),
            ..Container::default()
        };
        let pod_ip = Ipv4Addr::new(10, 1, 2, 3);
        let vars = resolve(&pod(), pod_ip, &container, &[], &EnvSources::default()).unwrap();
        assert_eq!(get(&vars, "POD_IP"), Some("10.1.2.3"));
        assert_eq!(get(&vars, "POD_IPS"), Some("10.1.2.3"));
        assert_eq!(get(&vars, "HOST_IP"), Some("127.0.0.1"));
        assert_eq!(get(&vars, "URL"), Some("http://10.1.2.3:8443"));
    }

    #[test]
    fn key_refs_env_from_and_expansion() {
        let container = Container {
            env_from: Some(vec![EnvFromSource {
                prefix: Some("CFG_".into()),
                config_map_ref: Some(ConfigMapEnvSource {
                    name: "cfg".into(),
                    optional: None,
                }),
                ..EnvFromSource::default()
            }]),
            env: Some(vec![
                EnvVar {
                    name: "PASSWORD".into(),
                    value_from: Some(EnvVarSource {
                        secret_key_ref: Some(SecretKeySelector {
                            name: "creds".into(),
                            key: "password".into(),
                            optional: None,
                        }),
                        ..EnvVarSource::default()
                    }),
                    ..EnvVar::default()
                },
                EnvVar {
                    name: "MODE".into(),
                    value_from: Some(EnvVarSource {
                        config_map_key_ref: Some(ConfigMapKeySelector {
                            name: "cfg".into(),
                            key: "mode".into(),
                            optional: None,
                        }),
                        ..EnvVarSource::default()
                    }),
                    ..EnvVar::default()
                },
                value("URL", "http://$(HOST):80/$(MODE)/$(NOPE)/$$(MODE)"),
                value("HOST", "overridden"),
            ]),
            ..Container::default()
        };
        let base = [("HOST".to_string(), "base".to_string())];
        let vars = resolve(&pod(), NODE_IP, &container, &base, &sources()).unwrap();
        assert_eq!(get(&vars, "CFG_mode"), Some("fast"));
        assert_eq!(get(&vars, "PASSWORD"), Some("hunter2"));
        assert_eq!(
            get(&vars, "URL"),
            Some("http://base:80/fast/$(NOPE)/$(MODE)")
        );
        assert_eq!(get(&vars, "HOST"), Some("overridden"));
        assert_eq!(vars.iter().filter(|(n, _)| n == "HOST").count(), 1);
    }

    #[test]
    fn missing_refs_fail_unless_optional() {
        let mut var = EnvVar {
            name: "X".into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: "creds".into(),
                    key: "nope".into(),
                    optional: None,
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        };
        let container = |var: &EnvVar| Container {
            env: Some(vec![var.clone()]),
            ..Container::default()
        };
        assert_eq!(
            resolve(&pod(), NODE_IP, &container(&var), &[], &sources()),
            Err(EnvError::MissingKey {
                kind: "secret",
                name: "creds".into(),
                key: "nope".into()
            })
        );
        if let Some(r) = var
            .value_from
            .as_mut()
            .and_then(|f| f.secret_key_ref.as_mut())
        {
            r.optional = Some(true);
        }
        let vars = resolve(&pod(), NODE_IP, &container(&var), &[], &sources()).unwrap();
        assert_eq!(get(&vars, "X"), None);
        assert!(matches!(
            resolve(
                &pod(),
                NODE_IP,
                &container(&field("X", "spec.hostname")),
                &[],
                &sources()
            ),
            Err(EnvError::UnsupportedField(_))
        ));
    }

    #[test]
    fn references_are_collected() {
        let container = Container {
            env: Some(vec![EnvVar {
                name: "P".into(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: "creds".into(),
                        key: "password".into(),
                        optional: None,
                    }),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            }]),
            env_from: Some(vec![EnvFromSource {
                config_map_ref: Some(ConfigMapEnvSource {
                    name: "cfg".into(),
                    optional: None,
                }),
                ..EnvFromSource::default()
            }]),
            ..Container::default()
        };
        let (cms, secrets) = referenced(&container);
        assert_eq!(cms.into_iter().collect::<Vec<_>>(), vec!["cfg"]);
        assert_eq!(secrets.into_iter().collect::<Vec<_>>(), vec!["creds"]);
    }
}
