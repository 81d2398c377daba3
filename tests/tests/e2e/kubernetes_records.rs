//! The kubernetes plugin's answers through the agent binary, over real
//! UDP and TCP on loopback, from objects served by the fake API server:
//! every record type and every option, each checked against the exact
//! reply CoreDNS 1.14.7 gives (its `handler_test.go`,
//! `handler_pod_*_test.go`, `handler_ignore_emptyservice_test.go`,
//! `reverse_test.go` and README): rcode, the authoritative bit, and each
//! section's records with their TTLs. Every reply's sections are compared
//! sorted, as CoreDNS's `test.SortAndCheck` does; the SOA serial (the time
//! of the last change) is checked to be a Unix time within the test and
//! then written `SERIAL`.

use std::net::Ipv6Addr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::rdata::PTR;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use nodedns_tests::agent::AgentBuilder;
use nodedns_tests::client::query;
use nodedns_tests::kubeapi::{
    Endpoint, EndpointSlice, FakeKubeApi, Namespace, Pod, Resource, Service,
};
use nodedns_tests::{Agent, Client, FakeUpstream, http_status, wait_until};

/// How soon a change in the API shows in answers.
const WITHIN: Duration = Duration::from_secs(2);
/// The negative answers' SOA with the default TTL (5).
const SOA: &str = "cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. SERIAL 7200 1800 86400 5";

/// A reply as CoreDNS's tests write it: each record `NAME TTL IN TYPE
/// DATA`, each section sorted.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reply {
    rcode: ResponseCode,
    aa: bool,
    answer: Vec<String>,
    authority: Vec<String>,
    additional: Vec<String>,
}

/// Records written in zone-file form, whitespace made single spaces,
/// sorted.
fn rrs(records: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = records
        .iter()
        .map(|r| r.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    v.sort();
    v
}

fn reply(rcode: ResponseCode, answer: &[&str], authority: &[&str], additional: &[&str]) -> Reply {
    Reply {
        rcode,
        aa: true,
        answer: rrs(answer),
        authority: rrs(authority),
        additional: rrs(additional),
    }
}

/// NOERROR with these answers.
fn ok(answer: &[&str]) -> Reply {
    reply(ResponseCode::NoError, answer, &[], &[])
}

/// NOERROR with these answers and additional records.
fn ok_extra(answer: &[&str], additional: &[&str]) -> Reply {
    reply(ResponseCode::NoError, answer, &[], additional)
}

/// NOERROR with these answers, not authoritative: passed on by forward
/// from the fake upstream.
fn forwarded(answer: &[&str]) -> Reply {
    Reply {
        aa: false,
        ..ok(answer)
    }
}

/// NODATA: NOERROR, no answer, the SOA.
fn nodata(soa: &str) -> Reply {
    reply(ResponseCode::NoError, &[], &[soa], &[])
}

/// NXDOMAIN with the SOA.
fn nxdomain(soa: &str) -> Reply {
    reply(ResponseCode::NXDomain, &[], &[soa], &[])
}

fn unix_now() -> u32 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    u32::try_from(secs).expect("Unix time fits in 32 bits")
}

/// `fd00:1::6` as its `ip6.arpa.` name.
fn rev6(ip: &str) -> String {
    let ip: Ipv6Addr = ip.parse().expect("IPv6 address");
    let mut out = String::new();
    for byte in ip.octets().iter().rev() {
        out.push_str(&format!("{:x}.{:x}.", byte & 0xf, byte >> 4));
    }
    out + "ip6.arpa."
}

/// A client for an agent, with the time the test began (the lowest SOA
/// serial it may see).
struct Dns {
    udp: Client,
    tcp: Client,
    since: u32,
}

/// A query for `name` made of raw labels, so that any byte (`_*`) can be
/// asked for; the case is kept.
fn question(name: &str, qtype: RecordType) -> Message {
    let labels = name.trim_end_matches('.').split('.').map(str::as_bytes);
    let mut m = query(".", qtype);
    m.queries[0] = Query::query(Name::from_labels(labels).expect("test name"), qtype);
    m
}

impl Dns {
    /// Asks over UDP.
    async fn ask(&self, name: &str, qtype: RecordType) -> Reply {
        self.read(&self.udp.udp_msg(&question(name, qtype)).await)
    }

    /// Asks over TCP.
    async fn ask_tcp(&self, name: &str, qtype: RecordType) -> Reply {
        self.read(&self.tcp.tcp_msg(&question(name, qtype)).await)
    }

    /// Asks over UDP and checks the reply.
    async fn expect(&self, name: &str, qtype: RecordType, want: Reply) {
        assert_eq!(self.ask(name, qtype).await, want, "{name} {qtype}");
    }

    /// Waits (at most [`WITHIN`]) for the reply to become `want`.
    async fn eventually(&self, name: &str, qtype: RecordType, want: Reply) {
        let came = wait_until(WITHIN, || async { self.ask(name, qtype).await == want }).await;
        assert!(
            came,
            "{name} {qtype} within {WITHIN:?}: got {:?}, want {want:?}",
            self.ask(name, qtype).await
        );
    }

    fn read(&self, m: &Message) -> Reply {
        let section = |records: &[Record]| {
            let mut v: Vec<String> = records.iter().map(|r| self.render(r)).collect();
            v.sort();
            v
        };
        Reply {
            rcode: m.metadata.response_code,
            aa: m.metadata.authoritative,
            answer: section(&m.answers),
            authority: section(&m.authorities),
            additional: section(&m.additionals),
        }
    }

    fn render(&self, r: &Record) -> String {
        let data = match &r.data {
            RData::SOA(soa) => {
                let now = unix_now();
                assert!(
                    (self.since..=now + 1).contains(&soa.serial),
                    "SOA serial {} is not a time within the test ({}..={now})",
                    soa.serial,
                    self.since
                );
                format!(
                    "{} {} SERIAL {} {} {} {}",
                    soa.mname, soa.rname, soa.refresh, soa.retry, soa.expire, soa.minimum
                )
            }
            data => data.to_string(),
        };
        format!(
            "{} {} {} {} {}",
            r.name,
            r.ttl,
            r.dns_class,
            r.record_type(),
            data
        )
    }
}

/// A Corefile: one server block for every zone on loopback, *ready*,
/// *kubernetes* for `zones` against the fake with these option lines, and
/// the plugin lines in `after` behind it.
fn corefile(api: &FakeKubeApi, zones: &str, options: &[&str], after: &[&str]) -> String {
    let mut s = format!(
        ".:0 {{\n    bind 127.0.0.1\n    ready 127.0.0.1:0\n    kubernetes {zones} {{\n        endpoint {}\n",
        api.endpoint_url()
    );
    for o in options {
        s.push_str(&format!("        {o}\n"));
    }
    s.push_str("    }\n");
    for a in after {
        s.push_str(&format!("    {a}\n"));
    }
    s.push_str("}\n");
    s
}

/// Starts the agent and waits until *kubernetes* has synced (`/ready` is
/// 200).
async fn start(builder: AgentBuilder) -> (Agent, Dns) {
    let since = unix_now().saturating_sub(1);
    let agent = builder.start().await;
    let ready = agent.http("ready");
    assert!(
        wait_until(Duration::from_secs(10), || async {
            http_status(ready, "/ready").await == Some(200)
        })
        .await,
        "ready once synced: {:?}",
        agent.stderr()
    );
    let dns = Dns {
        udp: Client::new(agent.udp()),
        tcp: Client::new(agent.tcp()),
        since,
    };
    (agent, dns)
}

/// The fake with namespace `default` and, as in every cluster, the
/// `kubernetes` service in it (a service seen also sets the SOA serial:
/// CoreDNS's serial stays 0 until a service, endpoint or pod changes).
async fn api() -> FakeKubeApi {
    let api = FakeKubeApi::start().await;
    api.apply(Namespace::new("default"));
    api.apply(Service::cluster_ip("default", "kubernetes", "10.96.0.1").port("https", "TCP", 443));
    api
}

// === Record types ===

#[tokio::test]
async fn cluster_ip_services_answer_a_and_aaaa_dual_stack_both() {
    let api = api().await;
    api.apply(Service::cluster_ip("default", "web", "10.96.0.10").port("http", "TCP", 80));
    api.apply(
        Service::cluster_ips("default", "dual", &["10.96.0.20", "fd00:10:96::20"])
            .port("http", "TCP", 80),
    );
    api.apply(Service::cluster_ip("default", "six", "fd00:10:96::30"));
    // A LoadBalancer's ingress address is not the cluster name's.
    api.apply(
        Service::cluster_ip("default", "lb", "10.96.0.50")
            .port("http", "TCP", 80)
            .load_balancer("203.0.113.5"),
    );
    // No ports: answered all the same (CoreDNS adds a sentinel port).
    api.apply(Service::cluster_ip("default", "portless", "10.96.0.40"));
    let (_agent, dns) = start(Agent::corefile(corefile(&api, "cluster.local", &[], &[]))).await;

    let web = ok(&["web.default.svc.cluster.local. 5 IN A 10.96.0.10"]);
    dns.expect("web.default.svc.cluster.local.", RecordType::A, web.clone())
        .await;
    assert_eq!(
        dns.ask_tcp("web.default.svc.cluster.local.", RecordType::A)
            .await,
        web,
        "over TCP"
    );
    // The owner is spelled as asked.
    dns.expect(
        "WEB.Default.svc.Cluster.Local.",
        RecordType::A,
        ok(&["WEB.Default.svc.Cluster.Local. 5 IN A 10.96.0.10"]),
    )
    .await;
    // A v4-only service has no AAAA: NODATA with the SOA.
    dns.expect(
        "web.default.svc.cluster.local.",
        RecordType::AAAA,
        nodata(SOA),
    )
    .await;
    assert_eq!(
        dns.ask_tcp("web.default.svc.cluster.local.", RecordType::AAAA)
            .await,
        nodata(SOA),
        "over TCP"
    );

    dns.expect(
        "dual.default.svc.cluster.local.",
        RecordType::A,
        ok(&["dual.default.svc.cluster.local. 5 IN A 10.96.0.20"]),
    )
    .await;
    dns.expect(
        "dual.default.svc.cluster.local.",
        RecordType::AAAA,
        ok(&["dual.default.svc.cluster.local. 5 IN AAAA fd00:10:96::20"]),
    )
    .await;

    dns.expect(
        "six.default.svc.cluster.local.",
        RecordType::AAAA,
        ok(&["six.default.svc.cluster.local. 5 IN AAAA fd00:10:96::30"]),
    )
    .await;
    dns.expect("six.default.svc.cluster.local.", RecordType::A, nodata(SOA))
        .await;

    dns.expect(
        "portless.default.svc.cluster.local.",
        RecordType::A,
        ok(&["portless.default.svc.cluster.local. 5 IN A 10.96.0.40"]),
    )
    .await;

    dns.expect(
        "lb.default.svc.cluster.local.",
        RecordType::A,
        ok(&["lb.default.svc.cluster.local. 5 IN A 10.96.0.50"]),
    )
    .await;

    // Unknown service: NXDOMAIN with the SOA, for A and AAAA.
    for t in [RecordType::A, RecordType::AAAA] {
        dns.expect("nope.default.svc.cluster.local.", t, nxdomain(SOA))
            .await;
    }
}

#[tokio::test]
async fn headless_services_answer_every_ready_endpoint_and_endpoint_names() {
    let api = api().await;
    api.apply(Service::headless("default", "db").port("pg", "TCP", 5432));
    api.apply(
        EndpointSlice::new("default", "db", "db-v4")
            .endpoint(Endpoint::new("10.1.0.5").hostname("db-0").pod("db-0"))
            .endpoint(Endpoint::new("10.1.0.6").pod("db-6b7c9-x2k4q"))
            .endpoint(Endpoint::new("10.1.0.7").hostname("db-2").not_ready())
            .endpoint(Endpoint::new("10.1.0.8").terminating())
            .port("pg", "TCP", 5432),
    );
    api.apply(
        EndpointSlice::new("default", "db", "db-v6")
            .ipv6()
            .endpoint(Endpoint::new("fd00:1::6"))
            .port("pg", "TCP", 5432),
    );
    // Endpoint names exist under a ClusterIP service too.
    api.apply(Service::cluster_ip("default", "web", "10.96.0.10").port("http", "TCP", 80));
    api.apply(
        EndpointSlice::new("default", "web", "web-abc")
            .endpoint(Endpoint::new("10.1.1.1").hostname("web-0"))
            .port("http", "TCP", 8080),
    );
    // One hostname on two endpoints, and an endpoint in two slices at
    // once (slices of one service may overlap while they change).
    api.apply(Service::headless("default", "dup").port("http", "TCP", 80));
    api.apply(
        EndpointSlice::new("default", "dup", "dup-a")
            .endpoint(Endpoint::new("10.1.3.1").hostname("same"))
            .port("http", "TCP", 80),
    );
    api.apply(
        EndpointSlice::new("default", "dup", "dup-b")
            .endpoint(Endpoint::new("10.1.3.2").hostname("same"))
            .endpoint(Endpoint::new("10.1.3.1").hostname("same"))
            // Readiness unknown: taken as ready.
            .endpoint(Endpoint::new("10.1.3.3").conditions_unknown())
            .port("http", "TCP", 80),
    );
    // A headless service without ready endpoints has no name.
    api.apply(Service::headless("default", "empty"));
    // Endpoints of a slice without ports still have addresses.
    api.apply(Service::headless("default", "portless"));
    api.apply(
        EndpointSlice::new("default", "portless", "portless-abc")
            .endpoint(Endpoint::new("10.1.2.1")),
    );
    let (_agent, dns) = start(Agent::corefile(corefile(&api, "cluster.local", &[], &[]))).await;

    // Every ready endpoint; not-ready and terminating ones are left out.
    dns.expect(
        "db.default.svc.cluster.local.",
        RecordType::A,
        ok(&[
            "db.default.svc.cluster.local. 5 IN A 10.1.0.5",
            "db.default.svc.cluster.local. 5 IN A 10.1.0.6",
        ]),
    )
    .await;
    dns.expect(
        "db.default.svc.cluster.local.",
        RecordType::AAAA,
        ok(&["db.default.svc.cluster.local. 5 IN AAAA fd00:1::6"]),
    )
    .await;
    // One endpoint: by its hostname, else its dashed address (not its
    // pod's name without `endpoint_pod_names`).
    dns.expect(
        "db-0.db.default.svc.cluster.local.",
        RecordType::A,
        ok(&["db-0.db.default.svc.cluster.local. 5 IN A 10.1.0.5"]),
    )
    .await;
    dns.expect(
        "DB-0.Db.default.svc.cluster.local.",
        RecordType::A,
        ok(&["DB-0.Db.default.svc.cluster.local. 5 IN A 10.1.0.5"]),
    )
    .await;
    dns.expect(
        "10-1-0-6.db.default.svc.cluster.local.",
        RecordType::A,
        ok(&["10-1-0-6.db.default.svc.cluster.local. 5 IN A 10.1.0.6"]),
    )
    .await;
    dns.expect(
        "fd00-1--6.db.default.svc.cluster.local.",
        RecordType::AAAA,
        ok(&["fd00-1--6.db.default.svc.cluster.local. 5 IN AAAA fd00:1::6"]),
    )
    .await;
    dns.expect(
        "db-0.db.default.svc.cluster.local.",
        RecordType::AAAA,
        nodata(SOA),
    )
    .await;
    for gone in [
        "db-6b7c9-x2k4q.db.default.svc.cluster.local.",
        "db-2.db.default.svc.cluster.local.",
        "10-1-0-7.db.default.svc.cluster.local.",
        "10-1-0-8.db.default.svc.cluster.local.",
        "bogus.db.default.svc.cluster.local.",
        "empty.default.svc.cluster.local.",
    ] {
        dns.expect(gone, RecordType::A, nxdomain(SOA)).await;
    }
    dns.expect(
        "dup.default.svc.cluster.local.",
        RecordType::A,
        ok(&[
            "dup.default.svc.cluster.local. 5 IN A 10.1.3.1",
            "dup.default.svc.cluster.local. 5 IN A 10.1.3.2",
            "dup.default.svc.cluster.local. 5 IN A 10.1.3.3",
        ]),
    )
    .await;
    dns.expect(
        "same.dup.default.svc.cluster.local.",
        RecordType::A,
        ok(&[
            "same.dup.default.svc.cluster.local. 5 IN A 10.1.3.1",
            "same.dup.default.svc.cluster.local. 5 IN A 10.1.3.2",
        ]),
    )
    .await;
    dns.expect(
        "web-0.web.default.svc.cluster.local.",
        RecordType::A,
        ok(&["web-0.web.default.svc.cluster.local. 5 IN A 10.1.1.1"]),
    )
    .await;
    dns.expect(
        "portless.default.svc.cluster.local.",
        RecordType::A,
        ok(&["portless.default.svc.cluster.local. 5 IN A 10.1.2.1"]),
    )
    .await;
    dns.expect(
        "10-1-2-1.portless.default.svc.cluster.local.",
        RecordType::A,
        ok(&["10-1-2-1.portless.default.svc.cluster.local. 5 IN A 10.1.2.1"]),
    )
    .await;

    // db-2 turns ready: it shows, under the service and by its name.
    api.apply(
        EndpointSlice::new("default", "db", "db-v4")
            .endpoint(Endpoint::new("10.1.0.5").hostname("db-0").pod("db-0"))
            .endpoint(Endpoint::new("10.1.0.6").pod("db-6b7c9-x2k4q"))
            .endpoint(Endpoint::new("10.1.0.7").hostname("db-2"))
            .port("pg", "TCP", 5432),
    );
    dns.eventually(
        "db.default.svc.cluster.local.",
        RecordType::A,
        ok(&[
            "db.default.svc.cluster.local. 5 IN A 10.1.0.5",
            "db.default.svc.cluster.local. 5 IN A 10.1.0.6",
            "db.default.svc.cluster.local. 5 IN A 10.1.0.7",
        ]),
    )
    .await;
    dns.expect(
        "db-2.db.default.svc.cluster.local.",
        RecordType::A,
        ok(&["db-2.db.default.svc.cluster.local. 5 IN A 10.1.0.7"]),
    )
    .await;
}

#[tokio::test]
async fn a_large_headless_service_is_truncated_over_udp_and_whole_over_tcp() {
    let api = api().await;
    api.apply(Service::headless("default", "big").port("http", "TCP", 80));
    let mut slice = EndpointSlice::new("default", "big", "big-abc").port("http", "TCP", 80);
    let mut all = Vec::new();
    for i in 1..=100 {
        let ip = format!("10.2.0.{i}");
        slice = slice.endpoint(Endpoint::new(&ip));
        all.push(format!("big.default.svc.cluster.local. 5 IN A {ip}"));
    }
    all.sort();
    api.apply(slice);
    let (_agent, dns) = start(Agent::corefile(corefile(&api, "cluster.local", &[], &[]))).await;
    let name = "big.default.svc.cluster.local.";
    // Over TCP: all of them.
    let tcp = dns.ask_tcp(name, RecordType::A).await;
    assert_eq!(
        tcp,
        Reply {
            answer: all.clone(),
            ..ok(&[])
        }
    );
    // Over UDP without EDNS: 512 bytes. The header (12) and question (34)
    // leave room for 29 compressed A records (16 each); CoreDNS keeps
    // those and sets TC.
    let m = dns.udp.udp_msg(&question(name, RecordType::A)).await;
    assert!(m.metadata.truncation, "TC set");
    let udp = dns.read(&m);
    assert_eq!(udp.rcode, ResponseCode::NoError);
    assert_eq!(udp.answer.len(), 29, "{udp:?}");
    assert!(udp.answer.iter().all(|a| all.contains(a)), "{udp:?}");
}

#[tokio::test]
async fn srv_for_named_ports_with_targets_and_their_addresses() {
    let api = api().await;
    api.apply(
        Service::cluster_ip("default", "web", "10.96.0.10")
            .port("http", "TCP", 80)
            .port("dns", "UDP", 53),
    );
    api.apply(
        Service::cluster_ips("default", "dual", &["10.96.0.20", "fd00:10:96::20"])
            .port("http", "TCP", 80),
    );
    api.apply(Service::cluster_ip("default", "portless", "10.96.0.40"));
    api.apply(Service::headless("default", "db").port("pg", "TCP", 5432));
    api.apply(
        EndpointSlice::new("default", "db", "db-v4")
            .endpoint(Endpoint::new("10.1.0.5").hostname("db-0"))
            .endpoint(Endpoint::new("10.1.0.6"))
            .endpoint(Endpoint::new("10.1.0.7").not_ready())
            .port("pg", "TCP", 5432),
    );
    let (_agent, dns) = start(Agent::corefile(corefile(&api, "cluster.local", &[], &[]))).await;

    let web_a = "web.default.svc.cluster.local. 5 IN A 10.96.0.10";
    dns.expect(
        "_http._tcp.web.default.svc.cluster.local.",
        RecordType::SRV,
        ok_extra(
            &["_http._tcp.web.default.svc.cluster.local. 5 IN SRV 0 100 80 web.default.svc.cluster.local."],
            &[web_a],
        ),
    )
    .await;
    assert_eq!(
        dns.ask_tcp("_http._tcp.web.default.svc.cluster.local.", RecordType::SRV)
            .await,
        dns.ask("_http._tcp.web.default.svc.cluster.local.", RecordType::SRV)
            .await,
        "over TCP"
    );
    dns.expect(
        "_dns._udp.web.default.svc.cluster.local.",
        RecordType::SRV,
        ok_extra(
            &["_dns._udp.web.default.svc.cluster.local. 5 IN SRV 0 100 53 web.default.svc.cluster.local."],
            &[web_a],
        ),
    )
    .await;
    // The underscores are optional.
    dns.expect(
        "http.tcp.web.default.svc.cluster.local.",
        RecordType::SRV,
        ok_extra(
            &["http.tcp.web.default.svc.cluster.local. 5 IN SRV 0 100 80 web.default.svc.cluster.local."],
            &[web_a],
        ),
    )
    .await;
    // The service name: every port, the weight shared, one address.
    dns.expect(
        "web.default.svc.cluster.local.",
        RecordType::SRV,
        ok_extra(
            &[
                "web.default.svc.cluster.local. 5 IN SRV 0 50 80 web.default.svc.cluster.local.",
                "web.default.svc.cluster.local. 5 IN SRV 0 50 53 web.default.svc.cluster.local.",
            ],
            &[web_a],
        ),
    )
    .await;
    // No such port or protocol: the name does not exist.
    for name in [
        "_http._udp.web.default.svc.cluster.local.",
        "_https._tcp.web.default.svc.cluster.local.",
    ] {
        dns.expect(name, RecordType::SRV, nxdomain(SOA)).await;
    }
    // Dual-stack: one SRV (weight 50, one per cluster IP counted), both
    // addresses.
    dns.expect(
        "_http._tcp.dual.default.svc.cluster.local.",
        RecordType::SRV,
        ok_extra(
            &["_http._tcp.dual.default.svc.cluster.local. 5 IN SRV 0 50 80 dual.default.svc.cluster.local."],
            &[
                "dual.default.svc.cluster.local. 5 IN A 10.96.0.20",
                "dual.default.svc.cluster.local. 5 IN AAAA fd00:10:96::20",
            ],
        ),
    )
    .await;
    // A service without ports exists but has no SRV.
    dns.expect(
        "portless.default.svc.cluster.local.",
        RecordType::SRV,
        nodata(SOA),
    )
    .await;
    // Headless: a target per ready endpoint, each with its address.
    dns.expect(
        "_pg._tcp.db.default.svc.cluster.local.",
        RecordType::SRV,
        ok_extra(
            &[
                "_pg._tcp.db.default.svc.cluster.local. 5 IN SRV 0 50 5432 db-0.db.default.svc.cluster.local.",
                "_pg._tcp.db.default.svc.cluster.local. 5 IN SRV 0 50 5432 10-1-0-6.db.default.svc.cluster.local.",
            ],
            &[
                "db-0.db.default.svc.cluster.local. 5 IN A 10.1.0.5",
                "10-1-0-6.db.default.svc.cluster.local. 5 IN A 10.1.0.6",
            ],
        ),
    )
    .await;
    // The per-endpoint name: that endpoint alone.
    dns.expect(
        "db-0.db.default.svc.cluster.local.",
        RecordType::SRV,
        ok_extra(
            &["db-0.db.default.svc.cluster.local. 5 IN SRV 0 100 5432 db-0.db.default.svc.cluster.local."],
            &["db-0.db.default.svc.cluster.local. 5 IN A 10.1.0.5"],
        ),
    )
    .await;
}

#[tokio::test]
async fn ptr_for_service_and_endpoint_addresses_in_the_listed_reverse_zones() {
    let api = api().await;
    api.apply(Service::cluster_ip("default", "web", "10.96.0.10").port("http", "TCP", 80));
    api.apply(
        EndpointSlice::new("default", "web", "web-abc")
            .endpoint(Endpoint::new("10.1.1.1"))
            .port("http", "TCP", 8080),
    );
    api.apply(
        Service::cluster_ips("default", "dual", &["10.96.0.20", "fd00:10:96::20"])
            .port("http", "TCP", 80),
    );
    api.apply(Service::headless("default", "db").port("pg", "TCP", 5432));
    api.apply(
        EndpointSlice::new("default", "db", "db-v4")
            .endpoint(Endpoint::new("10.1.0.5").hostname("db-0"))
            .endpoint(Endpoint::new("10.1.0.7").not_ready())
            .port("pg", "TCP", 5432),
    );
    api.apply(
        EndpointSlice::new("default", "db", "db-v6")
            .ipv6()
            .endpoint(Endpoint::new("fd00:1::6"))
            .port("pg", "TCP", 5432),
    );
    let (_agent, dns) = start(Agent::corefile(corefile(
        &api,
        "cluster.local in-addr.arpa ip6.arpa",
        &[],
        &[],
    )))
    .await;

    let ptr = |q: &str, target: &str| ok(&[&format!("{q} 5 IN PTR {target}")]);
    let cases = [
        // Cluster IPs: the service's name.
        (
            "10.0.96.10.in-addr.arpa.".to_string(),
            "web.default.svc.cluster.local.",
        ),
        (
            "20.0.96.10.in-addr.arpa.".to_string(),
            "dual.default.svc.cluster.local.",
        ),
        (rev6("fd00:10:96::20"), "dual.default.svc.cluster.local."),
        // Endpoint addresses: the endpoint's name.
        (
            "5.0.1.10.in-addr.arpa.".to_string(),
            "db-0.db.default.svc.cluster.local.",
        ),
        (rev6("fd00:1::6"), "fd00-1--6.db.default.svc.cluster.local."),
        (
            "1.1.1.10.in-addr.arpa.".to_string(),
            "10-1-1-1.web.default.svc.cluster.local.",
        ),
    ];
    for (q, target) in &cases {
        dns.expect(q, RecordType::PTR, ptr(q, target)).await;
    }
    let v4_soa = "in-addr.arpa. 5 IN SOA ns.dns.in-addr.arpa. hostmaster.in-addr.arpa. SERIAL 7200 1800 86400 5";
    let v6_soa =
        "ip6.arpa. 5 IN SOA ns.dns.ip6.arpa. hostmaster.ip6.arpa. SERIAL 7200 1800 86400 5";
    // An address nothing has, and a not-ready endpoint's.
    for q in ["99.0.96.10.in-addr.arpa.", "7.0.1.10.in-addr.arpa."] {
        dns.expect(q, RecordType::PTR, nxdomain(v4_soa)).await;
    }
    dns.expect(&rev6("fd00:1::99"), RecordType::PTR, nxdomain(v6_soa))
        .await;
    // A forward name has no PTR (NODATA), a reverse one no A.
    dns.expect(
        "web.default.svc.cluster.local.",
        RecordType::PTR,
        nodata(SOA),
    )
    .await;
    dns.expect("10.0.96.10.in-addr.arpa.", RecordType::A, nxdomain(v4_soa))
        .await;
}

#[tokio::test]
async fn external_name_services_are_cnames_followed_inside_the_zone_and_forwarded_outside() {
    let api = api().await;
    api.apply(Service::cluster_ip("default", "web", "10.96.0.10").port("http", "TCP", 80));
    api.apply(Service::external_name(
        "default",
        "to-web",
        "web.default.svc.cluster.local",
    ));
    api.apply(Service::external_name("default", "ext", "www.example.org"));
    api.apply(Service::external_name(
        "default",
        "gone",
        "nope.example.org",
    ));
    api.apply(Service::external_name(
        "default",
        "to-nowhere",
        "nope.default.svc.cluster.local",
    ));
    let up = FakeUpstream::builder()
        .a("www.example.org.", "192.0.2.1")
        .start()
        .await;
    let forward = format!("forward . {up}");
    let (_agent, dns) = start(Agent::corefile(corefile(
        &api,
        "cluster.local",
        &[],
        &[&forward],
    )))
    .await;

    // CNAME queries: the CNAME alone.
    dns.expect(
        "ext.default.svc.cluster.local.",
        RecordType::CNAME,
        ok(&["ext.default.svc.cluster.local. 5 IN CNAME www.example.org."]),
    )
    .await;
    dns.expect(
        "to-web.default.svc.cluster.local.",
        RecordType::CNAME,
        ok(&["to-web.default.svc.cluster.local. 5 IN CNAME web.default.svc.cluster.local."]),
    )
    .await;
    // A target inside the zone is followed here.
    dns.expect(
        "to-web.default.svc.cluster.local.",
        RecordType::A,
        ok(&[
            "to-web.default.svc.cluster.local. 5 IN CNAME web.default.svc.cluster.local.",
            "web.default.svc.cluster.local. 5 IN A 10.96.0.10",
        ]),
    )
    .await;
    // A target outside it is resolved through forward: the CNAME, then
    // the upstream's records with the upstream's TTL.
    dns.expect(
        "ext.default.svc.cluster.local.",
        RecordType::A,
        ok(&[
            "ext.default.svc.cluster.local. 5 IN CNAME www.example.org.",
            "www.example.org. 300 IN A 192.0.2.1",
        ]),
    )
    .await;
    assert_eq!(
        dns.ask_tcp("ext.default.svc.cluster.local.", RecordType::A)
            .await,
        dns.ask("ext.default.svc.cluster.local.", RecordType::A)
            .await,
        "over TCP"
    );
    assert!(up.count("www.example.org", RecordType::A) >= 1);
    for name in [
        "to-web.default.svc.cluster.local.",
        "ext.default.svc.cluster.local.",
    ] {
        let m = dns.udp.udp(name, RecordType::A).await;
        assert_eq!(
            m.answers.first().map(Record::record_type),
            Some(RecordType::CNAME),
            "{name}: the CNAME comes before its target's records"
        );
    }
    // A target inside the zone that does not exist: the CNAME is dropped,
    // and the name is NODATA.
    dns.expect(
        "to-nowhere.default.svc.cluster.local.",
        RecordType::A,
        nodata(SOA),
    )
    .await;
    // The upstream has no AAAA (NODATA) or no name at all (NXDOMAIN):
    // CoreDNS keeps the CNAME, adds the (empty) answer and says NOERROR.
    dns.expect(
        "ext.default.svc.cluster.local.",
        RecordType::AAAA,
        ok(&["ext.default.svc.cluster.local. 5 IN CNAME www.example.org."]),
    )
    .await;
    dns.expect(
        "gone.default.svc.cluster.local.",
        RecordType::A,
        ok(&["gone.default.svc.cluster.local. 5 IN CNAME nope.example.org."]),
    )
    .await;
    // No SRV for an ExternalName (NODATA), and nothing below it.
    dns.expect(
        "ext.default.svc.cluster.local.",
        RecordType::SRV,
        nodata(SOA),
    )
    .await;
    for name in [
        "endpoint.ext.default.svc.cluster.local.",
        "sub.sub.ext.default.svc.cluster.local.",
    ] {
        dns.expect(name, RecordType::CNAME, nxdomain(SOA)).await;
    }
}

#[tokio::test]
async fn changes_of_kind_deletions_and_namespaces_follow_the_watch() {
    let api = api().await;
    api.apply(Service::cluster_ip("default", "web", "10.96.0.10").port("http", "TCP", 80));
    api.apply(Service::headless("default", "db").port("pg", "TCP", 5432));
    api.apply(
        EndpointSlice::new("default", "db", "db-abc")
            .endpoint(Endpoint::new("10.1.0.5").hostname("db-0"))
            .port("pg", "TCP", 5432),
    );
    // Its namespace does not exist (yet).
    api.apply(Service::cluster_ip("late", "app", "10.96.7.7").port("http", "TCP", 80));
    let (_agent, dns) = start(Agent::corefile(corefile(
        &api,
        "cluster.local in-addr.arpa",
        &[],
        &[],
    )))
    .await;
    let v4_soa = "in-addr.arpa. 5 IN SOA ns.dns.in-addr.arpa. hostmaster.in-addr.arpa. SERIAL 7200 1800 86400 5";

    // A ClusterIP service turned ExternalName: a CNAME, no A, no PTR.
    api.apply(Service::external_name("default", "web", "www.example.org"));
    dns.eventually(
        "web.default.svc.cluster.local.",
        RecordType::CNAME,
        ok(&["web.default.svc.cluster.local. 5 IN CNAME www.example.org."]),
    )
    .await;
    dns.expect(
        "10.0.96.10.in-addr.arpa.",
        RecordType::PTR,
        nxdomain(v4_soa),
    )
    .await;
    // And back.
    api.apply(Service::cluster_ip("default", "web", "10.96.0.11").port("http", "TCP", 80));
    dns.eventually(
        "web.default.svc.cluster.local.",
        RecordType::A,
        ok(&["web.default.svc.cluster.local. 5 IN A 10.96.0.11"]),
    )
    .await;
    dns.expect(
        "11.0.96.10.in-addr.arpa.",
        RecordType::PTR,
        ok(&["11.0.96.10.in-addr.arpa. 5 IN PTR web.default.svc.cluster.local."]),
    )
    .await;

    // A headless service deleted: its names are gone, though its slice
    // is still there. CoreDNS indexes slices by address on their own, so
    // the PTR stays until the slice goes too (the API's garbage
    // collector deletes it after its owner).
    api.delete(Resource::Services, "default", "db");
    for name in [
        "db.default.svc.cluster.local.",
        "db-0.db.default.svc.cluster.local.",
    ] {
        dns.eventually(name, RecordType::A, nxdomain(SOA)).await;
    }
    dns.expect(
        "5.0.1.10.in-addr.arpa.",
        RecordType::PTR,
        ok(&["5.0.1.10.in-addr.arpa. 5 IN PTR db-0.db.default.svc.cluster.local."]),
    )
    .await;
    api.delete(Resource::EndpointSlices, "default", "db-abc");
    dns.eventually("5.0.1.10.in-addr.arpa.", RecordType::PTR, nxdomain(v4_soa))
        .await;

    // A service answers only while its namespace exists.
    dns.expect("app.late.svc.cluster.local.", RecordType::A, nxdomain(SOA))
        .await;
    api.apply(Namespace::new("late"));
    dns.eventually(
        "app.late.svc.cluster.local.",
        RecordType::A,
        ok(&["app.late.svc.cluster.local. 5 IN A 10.96.7.7"]),
    )
    .await;
    api.delete(Resource::Namespaces, "", "late");
    dns.eventually("app.late.svc.cluster.local.", RecordType::A, nxdomain(SOA))
        .await;
}

#[tokio::test]
async fn pods_disabled_answers_nxdomain() {
    let api = api().await;
    api.apply(Pod::new("default", "web-0", "10.244.0.5"));
    let (_agent, dns) = start(Agent::corefile(corefile(
        &api,
        "cluster.local",
        &["pods disabled"],
        &[],
    )))
    .await;
    // Even for the address of a pod that exists.
    for name in [
        "10-244-0-5.default.pod.cluster.local.",
        "1-2-3-4.default.pod.cluster.local.",
        "default.pod.cluster.local.",
    ] {
        dns.expect(name, RecordType::A, nxdomain(SOA)).await;
    }
    dns.expect("pod.cluster.local.", RecordType::A, nodata(SOA))
        .await;
}

#[tokio::test]
async fn pods_insecure_answers_any_address_in_an_existing_namespace() {
    let api = api().await;
    let (_agent, dns) = start(Agent::corefile(corefile(
        &api,
        "cluster.local",
        &["pods insecure"],
        &[],
    )))
    .await;
    dns.expect(
        "1-2-3-4.default.pod.cluster.local.",
        RecordType::A,
        ok(&["1-2-3-4.default.pod.cluster.local. 5 IN A 1.2.3.4"]),
    )
    .await;
    dns.expect(
        "fd00-1--5.default.pod.cluster.local.",
        RecordType::AAAA,
        ok(&["fd00-1--5.default.pod.cluster.local. 5 IN AAAA fd00:1::5"]),
    )
    .await;
    dns.expect(
        "1-2-3-4.default.pod.cluster.local.",
        RecordType::AAAA,
        nodata(SOA),
    )
    .await;
    dns.expect("default.pod.cluster.local.", RecordType::A, nodata(SOA))
        .await;
    // Not an address, or a namespace that does not exist.
    for (name, t) in [
        ("blah.default.pod.cluster.local.", RecordType::A),
        ("blah.default.pod.cluster.local.", RecordType::AAAA),
        ("1-2-3-4.nons.pod.cluster.local.", RecordType::A),
    ] {
        dns.expect(name, t, nxdomain(SOA)).await;
    }
}

#[tokio::test]
async fn pods_verified_answers_only_a_pod_in_that_namespace_and_follows_the_watch() {
    let api = api().await;
    api.apply(Namespace::new("other"));
    api.apply(Pod::new("default", "web-0", "10.244.0.5"));
    api.apply(Pod::new("other", "job-0", "10.244.1.5"));
    // Only `status.podIP` is verified (CoreDNS indexes pods by it): a
    // dual-stack pod's second address is not.
    api.apply(Pod::ips(
        "default",
        "dual-0",
        &["10.244.0.7", "fd00:244::7"],
    ));
    api.apply(Pod::new("default", "six-0", "fd00:244::8"));
    // A finished pod is not watched (CoreDNS's field selector).
    api.apply(Pod::new("default", "done-0", "10.244.0.6").phase("Succeeded"));
    let (_agent, dns) = start(Agent::corefile(corefile(
        &api,
        "cluster.local",
        &["pods verified"],
        &[],
    )))
    .await;
    dns.expect(
        "10-244-0-5.default.pod.cluster.local.",
        RecordType::A,
        ok(&["10-244-0-5.default.pod.cluster.local. 5 IN A 10.244.0.5"]),
    )
    .await;
    dns.expect(
        "10-244-1-5.other.pod.cluster.local.",
        RecordType::A,
        ok(&["10-244-1-5.other.pod.cluster.local. 5 IN A 10.244.1.5"]),
    )
    .await;
    for name in [
        // In another namespace than the pod's.
        "10-244-1-5.default.pod.cluster.local.",
        // No pod has it.
        "10-244-0-9.default.pod.cluster.local.",
        "10-244-0-6.default.pod.cluster.local.",
        "1-2-3-4.default.pod.cluster.local.",
    ] {
        dns.expect(name, RecordType::A, nxdomain(SOA)).await;
    }
    dns.expect(
        "10-244-0-7.default.pod.cluster.local.",
        RecordType::A,
        ok(&["10-244-0-7.default.pod.cluster.local. 5 IN A 10.244.0.7"]),
    )
    .await;
    dns.expect(
        "fd00-244--8.default.pod.cluster.local.",
        RecordType::AAAA,
        ok(&["fd00-244--8.default.pod.cluster.local. 5 IN AAAA fd00:244::8"]),
    )
    .await;
    dns.expect(
        "fd00-244--7.default.pod.cluster.local.",
        RecordType::AAAA,
        nxdomain(SOA),
    )
    .await;
    dns.expect("default.pod.cluster.local.", RecordType::A, nodata(SOA))
        .await;
    dns.expect("nons.pod.cluster.local.", RecordType::A, nxdomain(SOA))
        .await;

    // A pod added later answers within 2 s; one deleted, or finished,
    // is gone within 2 s.
    api.apply(Pod::new("default", "web-1", "10.244.0.9"));
    dns.eventually(
        "10-244-0-9.default.pod.cluster.local.",
        RecordType::A,
        ok(&["10-244-0-9.default.pod.cluster.local. 5 IN A 10.244.0.9"]),
    )
    .await;
    api.delete(Resource::Pods, "default", "web-1");
    dns.eventually(
        "10-244-0-9.default.pod.cluster.local.",
        RecordType::A,
        nxdomain(SOA),
    )
    .await;
    api.apply(Pod::new("default", "web-0", "10.244.0.5").phase("Failed"));
    dns.eventually(
        "10-244-0-5.default.pod.cluster.local.",
        RecordType::A,
        nxdomain(SOA),
    )
    .await;
}

#[tokio::test]
async fn zone_names_dns_version_nodata_nxdomain_and_wildcards() {
    let api = api().await;
    api.apply(Service::cluster_ip("default", "web", "10.96.0.10").port("http", "TCP", 80));
    api.apply(Service::headless("default", "db"));
    api.apply(
        EndpointSlice::new("default", "db", "db-abc")
            .endpoint(Endpoint::new("10.1.0.5").hostname("db-0"))
            .port("pg", "TCP", 5432),
    );
    let (_agent, dns) = start(Agent::corefile(corefile(&api, "cluster.local", &[], &[]))).await;

    dns.expect(
        "dns-version.cluster.local.",
        RecordType::TXT,
        ok(&["dns-version.cluster.local. 28800 IN TXT 1.1.0"]),
    )
    .await;
    // Another TXT: NODATA where the name exists, else NXDOMAIN.
    dns.expect(
        "web.default.svc.cluster.local.",
        RecordType::TXT,
        nodata(SOA),
    )
    .await;
    dns.expect(
        "nope.default.svc.cluster.local.",
        RecordType::TXT,
        nxdomain(SOA),
    )
    .await;
    // The apex: its SOA in the answer; other types NODATA.
    dns.expect("cluster.local.", RecordType::SOA, ok(&[SOA]))
        .await;
    dns.expect("cluster.local.", RecordType::A, nodata(SOA))
        .await;
    dns.expect(
        "web.default.svc.cluster.local.",
        RecordType::SOA,
        nodata(SOA),
    )
    .await;
    // `svc.ZONE`, `pod.ZONE` and an existing namespace exist and are
    // empty; a namespace that does not exist, or a name of another
    // shape, does not exist.
    for name in [
        "svc.cluster.local.",
        "pod.cluster.local.",
        "default.svc.cluster.local.",
    ] {
        dns.expect(name, RecordType::A, nodata(SOA)).await;
        dns.expect(name, RecordType::NS, nodata(SOA)).await;
    }
    for name in [
        "nons.svc.cluster.local.",
        "web.nons.svc.cluster.local.",
        "foo.cluster.local.",
        "web.default.foo.cluster.local.",
        "a.b.c.web.default.svc.cluster.local.",
        "x.db-0.db.default.svc.cluster.local.",
    ] {
        dns.expect(name, RecordType::A, nxdomain(SOA)).await;
    }
    dns.expect("foo.svc.cluster.local.", RecordType::NS, nxdomain(SOA))
        .await;
    // Another type for an existing name: NODATA (CoreDNS's fake A
    // lookup decides).
    dns.expect(
        "web.default.svc.cluster.local.",
        RecordType::MX,
        nodata(SOA),
    )
    .await;
    dns.expect(
        "nope.default.svc.cluster.local.",
        RecordType::MX,
        nxdomain(SOA),
    )
    .await;
    // Wildcards were removed in CoreDNS 1.9.0: `*` and `any` are
    // ordinary labels and name nothing.
    for name in [
        "*.default.svc.cluster.local.",
        "*.*.svc.cluster.local.",
        "web.*.svc.cluster.local.",
        "any.default.svc.cluster.local.",
        "*.db.default.svc.cluster.local.",
        "*.web.default.svc.cluster.local.",
    ] {
        dns.expect(name, RecordType::A, nxdomain(SOA)).await;
    }
    for name in [
        "_*._*.web.default.svc.cluster.local.",
        "_*._tcp.web.default.svc.cluster.local.",
        "_http._*.web.default.svc.cluster.local.",
        "*.*.web.default.svc.cluster.local.",
    ] {
        dns.expect(name, RecordType::SRV, nxdomain(SOA)).await;
    }
}

#[tokio::test]
async fn the_apex_has_its_soa_and_no_ns_address_on_loopback() {
    let api = api().await;
    api.apply(Namespace::new("kube-system"));
    // This server is an endpoint of kube-dns, at a loopback address.
    api.apply(Service::cluster_ip("kube-system", "kube-dns", "10.96.0.53").port("dns", "UDP", 53));
    api.apply(
        EndpointSlice::new("kube-system", "kube-dns", "kube-dns-abc")
            .endpoint(Endpoint::new("127.0.0.1").pod("coredns-0"))
            .port("dns", "UDP", 53),
    );
    let (_agent, dns) = start(Agent::corefile(corefile(&api, "cluster.local", &[], &[]))).await;
    dns.expect("cluster.local.", RecordType::SOA, ok(&[SOA]))
        .await;
    for t in [
        RecordType::A,
        RecordType::AAAA,
        RecordType::SRV,
        RecordType::HINFO,
    ] {
        dns.expect("cluster.local.", t, nodata(SOA)).await;
    }
    // The apex NS and `ns.dns.ZONE` hold the server's own addresses, and
    // loopback ones never count (CoreDNS's `boundIPs` skips them): bound
    // to 127.0.0.1, it has none, so both are NODATA (the unit tests give
    // the plugin other addresses).
    dns.expect("cluster.local.", RecordType::NS, nodata(SOA))
        .await;
    for t in [RecordType::A, RecordType::AAAA] {
        dns.expect("ns.dns.cluster.local.", t, nodata(SOA)).await;
    }
}

// CoreDNS runs its plugins in a fixed order, not the Corefile's: *hosts*
// comes before *kubernetes*, *forward* after it. The plugin that
// fallthrough hands names to is forward here.

#[tokio::test]
async fn fallthrough_in_listed_zones_hands_missing_names_to_the_next_plugin() {
    let api = api().await;
    api.apply(Service::cluster_ip("default", "web", "10.96.0.10").port("http", "TCP", 80));
    let gateway = Name::from_ascii("gateway.example.org.").unwrap();
    let up = FakeUpstream::builder()
        .a("missing.default.svc.cluster.local.", "192.0.2.7")
        .canned(
            "250.0.96.10.in-addr.arpa.",
            RecordType::PTR,
            ResponseCode::NoError,
            vec![Record::from_rdata(
                Name::from_ascii("250.0.96.10.in-addr.arpa.").unwrap(),
                300,
                RData::PTR(PTR(gateway)),
            )],
            vec![],
        )
        .start()
        .await;
    let forward = format!("forward . {up}");
    let (_agent, dns) = start(Agent::corefile(corefile(
        &api,
        "cluster.local in-addr.arpa",
        &["fallthrough in-addr.arpa"],
        &[&forward],
    )))
    .await;

    // in-addr.arpa falls through: an address kubernetes does not know is
    // answered by the upstream.
    dns.expect(
        "250.0.96.10.in-addr.arpa.",
        RecordType::PTR,
        forwarded(&["250.0.96.10.in-addr.arpa. 300 IN PTR gateway.example.org."]),
    )
    .await;
    // One it knows is answered by kubernetes.
    dns.expect(
        "10.0.96.10.in-addr.arpa.",
        RecordType::PTR,
        ok(&["10.0.96.10.in-addr.arpa. 5 IN PTR web.default.svc.cluster.local."]),
    )
    .await;
    // cluster.local does not: NXDOMAIN, though the upstream has the name.
    dns.expect(
        "missing.default.svc.cluster.local.",
        RecordType::A,
        nxdomain(SOA),
    )
    .await;
    assert_eq!(
        up.count("missing.default.svc.cluster.local", RecordType::A),
        0
    );
}

#[tokio::test]
async fn fallthrough_in_every_zone_passes_nxdomain_but_not_nodata() {
    let api = api().await;
    api.apply(Service::cluster_ip("default", "web", "10.96.0.10").port("http", "TCP", 80));
    let up = FakeUpstream::builder()
        .a("missing.default.svc.cluster.local.", "192.0.2.7")
        .aaaa("web.default.svc.cluster.local.", "2001:db8::7")
        .start()
        .await;
    let forward = format!("forward . {up}");
    let (_agent, dns) = start(Agent::corefile(corefile(
        &api,
        "cluster.local",
        &["fallthrough"],
        &[&forward],
    )))
    .await;

    dns.expect(
        "missing.default.svc.cluster.local.",
        RecordType::A,
        forwarded(&["missing.default.svc.cluster.local. 300 IN A 192.0.2.7"]),
    )
    .await;
    dns.expect(
        "web.default.svc.cluster.local.",
        RecordType::A,
        ok(&["web.default.svc.cluster.local. 5 IN A 10.96.0.10"]),
    )
    .await;
    // NODATA is kubernetes' own answer, never passed on.
    dns.expect(
        "web.default.svc.cluster.local.",
        RecordType::AAAA,
        nodata(SOA),
    )
    .await;
    assert_eq!(
        up.count("web.default.svc.cluster.local", RecordType::AAAA),
        0
    );
}

#[tokio::test]
async fn ttl_sets_every_record_and_the_soa_minimum_with_the_soa_ttl_capped_at_300() {
    let api = api().await;
    api.apply(Service::cluster_ip("default", "web", "10.96.0.10").port("http", "TCP", 80));
    api.apply(Service::headless("default", "db").port("pg", "TCP", 5432));
    api.apply(
        EndpointSlice::new("default", "db", "db-abc")
            .endpoint(Endpoint::new("10.1.0.5").hostname("db-0"))
            .port("pg", "TCP", 5432),
    );
    let (_agent, dns) = start(Agent::corefile(corefile(
        &api,
        "cluster.local in-addr.arpa",
        &["ttl 600"],
        &[],
    )))
    .await;
    let soa = "cluster.local. 300 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. SERIAL 7200 1800 86400 600";
    dns.expect(
        "web.default.svc.cluster.local.",
        RecordType::A,
        ok(&["web.default.svc.cluster.local. 600 IN A 10.96.0.10"]),
    )
    .await;
    dns.expect(
        "_pg._tcp.db.default.svc.cluster.local.",
        RecordType::SRV,
        ok_extra(
            &["_pg._tcp.db.default.svc.cluster.local. 600 IN SRV 0 100 5432 db-0.db.default.svc.cluster.local."],
            &["db-0.db.default.svc.cluster.local. 600 IN A 10.1.0.5"],
        ),
    )
    .await;
    dns.expect(
        "10.0.96.10.in-addr.arpa.",
        RecordType::PTR,
        ok(&["10.0.96.10.in-addr.arpa. 600 IN PTR web.default.svc.cluster.local."]),
    )
    .await;
    dns.expect(
        "nope.default.svc.cluster.local.",
        RecordType::A,
        nxdomain(soa),
    )
    .await;
    dns.expect(
        "web.default.svc.cluster.local.",
        RecordType::AAAA,
        nodata(soa),
    )
    .await;
    dns.expect("cluster.local.", RecordType::SOA, ok(&[soa]))
        .await;
    // dns-version keeps its own TTL.
    dns.expect(
        "dns-version.cluster.local.",
        RecordType::TXT,
        ok(&["dns-version.cluster.local. 28800 IN TXT 1.1.0"]),
    )
    .await;
}

// === Options ===

#[tokio::test]
async fn namespaces_exposes_only_listed_namespaces_that_exist() {
    let api = api().await;
    api.apply(Namespace::new("hidden"));
    api.apply(Service::cluster_ip("default", "web", "10.96.0.10").port("http", "TCP", 80));
    api.apply(Service::cluster_ip("hidden", "secret", "10.96.5.5").port("http", "TCP", 80));
    api.apply(Service::headless("hidden", "db"));
    api.apply(
        EndpointSlice::new("hidden", "db", "db-abc")
            .endpoint(Endpoint::new("10.1.5.5").hostname("db-0"))
            .port("pg", "TCP", 5432),
    );
    // `missing` is listed but does not exist.
    let (_agent, dns) = start(Agent::corefile(corefile(
        &api,
        "cluster.local in-addr.arpa",
        &["namespaces default missing"],
        &[],
    )))
    .await;
    let v4_soa = "in-addr.arpa. 5 IN SOA ns.dns.in-addr.arpa. hostmaster.in-addr.arpa. SERIAL 7200 1800 86400 5";
    dns.expect(
        "web.default.svc.cluster.local.",
        RecordType::A,
        ok(&["web.default.svc.cluster.local. 5 IN A 10.96.0.10"]),
    )
    .await;
    dns.expect("default.svc.cluster.local.", RecordType::A, nodata(SOA))
        .await;
    for name in [
        "secret.hidden.svc.cluster.local.",
        "db.hidden.svc.cluster.local.",
        "db-0.db.hidden.svc.cluster.local.",
        "hidden.svc.cluster.local.",
        "missing.svc.cluster.local.",
        "web.missing.svc.cluster.local.",
    ] {
        dns.expect(name, RecordType::A, nxdomain(SOA)).await;
    }
    dns.expect(
        "_http._tcp.secret.hidden.svc.cluster.local.",
        RecordType::SRV,
        nxdomain(SOA),
    )
    .await;
    // Nor PTRs to names in other namespaces.
    for q in ["5.5.96.10.in-addr.arpa.", "5.5.1.10.in-addr.arpa."] {
        dns.expect(q, RecordType::PTR, nxdomain(v4_soa)).await;
    }
    dns.expect(
        "10.0.96.10.in-addr.arpa.",
        RecordType::PTR,
        ok(&["10.0.96.10.in-addr.arpa. 5 IN PTR web.default.svc.cluster.local."]),
    )
    .await;
}

#[tokio::test]
async fn namespaces_with_one_namespace_answers_it_alone() {
    let api = api().await;
    api.apply(Namespace::new("hidden"));
    api.apply(Service::cluster_ip("default", "web", "10.96.0.10").port("http", "TCP", 80));
    api.apply(Service::cluster_ip("hidden", "secret", "10.96.5.5").port("http", "TCP", 80));
    let (_agent, dns) = start(Agent::corefile(corefile(
        &api,
        "cluster.local",
        &["namespaces default"],
        &[],
    )))
    .await;
    dns.expect(
        "web.default.svc.cluster.local.",
        RecordType::A,
        ok(&["web.default.svc.cluster.local. 5 IN A 10.96.0.10"]),
    )
    .await;
    dns.expect(
        "secret.hidden.svc.cluster.local.",
        RecordType::A,
        nxdomain(SOA),
    )
    .await;
    // Changes in the namespace still arrive.
    api.apply(Service::cluster_ip("default", "late", "10.96.0.12"));
    dns.eventually(
        "late.default.svc.cluster.local.",
        RecordType::A,
        ok(&["late.default.svc.cluster.local. 5 IN A 10.96.0.12"]),
    )
    .await;
}

#[tokio::test]
async fn labels_selects_objects_on_the_api_server_and_follows_relabelling() {
    let api = api().await;
    api.apply(
        Service::cluster_ip("default", "web", "10.96.0.10")
            .port("http", "TCP", 80)
            .label("dns", "public"),
    );
    api.apply(Service::cluster_ip("default", "hidden", "10.96.0.11").port("http", "TCP", 80));
    // The endpointslice controller copies a service's labels to its
    // slices; a slice without them is not seen.
    api.apply(Service::headless("default", "db").label("dns", "public"));
    api.apply(
        EndpointSlice::new("default", "db", "db-abc")
            .label("dns", "public")
            .endpoint(Endpoint::new("10.1.0.5"))
            .port("pg", "TCP", 5432),
    );
    api.apply(Service::headless("default", "db2").label("dns", "public"));
    api.apply(
        EndpointSlice::new("default", "db2", "db2-abc")
            .endpoint(Endpoint::new("10.1.0.6"))
            .port("pg", "TCP", 5432),
    );
    let (_agent, dns) = start(Agent::corefile(corefile(
        &api,
        "cluster.local",
        &["labels dns=public"],
        &[],
    )))
    .await;
    // The selector went to the API server, on lists and watches.
    for resource in [Resource::Services, Resource::EndpointSlices] {
        let sent: Vec<_> = api
            .requests()
            .into_iter()
            .filter(|r| r.resource() == Some(resource))
            .collect();
        assert!(!sent.is_empty(), "{resource:?} listed");
        assert!(
            sent.iter()
                .all(|r| r.param("labelSelector") == Some("dns=public")),
            "{resource:?}: {sent:?}"
        );
    }
    dns.expect(
        "web.default.svc.cluster.local.",
        RecordType::A,
        ok(&["web.default.svc.cluster.local. 5 IN A 10.96.0.10"]),
    )
    .await;
    dns.expect(
        "db.default.svc.cluster.local.",
        RecordType::A,
        ok(&["db.default.svc.cluster.local. 5 IN A 10.1.0.5"]),
    )
    .await;
    for name in [
        "hidden.default.svc.cluster.local.",
        "db2.default.svc.cluster.local.",
    ] {
        dns.expect(name, RecordType::A, nxdomain(SOA)).await;
    }

    // Labelled: it appears. Relabelled: it disappears.
    api.apply(
        Service::cluster_ip("default", "hidden", "10.96.0.11")
            .port("http", "TCP", 80)
            .label("dns", "public"),
    );
    dns.eventually(
        "hidden.default.svc.cluster.local.",
        RecordType::A,
        ok(&["hidden.default.svc.cluster.local. 5 IN A 10.96.0.11"]),
    )
    .await;
    api.apply(
        Service::cluster_ip("default", "web", "10.96.0.10")
            .port("http", "TCP", 80)
            .label("dns", "private"),
    );
    dns.eventually(
        "web.default.svc.cluster.local.",
        RecordType::A,
        nxdomain(SOA),
    )
    .await;
}

#[tokio::test]
async fn noendpoints_makes_headless_services_and_endpoint_names_nxdomain() {
    let api = api().await;
    api.apply(Service::cluster_ip("default", "web", "10.96.0.10").port("http", "TCP", 80));
    api.apply(
        EndpointSlice::new("default", "web", "web-abc")
            .endpoint(Endpoint::new("10.1.1.1").hostname("web-0"))
            .port("http", "TCP", 8080),
    );
    api.apply(Service::headless("default", "db").port("pg", "TCP", 5432));
    api.apply(
        EndpointSlice::new("default", "db", "db-abc")
            .endpoint(Endpoint::new("10.1.0.5").hostname("db-0"))
            .port("pg", "TCP", 5432),
    );
    let (_agent, dns) = start(Agent::corefile(corefile(
        &api,
        "cluster.local in-addr.arpa",
        &["noendpoints"],
        &[],
    )))
    .await;
    // Cluster IPs are answered as ever.
    dns.expect(
        "web.default.svc.cluster.local.",
        RecordType::A,
        ok(&["web.default.svc.cluster.local. 5 IN A 10.96.0.10"]),
    )
    .await;
    dns.expect(
        "_http._tcp.web.default.svc.cluster.local.",
        RecordType::SRV,
        ok_extra(
            &["_http._tcp.web.default.svc.cluster.local. 5 IN SRV 0 100 80 web.default.svc.cluster.local."],
            &["web.default.svc.cluster.local. 5 IN A 10.96.0.10"],
        ),
    )
    .await;
    for name in [
        "db.default.svc.cluster.local.",
        "db-0.db.default.svc.cluster.local.",
        "web-0.web.default.svc.cluster.local.",
        "10-1-1-1.web.default.svc.cluster.local.",
    ] {
        dns.expect(name, RecordType::A, nxdomain(SOA)).await;
    }
    dns.expect(
        "_pg._tcp.db.default.svc.cluster.local.",
        RecordType::SRV,
        nxdomain(SOA),
    )
    .await;
    let v4_soa = "in-addr.arpa. 5 IN SOA ns.dns.in-addr.arpa. hostmaster.in-addr.arpa. SERIAL 7200 1800 86400 5";
    dns.expect("5.0.1.10.in-addr.arpa.", RecordType::PTR, nxdomain(v4_soa))
        .await;
    // EndpointSlices are not even asked for.
    assert_eq!(api.list_count(Resource::EndpointSlices), 0);
    assert_eq!(api.watch_count(Resource::EndpointSlices), 0);
}

#[tokio::test]
async fn ignore_empty_service_answers_nxdomain_for_a_cluster_ip_without_ready_endpoints() {
    let api = api().await;
    api.apply(Service::cluster_ip("default", "empty", "10.96.0.10").port("http", "TCP", 80));
    api.apply(Service::cluster_ip("default", "starting", "10.96.0.11").port("http", "TCP", 80));
    api.apply(
        EndpointSlice::new("default", "starting", "starting-abc")
            .endpoint(Endpoint::new("10.1.0.11").not_ready())
            .port("http", "TCP", 8080),
    );
    api.apply(Service::cluster_ip("default", "full", "10.96.0.12").port("http", "TCP", 80));
    api.apply(
        EndpointSlice::new("default", "full", "full-abc")
            .endpoint(Endpoint::new("10.1.0.12"))
            .port("http", "TCP", 8080),
    );
    api.apply(Service::external_name("default", "ext", "www.example.org"));
    let (_agent, dns) = start(Agent::corefile(corefile(
        &api,
        "cluster.local",
        &["ignore empty_service"],
        &[],
    )))
    .await;
    for name in [
        "empty.default.svc.cluster.local.",
        "starting.default.svc.cluster.local.",
    ] {
        dns.expect(name, RecordType::A, nxdomain(SOA)).await;
        dns.expect(name, RecordType::SRV, nxdomain(SOA)).await;
    }
    dns.expect(
        "full.default.svc.cluster.local.",
        RecordType::A,
        ok(&["full.default.svc.cluster.local. 5 IN A 10.96.0.12"]),
    )
    .await;
    // ExternalName services have no endpoints and are answered.
    dns.expect(
        "ext.default.svc.cluster.local.",
        RecordType::CNAME,
        ok(&["ext.default.svc.cluster.local. 5 IN CNAME www.example.org."]),
    )
    .await;
    // Its endpoint turns ready: the service appears.
    api.apply(
        EndpointSlice::new("default", "starting", "starting-abc")
            .endpoint(Endpoint::new("10.1.0.11"))
            .port("http", "TCP", 8080),
    );
    dns.eventually(
        "starting.default.svc.cluster.local.",
        RecordType::A,
        ok(&["starting.default.svc.cluster.local. 5 IN A 10.96.0.11"]),
    )
    .await;
}

#[tokio::test]
async fn endpoint_pod_names_names_endpoints_after_their_pods() {
    let api = api().await;
    let long_pod = "p".repeat(64);
    api.apply(Service::headless("default", "db").port("pg", "TCP", 5432));
    api.apply(
        EndpointSlice::new("default", "db", "db-abc")
            // A hostname wins over the pod's name.
            .endpoint(Endpoint::new("10.1.0.5").hostname("db-0").pod("db-pod-0"))
            .endpoint(Endpoint::new("10.1.0.6").pod("db-6b7c9-x2k4q"))
            // No pod, or a pod name too long for a label: the dashed
            // address.
            .endpoint(Endpoint::new("10.1.0.7"))
            .endpoint(Endpoint::new("10.1.0.8").pod(&long_pod))
            .port("pg", "TCP", 5432),
    );
    let (_agent, dns) = start(Agent::corefile(corefile(
        &api,
        "cluster.local in-addr.arpa",
        &["endpoint_pod_names"],
        &[],
    )))
    .await;
    for (label, ip) in [
        ("db-0", "10.1.0.5"),
        ("db-6b7c9-x2k4q", "10.1.0.6"),
        ("10-1-0-7", "10.1.0.7"),
        ("10-1-0-8", "10.1.0.8"),
    ] {
        let name = format!("{label}.db.default.svc.cluster.local.");
        dns.expect(&name, RecordType::A, ok(&[&format!("{name} 5 IN A {ip}")]))
            .await;
    }
    for name in [
        "db-pod-0.db.default.svc.cluster.local.",
        "10-1-0-6.db.default.svc.cluster.local.",
    ] {
        dns.expect(name, RecordType::A, nxdomain(SOA)).await;
    }
    // SRV targets and PTRs use the same names.
    dns.expect(
        "_pg._tcp.db.default.svc.cluster.local.",
        RecordType::SRV,
        ok_extra(
            &[
                "_pg._tcp.db.default.svc.cluster.local. 5 IN SRV 0 25 5432 db-0.db.default.svc.cluster.local.",
                "_pg._tcp.db.default.svc.cluster.local. 5 IN SRV 0 25 5432 db-6b7c9-x2k4q.db.default.svc.cluster.local.",
                "_pg._tcp.db.default.svc.cluster.local. 5 IN SRV 0 25 5432 10-1-0-7.db.default.svc.cluster.local.",
                "_pg._tcp.db.default.svc.cluster.local. 5 IN SRV 0 25 5432 10-1-0-8.db.default.svc.cluster.local.",
            ],
            &[
                "db-0.db.default.svc.cluster.local. 5 IN A 10.1.0.5",
                "db-6b7c9-x2k4q.db.default.svc.cluster.local. 5 IN A 10.1.0.6",
                "10-1-0-7.db.default.svc.cluster.local. 5 IN A 10.1.0.7",
                "10-1-0-8.db.default.svc.cluster.local. 5 IN A 10.1.0.8",
            ],
        ),
    )
    .await;
    dns.expect(
        "6.0.1.10.in-addr.arpa.",
        RecordType::PTR,
        ok(&["6.0.1.10.in-addr.arpa. 5 IN PTR db-6b7c9-x2k4q.db.default.svc.cluster.local."]),
    )
    .await;
}

// === zonal ===

/// `zonal`: `ZONE.pin._zone.SERVICE.NS.svc` has a headless service's
/// endpoints in that EndpointSlice zone (NODATA when none),
/// `ZONE.prefer._zone...` those, or all when none; A and SRV (targets and
/// glue filtered too) as CoreDNS 1.14.7's `zonal_test.go`; a zone changed
/// through the watch shows within [`WITHIN`].
#[tokio::test]
async fn zonal_names_select_endpoints_by_zone() {
    let api = api().await;
    api.apply(Service::headless("default", "db").port("pg", "TCP", 5432));
    api.apply(
        EndpointSlice::new("default", "db", "db-x")
            .endpoint(
                Endpoint::new("10.1.0.1")
                    .hostname("db-0")
                    .zone("us-west-2a"),
            )
            .endpoint(Endpoint::new("10.1.0.2").zone("us-west-2b"))
            .endpoint(Endpoint::new("10.1.0.3").zone("us-west-2b"))
            .endpoint(Endpoint::new("10.1.0.4"))
            .port("pg", "TCP", 5432),
    );
    api.apply(Service::cluster_ip("default", "web", "10.96.0.10").port("http", "TCP", 80));
    let (_agent, dns) = start(Agent::corefile(corefile(
        &api,
        "cluster.local",
        &["zonal"],
        &[],
    )))
    .await;

    const PIN_A: &str = "us-west-2a.pin._zone.db.default.svc.cluster.local.";
    const PIN_B: &str = "us-west-2b.pin._zone.db.default.svc.cluster.local.";
    dns.expect(
        PIN_A,
        RecordType::A,
        ok(&["us-west-2a.pin._zone.db.default.svc.cluster.local. 5 IN A 10.1.0.1"]),
    )
    .await;
    dns.expect(
        PIN_B,
        RecordType::A,
        ok(&[
            "us-west-2b.pin._zone.db.default.svc.cluster.local. 5 IN A 10.1.0.2",
            "us-west-2b.pin._zone.db.default.svc.cluster.local. 5 IN A 10.1.0.3",
        ]),
    )
    .await;
    let pin_b_srv = ok_extra(
        &[
            "us-west-2b.pin._zone.db.default.svc.cluster.local. 5 IN SRV 0 50 5432 10-1-0-2.db.default.svc.cluster.local.",
            "us-west-2b.pin._zone.db.default.svc.cluster.local. 5 IN SRV 0 50 5432 10-1-0-3.db.default.svc.cluster.local.",
        ],
        &[
            "10-1-0-2.db.default.svc.cluster.local. 5 IN A 10.1.0.2",
            "10-1-0-3.db.default.svc.cluster.local. 5 IN A 10.1.0.3",
        ],
    );
    dns.expect(PIN_B, RecordType::SRV, pin_b_srv.clone()).await;
    assert_eq!(
        dns.ask_tcp(PIN_B, RecordType::SRV).await,
        pin_b_srv,
        "over TCP"
    );
    dns.expect(
        "us-west-2a.prefer._zone.db.default.svc.cluster.local.",
        RecordType::SRV,
        ok_extra(
            &["us-west-2a.prefer._zone.db.default.svc.cluster.local. 5 IN SRV 0 100 5432 db-0.db.default.svc.cluster.local."],
            &["db-0.db.default.svc.cluster.local. 5 IN A 10.1.0.1"],
        ),
    )
    .await;
    // A zone no endpoint carries: pin is NODATA, prefer is every endpoint
    // (the one without a zone too).
    const PIN_C: &str = "us-west-2c.pin._zone.db.default.svc.cluster.local.";
    const PREFER_C: &str = "us-west-2c.prefer._zone.db.default.svc.cluster.local.";
    dns.expect(PIN_C, RecordType::A, nodata(SOA)).await;
    dns.expect(PIN_C, RecordType::SRV, nodata(SOA)).await;
    dns.expect(PIN_C, RecordType::TXT, nodata(SOA)).await;
    dns.expect(
        PREFER_C,
        RecordType::A,
        ok(&[
            "us-west-2c.prefer._zone.db.default.svc.cluster.local. 5 IN A 10.1.0.1",
            "us-west-2c.prefer._zone.db.default.svc.cluster.local. 5 IN A 10.1.0.2",
            "us-west-2c.prefer._zone.db.default.svc.cluster.local. 5 IN A 10.1.0.3",
            "us-west-2c.prefer._zone.db.default.svc.cluster.local. 5 IN A 10.1.0.4",
        ]),
    )
    .await;
    dns.expect(
        PREFER_C,
        RecordType::SRV,
        ok_extra(
            &[
                "us-west-2c.prefer._zone.db.default.svc.cluster.local. 5 IN SRV 0 25 5432 db-0.db.default.svc.cluster.local.",
                "us-west-2c.prefer._zone.db.default.svc.cluster.local. 5 IN SRV 0 25 5432 10-1-0-2.db.default.svc.cluster.local.",
                "us-west-2c.prefer._zone.db.default.svc.cluster.local. 5 IN SRV 0 25 5432 10-1-0-3.db.default.svc.cluster.local.",
                "us-west-2c.prefer._zone.db.default.svc.cluster.local. 5 IN SRV 0 25 5432 10-1-0-4.db.default.svc.cluster.local.",
            ],
            &[
                "db-0.db.default.svc.cluster.local. 5 IN A 10.1.0.1",
                "10-1-0-2.db.default.svc.cluster.local. 5 IN A 10.1.0.2",
                "10-1-0-3.db.default.svc.cluster.local. 5 IN A 10.1.0.3",
                "10-1-0-4.db.default.svc.cluster.local. 5 IN A 10.1.0.4",
            ],
        ),
    )
    .await;
    // ClusterIP services, unknown directives: NXDOMAIN.
    dns.expect(
        "us-west-2a.pin._zone.web.default.svc.cluster.local.",
        RecordType::A,
        nxdomain(SOA),
    )
    .await;
    dns.expect(
        "us-west-2a.near._zone.db.default.svc.cluster.local.",
        RecordType::A,
        nxdomain(SOA),
    )
    .await;

    // The watch moves 10.1.0.2 to us-west-2a.
    api.apply(
        EndpointSlice::new("default", "db", "db-x")
            .endpoint(
                Endpoint::new("10.1.0.1")
                    .hostname("db-0")
                    .zone("us-west-2a"),
            )
            .endpoint(Endpoint::new("10.1.0.2").zone("us-west-2a"))
            .endpoint(Endpoint::new("10.1.0.3").zone("us-west-2b"))
            .endpoint(Endpoint::new("10.1.0.4"))
            .port("pg", "TCP", 5432),
    );
    dns.eventually(
        PIN_A,
        RecordType::A,
        ok(&[
            "us-west-2a.pin._zone.db.default.svc.cluster.local. 5 IN A 10.1.0.1",
            "us-west-2a.pin._zone.db.default.svc.cluster.local. 5 IN A 10.1.0.2",
        ]),
    )
    .await;
    dns.expect(
        PIN_B,
        RecordType::A,
        ok(&["us-west-2b.pin._zone.db.default.svc.cluster.local. 5 IN A 10.1.0.3"]),
    )
    .await;
}

/// Without `zonal` the shape is too long, as ever: NXDOMAIN.
#[tokio::test]
async fn zonal_names_without_the_option_are_nxdomain() {
    let api = api().await;
    api.apply(Service::headless("default", "db").port("pg", "TCP", 5432));
    api.apply(
        EndpointSlice::new("default", "db", "db-x")
            .endpoint(Endpoint::new("10.1.0.1").zone("us-west-2a"))
            .port("pg", "TCP", 5432),
    );
    let (_agent, dns) = start(Agent::corefile(corefile(&api, "cluster.local", &[], &[]))).await;
    dns.expect(
        "us-west-2a.pin._zone.db.default.svc.cluster.local.",
        RecordType::A,
        nxdomain(SOA),
    )
    .await;
    dns.expect(
        "db.default.svc.cluster.local.",
        RecordType::A,
        ok(&["db.default.svc.cluster.local. 5 IN A 10.1.0.1"]),
    )
    .await;
}
