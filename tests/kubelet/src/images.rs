//! The image map: which local executable stands for which container image.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Errors loading the image map.
#[derive(Debug, thiserror::Error)]
pub enum ImageMapError {
    #[error("reading image map {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing image map {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("image {image:?} has an empty entrypoint")]
    Empty { image: String },
}

/// Why an image cannot be run; shown as the `ErrImagePull` message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PullError {
    #[error("image {0:?} is not in the sluice-kubelet image map")]
    Unknown(String),
    #[error("image {image:?} maps to {path}, which does not exist (is it built?)")]
    Missing { image: String, path: PathBuf },
}

#[derive(Debug, Deserialize)]
struct File {
    images: BTreeMap<String, Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Entry {
    Path(String),
    Entrypoint(Vec<String>),
}

/// Image name → entrypoint (an executable and its leading arguments).
#[derive(Debug, Clone, Default)]
pub struct ImageMap {
    images: BTreeMap<String, Vec<String>>,
}

impl ImageMap {
    /// Loads the map from YAML; relative executables are resolved against `root`.
    pub fn load(path: &Path, root: &Path) -> Result<Self, ImageMapError> {
        let text = std::fs::read_to_string(path).map_err(|source| ImageMapError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, root).map_err(|e| match e {
            ImageMapError::Parse { message, .. } => ImageMapError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    /// Parses the YAML text of a map.
    pub fn parse(text: &str, root: &Path) -> Result<Self, ImageMapError> {
        let file: File = serde_saphyr::from_str(text).map_err(|e| ImageMapError::Parse {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        let mut images = BTreeMap::new();
        for (image, entry) in file.images {
            let mut argv = match entry {
                Entry::Path(p) => vec![p],
                Entry::Entrypoint(v) => v,
            };
            let Some(exe) = argv.first_mut() else {
                return Err(ImageMapError::Empty { image });
            };
            if exe.contains('/') && Path::new(exe.as_str()).is_relative() {
                *exe = root.join(exe.as_str()).to_string_lossy().into_owned();
            }
            images.insert(image, argv);
        }
        Ok(Self { images })
    }

    /// The entrypoint of `image`: exact name first, then with `:latest` added or removed, then without a
    /// `docker.io/` or `docker.io/library/` prefix. A mapped executable given as a path must exist.
    pub fn resolve(&self, image: &str) -> Result<Vec<String>, PullError> {
        let argv = candidates(image)
            .iter()
            .find_map(|c| self.images.get(c))
            .ok_or_else(|| PullError::Unknown(image.to_string()))?;
        let exe = Path::new(&argv[0]);
        if argv[0].contains('/') && !exe.exists() {
            return Err(PullError::Missing {
                image: image.to_string(),
                path: exe.to_path_buf(),
            });
        }
        Ok(argv.clone())
    }
}

fn candidates(image: &str) -> Vec<String> {
    let mut names = vec![image.to_string()];
    for prefix in ["docker.io/library/", "docker.io/"] {
        if let Some(rest) = image.strip_prefix(prefix) {
            names.push(rest.to_string());
        }
    }
    let mut out = Vec::new();
    for name in names {
        let last = name.rsplit('/').next().unwrap_or(&name);
        if let Some(untagged) = name.strip_suffix(":latest") {
            out.push(name.clone());
            out.push(untagged.to_string());
        } else if !last.contains(':') && !last.contains('@') {
            out.push(name.clone());
            out.push(format!("{name}:latest"));
        } else {
            out.push(name);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: &str = r#"
images:
  sluice/worker-example:dev: target/debug/sluice-example-worker
  sluice/test-shell:dev: /bin/sh
  busybox: /bin/sh
  tool:1: [/bin/sh, -c]
"#;

    #[test]
    fn resolves_exact_and_relative_paths() {
        let map = ImageMap::parse(MAP, Path::new("/repo")).unwrap();
        assert_eq!(
            map.resolve("sluice/test-shell:dev").unwrap(),
            vec!["/bin/sh"]
        );
        assert_eq!(map.resolve("tool:1").unwrap(), vec!["/bin/sh", "-c"]);
        assert_eq!(
            map.resolve("sluice/worker-example:dev"),
            Err(PullError::Missing {
                image: "sluice/worker-example:dev".into(),
                path: PathBuf::from("/repo/target/debug/sluice-example-worker"),
            })
        );
    }

    #[test]
    fn latest_and_docker_hub_prefixes_match() {
        let map = ImageMap::parse(MAP, Path::new("/repo")).unwrap();
        for image in [
            "busybox",
            "busybox:latest",
            "docker.io/library/busybox",
            "docker.io/busybox:latest",
        ] {
            assert_eq!(map.resolve(image).unwrap(), vec!["/bin/sh"], "{image}");
        }
    }

    #[test]
    fn unknown_image_is_a_pull_error() {
        let map = ImageMap::parse(MAP, Path::new("/repo")).unwrap();
        assert_eq!(
            map.resolve("nginx:1.27"),
            Err(PullError::Unknown("nginx:1.27".into()))
        );
        assert_eq!(
            map.resolve("sluice/test-shell:other"),
            Err(PullError::Unknown("sluice/test-shell:other".into()))
        );
    }

    #[test]
    fn empty_entrypoint_is_rejected() {
        assert!(matches!(
            ImageMap::parse("images:\n  x: []\n", Path::new("/")),
            Err(ImageMapError::Empty { .. })
        ));
    }

    #[test]
    fn the_committed_map_parses() {
        let text = include_str!("../images.yaml");
        let map = ImageMap::parse(text, Path::new("/repo")).unwrap();
        assert_eq!(
            map.resolve("sluice/test-shell:dev").unwrap(),
            vec!["/bin/sh"]
        );
    }
}
