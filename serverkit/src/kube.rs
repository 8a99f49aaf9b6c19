//! The Kubernetes client every server builds the same way.

use std::path::Path;

/// A client from `kubeconfig` when given (KUBECONFIG), else the usual inference: the in-cluster
/// service account, then `~/.kube/config`.
pub async fn client(kubeconfig: Option<&Path>) -> anyhow::Result<kube::Client> {
    let cfg = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await?
        }
        None => kube::Config::infer().await?,
    };
    Ok(kube::Client::try_from(cfg)?)
}
