//! What the Kubernetes tests create on the test control plane.

use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::api::{Api, PostParams};
use serde_json::json;

/// Creates `obj` (JSON) through `api`.
pub async fn create<K>(api: &Api<K>, obj: serde_json::Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(obj).expect("a valid object");
    api.create(&PostParams::default(), &obj)
        .await
        .expect("the apiserver accepts it");
}

/// Namespace `ns`.
pub async fn namespace(client: &kube::Client, ns: &str) {
    create(
        &Api::<Namespace>::all(client.clone()),
        json!({"metadata": {"name": ns}}),
    )
    .await;
}

/// Namespace `ns` and the socket nodes' headless Service (`socket`, port `ws` 8090), as the
/// manifests have it.
pub async fn namespace_with_socket_service(client: &kube::Client, ns: &str) {
    namespace(client, ns).await;
    create(
        &Api::<Service>::namespaced(client.clone(), ns),
        json!({"metadata": {"name": "socket"}, "spec": {
            "clusterIP": "None", "selector": {"app": "socket"},
            "ports": [{"name": "ws", "port": 8090}]
        }}),
    )
    .await;
}
