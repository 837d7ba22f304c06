//! In-cluster API access for container processes.
//!
//! A client inside a real pod finds the API server through `KUBERNETES_SERVICE_HOST`/`_PORT` and its credentials
//! at the fixed path `/var/run/secrets/kubernetes.io/serviceaccount/{token,ca.crt,namespace}`. A process of this
//! kubelet cannot have that path, so a container that mounts the service-account volume gets a kubeconfig of
//! its own instead, named by `KUBECONFIG`: the API server of this kubelet, the container's (rewritten) token
//! file, the volume's `ca.crt` (or this kubelet's CA when the volume has none) and the pod's namespace. Client
//! libraries that try `KUBECONFIG` before the in-cluster files (client-go's and kube-rs' defaults) then work
//! unchanged, renewing the token from the file as the kubelet rotates it.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// Where a pod's service-account credentials are mounted (by the ServiceAccount admission plugin).
pub const SERVICE_ACCOUNT_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// How this kubelet itself reaches the API server: what a container's kubeconfig points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiServer {
    /// The API server's URL.
    pub server: String,
    /// The CA that signed its serving certificate, used when the service-account volume holds no `ca.crt`.
    pub ca: Option<CaBundle>,
}

/// A CA bundle in a kubeconfig.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaBundle {
    /// Base64 of the PEM bundle (`certificate-authority-data`).
    Data(String),
    /// A PEM file (`certificate-authority`).
    File(PathBuf),
}

/// The kubeconfig of a container of a pod in `namespace` whose service-account volume is at `sa_dir` on this
/// host. It is JSON, which every kubeconfig reader accepts as YAML.
pub fn kubeconfig(api: &ApiServer, namespace: &str, sa_dir: &Path) -> Value {
    let mut cluster = json!({ "server": api.server });
    let ca_file = sa_dir.join("ca.crt");
    if ca_file.is_file() {
        cluster["certificate-authority"] = json!(ca_file.display().to_string());
    } else {
        match &api.ca {
            Some(CaBundle::Data(data)) => cluster["certificate-authority-data"] = json!(data),
            Some(CaBundle::File(path)) => {
                cluster["certificate-authority"] = json!(path.display().to_string());
            }
            None => {}
        }
    }
    json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "in-cluster", "cluster": cluster }],
        "users": [{
            "name": "service-account",
            "user": { "tokenFile": sa_dir.join("token").display().to_string() },
        }],
        "contexts": [{
            "name": "in-cluster",
            "context": { "cluster": "in-cluster", "user": "service-account", "namespace": namespace },
        }],
        "current-context": "in-cluster",
    })
}

/// The API server and CA of the kubeconfig this kubelet runs with (its current context's cluster). A relative
/// CA file is resolved against the kubeconfig's directory, as kubectl does.
pub fn from_kubeconfig(
    kubeconfig: &kube::config::Kubeconfig,
    kubeconfig_path: &Path,
    server: String,
) -> ApiServer {
    let context = kubeconfig
        .current_context
        .as_deref()
        .and_then(|name| kubeconfig.contexts.iter().find(|c| c.name == name))
        .and_then(|c| c.context.as_ref());
    let cluster = context
        .and_then(|c| kubeconfig.clusters.iter().find(|n| n.name == c.cluster))
        .or_else(|| kubeconfig.clusters.first())
        .and_then(|n| n.cluster.as_ref());
    let ca = cluster.and_then(|c| {
        if let Some(data) = c.certificate_authority_data.clone() {
            Some(CaBundle::Data(data))
        } else {
            c.certificate_authority.as_ref().map(|file| {
                let file = Path::new(file);
                let dir = kubeconfig_path.parent().unwrap_or(Path::new("."));
                CaBundle::File(std::path::absolute(dir.join(file)).unwrap_or(dir.join(file)))
            })
        }
    });
    ApiServer { server, ca }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::config::{KubeConfigOptions, Kubeconfig};

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "sluice-kubelet-incluster-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[tokio::test]
    async fn a_container_kubeconfig_uses_the_token_file_namespace_and_volume_ca() {
        let dir = scratch("volume");
        std::fs::write(dir.join("token"), "tok-1").unwrap();
        std::fs::write(dir.join("ca.crt"), "a PEM bundle").unwrap();
        let api = ApiServer {
            server: "https://127.0.0.1:6443".into(),
            ca: Some(CaBundle::Data("ZmFsbGJhY2s=".into())),
        };
        let value = kubeconfig(&api, "team-a", &dir);
        let parsed = Kubeconfig::from_yaml(&value.to_string()).unwrap();
        let cluster = parsed.clusters[0].cluster.clone().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://127.0.0.1:6443"));
        assert_eq!(
            cluster.certificate_authority.as_deref(),
            Some(dir.join("ca.crt").to_str().unwrap())
        );
        assert_eq!(cluster.certificate_authority_data, None);
        let user = parsed.auth_infos[0].auth_info.clone().unwrap();
        assert_eq!(
            user.token_file.as_deref(),
            Some(dir.join("token").to_str().unwrap())
        );
        // What a client builds from it (the placeholder CA left out): the pod's namespace as its default.
        let mut without_ca = value.clone();
        without_ca["clusters"][0]["cluster"]
            .as_object_mut()
            .unwrap()
            .remove("certificate-authority");
        let parsed = Kubeconfig::from_yaml(&without_ca.to_string()).unwrap();
        let options = KubeConfigOptions::default();
        let config = kube::Config::from_custom_kubeconfig(parsed, &options)
            .await
            .unwrap();
        assert_eq!(config.default_namespace, "team-a");
        assert_eq!(config.cluster_url.to_string(), "https://127.0.0.1:6443/");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn without_a_volume_ca_the_kubelets_own_ca_is_used() {
        let dir = scratch("fallback");
        let api = ApiServer {
            server: "https://127.0.0.1:6443".into(),
            ca: Some(CaBundle::Data("ZmFsbGJhY2s=".into())),
        };
        let value = kubeconfig(&api, "ns", &dir);
        assert_eq!(
            value["clusters"][0]["cluster"]["certificate-authority-data"],
            "ZmFsbGJhY2s="
        );
        assert!(value["clusters"][0]["cluster"]["certificate-authority"].is_null());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_kubelets_ca_comes_from_its_current_context() {
        let yaml = r#"
apiVersion: v1
kind: Config
clusters:
- name: other
  cluster: {server: "https://10.0.0.1", certificate-authority-data: b3RoZXI=}
- name: local
  cluster: {server: "https://127.0.0.1:1234", certificate-authority: pki/ca.crt}
users:
- name: admin
  user: {token: x}
contexts:
- name: local
  context: {cluster: local, user: admin}
current-context: local
"#;
        let kubeconfig = Kubeconfig::from_yaml(yaml).unwrap();
        let api = from_kubeconfig(
            &kubeconfig,
            Path::new("/state/kubeconfig"),
            "https://127.0.0.1:1234/".into(),
        );
        assert_eq!(
            api.ca,
            Some(CaBundle::File(PathBuf::from("/state/pki/ca.crt")))
        );
        let other = Kubeconfig {
            current_context: Some("none".into()),
            contexts: vec![],
            ..kubeconfig
        };
        let api = from_kubeconfig(&other, Path::new("/state/kubeconfig"), "s".into());
        assert_eq!(api.ca, Some(CaBundle::Data("b3RoZXI=".into())));
    }
}
