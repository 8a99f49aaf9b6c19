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
