//! End-to-end tests: the real `nodedns` binary on loopback, queried by a
//! real client. One binary, one module per area.

mod admin;
mod admin_grpc;
mod cache;
mod cli;
mod encrypted;
mod encrypted_quic;
mod flights;
mod forward;
mod forward_encrypted;
mod forward_k8s;
mod forward_reload;
mod harness;
mod kubernetes;
mod kubernetes_metrics;
mod kubernetes_multicluster;
mod kubernetes_records;
mod kubernetes_reload;
mod manifests;
mod nodelocal;
mod nodelocal_netns;
mod operational;
mod plugins;
mod prometheus;
mod readme;
mod reload;
mod robustness;
mod server;
mod shutdown;
