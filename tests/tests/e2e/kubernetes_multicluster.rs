//! `kubernetes ... { multicluster ZONES... }` against the fake API
//! server: ServiceImports and their EndpointSlices answered in the
//! multicluster zone beside an untouched cluster zone, and imports added,
//! changed and deleted showing within 2 s, also across a relist.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use nodedns_tests::kubeapi::{
    Endpoint, EndpointSlice, FakeKubeApi, Namespace, Resource, Service, ServiceImport,
};
use nodedns_tests::{Agent, Client, http_status, wait_until};

/// The records of `qtype` for `name`, as text and sorted, or the rcode
/// when there are none.
async fn records(c: &Client, name: &str, qtype: RecordType) -> Result<Vec<String>, ResponseCode> {
    let m = c.udp(name, qtype).await;
    let mut out: Vec<String> = m
        .answers
        .iter()
        .filter(|r| r.record_type() == qtype)
        .map(|r| r.data.to_string())
        .collect();
    out.sort();
    if out.is_empty() {
        Err(m.metadata.response_code)
    } else {
        Ok(out)
    }
}

fn ok(list: &[&str]) -> Result<Vec<String>, ResponseCode> {
    let mut v: Vec<String> = list.iter().map(|s| s.to_string()).collect();
    v.sort();
    Ok(v)
}

const A: RecordType = RecordType::A;

async fn agent_for(api: &FakeKubeApi) -> (Agent, SocketAddr) {
    let ready_port = nodedns_tests::free_port();
    let agent = Agent::corefile(format!(
        ".:0 {{\n    bind 127.0.0.1\n    ready 127.0.0.1:{ready_port}\n    kubernetes cluster.local clusterset.local {{\n        endpoint {}\n        multicluster clusterset.local\n    }}\n}}\n",
        api.endpoint_url()
    ))
    .start()
    .await;
    let ready = SocketAddr::from(([127, 0, 0, 1], ready_port));
    assert!(
        wait_until(Duration::from_secs(10), || async {
            http_status(ready, "/ready").await == Some(200)
        })
        .await,
        "ready once synced: {:?}",
        agent.stderr()
    );
    (agent, ready)
}

#[tokio::test]
async fn service_imports_answer_in_the_clusterset_zone() {
    let api = FakeKubeApi::start().await;
    api.apply(Namespace::new("default"));
    // The cluster's own service of the same name: the cluster zone's.
    api.apply(Service::cluster_ip("default", "web", "10.96.0.10").port("http", "TCP", 80));
    api.apply(
        ServiceImport::cluster_set_ip("default", "web", &["10.42.0.10"])
            .port("http", "TCP", 80)
            .cluster("west")
            .cluster("east"),
    );
    api.apply(
        ServiceImport::headless("default", "db")
            .port("pg", "TCP", 5432)
            .cluster("west")
            .cluster("east"),
    );
    api.apply(
        EndpointSlice::imported("default", "db", "west", "db-west")
            .endpoint(Endpoint::new("10.1.0.5").hostname("db-0"))
            .endpoint(Endpoint::new("10.1.0.6").not_ready())
            .port("pg", "TCP", 5432),
    );
    api.apply(
        EndpointSlice::imported("default", "db", "east", "db-east")
            .endpoint(Endpoint::new("10.2.0.7"))
            .port("pg", "TCP", 5432),
    );
    let (agent, _) = agent_for(&api).await;
    let c = Client::new(agent.udp());

    // A ClusterSetIP import, and the cluster's service untouched.
    assert_eq!(
        records(&c, "web.default.svc.clusterset.local.", A).await,
        ok(&["10.42.0.10"])
    );
    assert_eq!(
        records(&c, "web.default.svc.cluster.local.", A).await,
        ok(&["10.96.0.10"])
    );
    assert_eq!(
        records(
            &c,
            "_http._tcp.web.default.svc.clusterset.local.",
            RecordType::SRV
        )
        .await,
        ok(&["0 100 80 web.default.svc.clusterset.local."])
    );
    // A headless import: its ready endpoints from every cluster.
    assert_eq!(
        records(&c, "db.default.svc.clusterset.local.", A).await,
        ok(&["10.1.0.5", "10.2.0.7"])
    );
    // Per endpoint, with its cluster: the SRV targets.
    assert_eq!(
        records(
            &c,
            "_pg._tcp.db.default.svc.clusterset.local.",
            RecordType::SRV
        )
        .await,
        ok(&[
            "0 50 5432 db-0.west.db.default.svc.clusterset.local.",
            "0 50 5432 10-2-0-7.east.db.default.svc.clusterset.local.",
        ])
    );
    assert_eq!(
        records(&c, "db-0.west.db.default.svc.clusterset.local.", A).await,
        ok(&["10.1.0.5"])
    );
    assert_eq!(
        records(&c, "10-2-0-7.east.db.default.svc.clusterset.local.", A).await,
        ok(&["10.2.0.7"])
    );
    for missing in [
        "db-0.east.db.default.svc.clusterset.local.",
        "db-0.db.default.svc.clusterset.local.",
        "10-1-0-6.west.db.default.svc.clusterset.local.",
        "db.default.svc.cluster.local.",
        "nonesuch.default.svc.clusterset.local.",
    ] {
        assert_eq!(
            records(&c, missing, A).await,
            Err(ResponseCode::NXDomain),
            "{missing}"
        );
    }
    // NODATA with the zone's SOA.
    let m = c
        .udp("web.default.svc.clusterset.local.", RecordType::AAAA)
        .await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    assert_eq!(m.authorities.len(), 1);
    assert_eq!(m.authorities[0].name.to_string(), "clusterset.local.");
}

#[tokio::test]
async fn imports_follow_the_watch_within_two_seconds() {
    let api = FakeKubeApi::start().await;
    api.apply(Namespace::new("default"));
    api.apply(
        ServiceImport::cluster_set_ip("default", "web", &["10.42.0.10"]).port("http", "TCP", 80),
    );
    api.apply(ServiceImport::headless("default", "db"));
    api.apply(
        EndpointSlice::imported("default", "db", "west", "db-west")
            .endpoint(Endpoint::new("10.1.0.5"))
            .port("pg", "TCP", 5432),
    );
    let (agent, _) = agent_for(&api).await;
    let c = Client::new(agent.udp());
    let within = Duration::from_secs(2);
    let expect =
        |name: &'static str, want: Result<Vec<String>, ResponseCode>, why: &'static str| {
            let c = &c;
            async move {
                assert!(
                    wait_until(within, || async { records(c, name, A).await == want }).await,
                    "{why}: {name} is not {want:?} within 2 s"
                );
            }
        };
    assert_eq!(
        records(&c, "web.default.svc.clusterset.local.", A).await,
        ok(&["10.42.0.10"])
    );

    // Added.
    api.apply(
        ServiceImport::cluster_set_ip("default", "api", &["10.42.0.20"]).port("http", "TCP", 80),
    );
    expect(
        "api.default.svc.clusterset.local.",
        ok(&["10.42.0.20"]),
        "added",
    )
    .await;
    // Changed.
    api.apply(
        ServiceImport::cluster_set_ip("default", "web", &["10.42.0.11"]).port("http", "TCP", 80),
    );
    expect(
        "web.default.svc.clusterset.local.",
        ok(&["10.42.0.11"]),
        "changed",
    )
    .await;
    // Deleted.
    api.delete(Resource::ServiceImports, "default", "web");
    expect(
        "web.default.svc.clusterset.local.",
        Err(ResponseCode::NXDomain),
        "deleted",
    )
    .await;
    // A slice added, changed and deleted.
    api.apply(
        EndpointSlice::imported("default", "db", "east", "db-east")
            .endpoint(Endpoint::new("10.2.0.7"))
            .port("pg", "TCP", 5432),
    );
    expect(
        "db.default.svc.clusterset.local.",
        ok(&["10.1.0.5", "10.2.0.7"]),
        "slice added",
    )
    .await;
    api.apply(
        EndpointSlice::imported("default", "db", "east", "db-east")
            .endpoint(Endpoint::new("10.2.0.8"))
            .port("pg", "TCP", 5432),
    );
    expect(
        "10-2-0-8.east.db.default.svc.clusterset.local.",
        ok(&["10.2.0.8"]),
        "slice changed",
    )
    .await;
    api.delete(Resource::EndpointSlices, "default", "db-east");
    expect(
        "db.default.svc.clusterset.local.",
        ok(&["10.1.0.5"]),
        "slice deleted",
    )
    .await;

    // History compacted and every watch told 410 Gone: the multicluster
    // watches relist too, and a change made meanwhile is not lost, nor a
    // delete.
    let lists = api.list_count(Resource::ServiceImports);
    api.expire_watches();
    api.apply(
        ServiceImport::cluster_set_ip("default", "late", &["10.42.0.30"]).port("http", "TCP", 80),
    );
    api.delete(Resource::ServiceImports, "default", "api");
    let relist = Duration::from_secs(10);
    assert!(
        wait_until(relist, || async {
            records(&c, "late.default.svc.clusterset.local.", A).await == ok(&["10.42.0.30"])
                && records(&c, "api.default.svc.clusterset.local.", A).await
                    == Err(ResponseCode::NXDomain)
        })
        .await,
        "after the relist"
    );
    assert!(
        api.list_count(Resource::ServiceImports) > lists,
        "the 410 made the ServiceImport watcher list again"
    );
    // The requests named the multicluster resources as CoreDNS does.
    let reqs = api.requests();
    assert!(
        reqs.iter()
            .any(|r| r.path == "/apis/multicluster.x-k8s.io/v1alpha1/serviceimports")
    );
    assert!(reqs.iter().any(|r| {
        r.path == "/apis/discovery.k8s.io/v1/endpointslices"
            && r.param("labelSelector") == Some("multicluster.kubernetes.io/service-name")
    }));
}
