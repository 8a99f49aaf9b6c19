//! A real Kubernetes control plane for tests: etcd, kube-apiserver and kube-controller-manager
//! (the ReplicaSet, Deployment and EndpointSlice controllers are the real ones) on loopback,
//! started by `tools/kube/kube.sh` from binaries built once from the Go module proxy. There is no
//! kubelet and no scheduler: a test plays the node for the pods it cares about.

use std::path::{Path, PathBuf};

/// The script that builds, starts and stops the control plane.
pub fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tools/kube/kube.sh")
}

/// A running control plane; stopped (by pid) and its directory removed on drop.
pub struct ControlPlane {
    dir: PathBuf,
    /// The admin kubeconfig (system:masters).
    pub kubeconfig: PathBuf,
}

fn run(args: &[&str]) -> anyhow::Result<String> {
    crate::proc::run_script(&script(), args)
}

impl ControlPlane {
    /// Starts one (the binaries must be installed: `kube.sh install`, which scripts/test.sh runs).
    pub async fn start() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "rtc-kube-{}-{}",
            std::process::id(),
            crate::free_port()
        ));
        let cp = ControlPlane {
            kubeconfig: dir.join("kubeconfig"),
            dir: dir.clone(),
        };
        let d = dir.display().to_string();
        tokio::task::spawn_blocking(move || run(&["start", &d])).await??;
        Ok(cp)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The apiserver's address (from DIR/env).
    pub fn api_addr(&self) -> anyhow::Result<std::net::SocketAddr> {
        let env = std::fs::read_to_string(self.dir.join("env"))?;
        let url = env
            .lines()
            .find_map(|l| l.strip_prefix("KUBE_APISERVER_URL=https://"))
            .ok_or_else(|| anyhow::anyhow!("no KUBE_APISERVER_URL in {}", self.dir.display()))?;
        Ok(url.trim().parse()?)
    }

    /// A copy of the admin kubeconfig that reaches the apiserver at `addr` (a proxy on
    /// 127.0.0.1, which the serving certificate covers), written as DIR/`name`.
    pub fn kubeconfig_via(
        &self,
        addr: std::net::SocketAddr,
        name: &str,
    ) -> anyhow::Result<PathBuf> {
        let api = self.api_addr()?;
        let text = std::fs::read_to_string(&self.kubeconfig)?
            .replace(&format!("https://{api}"), &format!("https://{addr}"));
        let path = self.dir.join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// An admin client.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let cfg =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await?;
        Ok(kube::Client::try_from(cfg)?)
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = run(&["stop", &self.dir.display().to_string()]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
