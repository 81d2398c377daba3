//! The Kubernetes manifests (`manifests/`): each kustomization is rendered
//! with `kubectl kustomize` (by every kubectl in `NODEDNS_KUBECTLS`, which
//! must agree), every document is validated against the Kubernetes
//! OpenAPI schemas (`kubernetes-validate --strict`), what the schemas
//! cannot say is checked here (host network, capabilities, surge, probes,
//! RBAC, the sidecar's resolver), and the Corefiles in the ConfigMaps load
//! in nodedns and answer queries once moved to loopback.
//!
//! Tools: `kubectl` (Debian: `apt-get install kubernetes-client`) and
//! `kubernetes-validate` (PyPI; `.ci/run` installs it in
//! `$HOME/.cache/nodedns-tools`). Without them the tests fail saying so,
//! unless `NODEDNS_SKIP_MANIFESTS=1`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use nodedns_tests::client::a_of;
use nodedns_tests::{Agent, Client, FakeUpstream, http_status, wait_until};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

/// The Kubernetes version whose schemas the manifests must satisfy.
const K8S_VERSION: &str = "1.31.0";
/// How long one tool run may take.
const TOOL_DEADLINE: Duration = Duration::from_secs(120);
/// The DaemonSet's link-local address (ConfigMap, probes, `-localip`).
const LINK_LOCAL: &str = "169.254.20.10";
/// The kube-dns ClusterIP the iptables overlay binds (kubeadm's default).
const KUBE_DNS_IP: &str = "10.96.0.10";

struct Tools {
    kubectls: Vec<PathBuf>,
    validate: PathBuf,
    /// The interpreter `kubernetes-validate` runs under: it has PyYAML,
    /// which turns the rendered YAML into JSON for the checks here.
    python: PathBuf,
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The tools, or `None` when `NODEDNS_SKIP_MANIFESTS=1`; a missing tool
/// otherwise fails the test with what to install.
fn tools() -> Option<Tools> {
    if std::env::var("NODEDNS_SKIP_MANIFESTS").is_ok_and(|v| v == "1") {
        eprintln!("NODEDNS_SKIP_MANIFESTS=1: manifests not checked");
        return None;
    }
    let kubectls: Vec<PathBuf> = match std::env::var("NODEDNS_KUBECTLS") {
        Ok(list) if !list.is_empty() => list.split(':').map(PathBuf::from).collect(),
        _ => on_path("kubectl").into_iter().collect(),
    };
    let venv = std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache/nodedns-tools/bin/kubernetes-validate"));
    let validate = on_path("kubernetes-validate").or(venv.filter(|p| p.is_file()));
    let hint = "install kubectl (apt-get install kubernetes-client) and kubernetes-validate \
                (pip install kubernetes-validate==1.37.0, as .ci/run does in \
                $HOME/.cache/nodedns-tools), or set NODEDNS_SKIP_MANIFESTS=1 to skip";
    assert!(
        !kubectls.is_empty() && kubectls.iter().all(|k| k.is_file()),
        "kubectl not found ({kubectls:?}): {hint}"
    );
    let Some(validate) = validate else {
        panic!("kubernetes-validate not found: {hint}");
    };
    let script = std::fs::read_to_string(&validate).unwrap_or_default();
    let python = script
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("#!"))
        .map_or_else(|| PathBuf::from("python3"), |p| PathBuf::from(p.trim()));
    Some(Tools {
        kubectls,
        validate,
        python,
    })
}

/// Runs `program args` with `stdin`, under [`TOOL_DEADLINE`]: its stdout,
/// or a panic with its stderr.
async fn run(program: &Path, args: &[&str], stdin: &str) -> String {
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    let mut input = child.stdin.take().expect("stdin");
    let text = stdin.to_string();
    let writer = tokio::spawn(async move {
        let _ = input.write_all(text.as_bytes()).await;
    });
    let out = tokio::time::timeout(TOOL_DEADLINE, child.wait_with_output())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{} {args:?}: no end within {TOOL_DEADLINE:?}",
                program.display()
            )
        })
        .expect("wait");
    let _ = writer.await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{} {args:?}: {}\n{}{}",
        program.display(),
        out.status,
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

/// `dir` (under `manifests/`) rendered, validated, and parsed into its
/// documents.
async fn render(tools: &Tools, dir: &str) -> Vec<Value> {
    let path = manifests_dir().join(dir);
    let path = path.to_str().expect("utf-8 path");
    let mut rendered: Option<String> = None;
    for kubectl in &tools.kubectls {
        let yaml = run(kubectl, &["kustomize", path], "").await;
        if let Some(first) = &rendered {
            assert_eq!(
                first,
                &yaml,
                "{dir}: {} renders differently from {}",
                kubectl.display(),
                tools.kubectls[0].display()
            );
        }
        rendered = Some(yaml);
    }
    let yaml = rendered.expect("one kubectl at least");
    run(
        &tools.validate,
        &["--strict", "--quiet", "-k", K8S_VERSION, "-"],
        &yaml,
    )
    .await;
    let docs = documents(tools, &yaml).await;
    assert!(!docs.is_empty(), "{dir}: no documents");
    docs
}

/// The YAML documents in `yaml`, as JSON (through PyYAML).
async fn documents(tools: &Tools, yaml: &str) -> Vec<Value> {
    let json = run(
        &tools.python,
        &[
            "-c",
            "import json, sys, yaml\n\
             json.dump([d for d in yaml.safe_load_all(sys.stdin) if d is not None], sys.stdout)",
        ],
        yaml,
    )
    .await;
    serde_json::from_str(&json).expect("JSON from PyYAML")
}

/// `v` with every list of named objects (containers, volumes, mounts)
/// sorted by name: their order means nothing to Kubernetes.
fn by_name(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), by_name(v))).collect()),
        Value::Array(a) => {
            let mut a: Vec<Value> = a.iter().map(by_name).collect();
            if a.iter().all(|x| x["name"].is_string()) {
                a.sort_by(|x, y| x["name"].as_str().cmp(&y["name"].as_str()));
            }
            Value::Array(a)
        }
        other => other.clone(),
    }
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// The value after `flag` in `args`.
fn flag<'a>(args: &[&'a str], flag: &str) -> Option<&'a str> {
    let i = args.iter().position(|a| *a == flag)?;
    args.get(i + 1).copied()
}

/// An IntOrString of a rolling update: the number, or the percentage.
fn int_or_percent(v: &Value) -> Option<u64> {
    v.as_u64()
        .or_else(|| v.as_str()?.strip_suffix('%')?.parse().ok())
}

/// The seconds of the first `lameduck Ns` in a Corefile.
fn lameduck_secs(corefile: &str) -> u64 {
    corefile
        .lines()
        .find_map(|l| l.trim().strip_prefix("lameduck "))
        .and_then(|d| d.trim().strip_suffix('s')?.parse().ok())
        .expect("a `lameduck Ns` line")
}

/// What both overlays share, and the Corefile the agent would run there
/// (the `__PILLAR__` placeholders filled as the agent fills them).
fn check_node_local(docs: &[Value], localip: &str) -> String {
    let ds = find(docs, "DaemonSet", "node-local-dns");
    assert_eq!(ds["metadata"]["namespace"], "kube-system");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["dnsPolicy"], "Default");
    assert_eq!(pod["priorityClassName"], "system-node-critical");

    // Surge: a new pod beside the old one on every node, never none.
    let strategy = &ds["spec"]["updateStrategy"];
    assert_eq!(strategy["type"], "RollingUpdate");
    let surge = int_or_percent(&strategy["rollingUpdate"]["maxSurge"]);
    assert!(surge.is_some_and(|s| s >= 1), "maxSurge: {strategy}");
    assert_eq!(
        int_or_percent(&strategy["rollingUpdate"]["maxUnavailable"]),
        Some(0),
        "maxUnavailable: {strategy}"
    );

    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    // On hostNetwork a containerPort is a hostPort: the scheduler would
    // keep the surge pod Pending while the old one holds it.
    for any in containers
        .iter()
        .chain(pod["initContainers"].as_array().into_iter().flatten())
    {
        assert!(
            any["ports"].as_array().is_none_or(Vec::is_empty),
            "{}: ports on a hostNetwork pod block maxSurge",
            any["name"]
        );
    }
    let caps = strs(&c["securityContext"]["capabilities"]["add"]);
    for cap in ["NET_ADMIN", "NET_BIND_SERVICE"] {
        assert!(caps.contains(&cap), "{cap} missing: {caps:?}");
    }
    assert_eq!(strs(&c["securityContext"]["capabilities"]["drop"]), ["ALL"]);

    let args = strs(&c["args"]);
    assert_eq!(flag(&args, "-localip"), Some(localip), "{args:?}");
    let conf = flag(&args, "-conf").expect("-conf");
    assert_eq!(
        conf, "/etc/Corefile",
        "-conf is the Corefile the agent writes"
    );
    let upstream = flag(&args, "-upstreamsvc").expect("-upstreamsvc");
    assert_eq!(upstream, "k8s://kube-system/kube-dns");

    // Probes: DNS-level health and readiness on the link-local address.
    let live = &c["livenessProbe"]["httpGet"];
    assert_eq!(
        (&live["host"], &live["path"], &live["port"]),
        (
            &Value::from(LINK_LOCAL),
            &Value::from("/health"),
            &Value::from(8080)
        )
    );
    let ready = &c["readinessProbe"]["httpGet"];
    assert_eq!(
        (&ready["host"], &ready["path"], &ready["port"]),
        (
            &Value::from(LINK_LOCAL),
            &Value::from("/ready"),
            &Value::from(8181)
        )
    );

    // Volumes: the template where -basecorefile looks by default, and the
    // handover socket and the snapshot on a host directory that the old
    // and the new pod share.
    let volume = |name: &str| {
        pod["volumes"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["name"] == name))
            .unwrap_or_else(|| panic!("no volume {name}"))
    };
    let mount_of = |path: &str| {
        let m = c["volumeMounts"]
            .as_array()
            .and_then(|ms| {
                ms.iter().find(|m| {
                    let at = m["mountPath"].as_str().unwrap_or("");
                    Path::new(path).starts_with(at)
                })
            })
            .unwrap_or_else(|| panic!("{path} is on no volume"));
        volume(m["name"].as_str().expect("mount name"))
    };
    let config = mount_of("/etc/coredns/Corefile.base");
    assert_eq!(config["configMap"]["name"], "node-local-dns");
    assert_eq!(config["configMap"]["items"][0]["key"], "Corefile");
    assert_eq!(config["configMap"]["items"][0]["path"], "Corefile.base");
    for f in ["--handover-socket", "--cache-snapshot"] {
        let path = flag(&args, f).unwrap_or_else(|| panic!("{f}"));
        let v = mount_of(path);
        assert_eq!(v["hostPath"]["type"], "DirectoryOrCreate", "{f} {path}");
    }
    assert_eq!(
        mount_of("/run/xtables.lock")["hostPath"]["path"],
        "/run/xtables.lock"
    );

    // RBAC: the service account may list and watch what -upstreamsvc
    // k8s:// and the kubernetes plugin watch.
    let sa = pod["serviceAccountName"]
        .as_str()
        .expect("serviceAccountName");
    find(docs, "ServiceAccount", sa);
    let binding = docs
        .iter()
        .find(|d| {
            d["kind"] == "ClusterRoleBinding"
                && d["subjects"].as_array().is_some_and(|s| {
                    s.iter().any(|s| {
                        s["kind"] == "ServiceAccount"
                            && s["name"] == sa
                            && s["namespace"] == "kube-system"
                    })
                })
        })
        .expect("a ClusterRoleBinding for the service account");
    let role = find(
        docs,
        "ClusterRole",
        binding["roleRef"]["name"].as_str().expect("roleRef"),
    );
    let allows = |group: &str, resource: &str, verb: &str| {
        role["rules"].as_array().is_some_and(|rules| {
            rules.iter().any(|r| {
                strs(&r["apiGroups"]).contains(&group)
                    && strs(&r["resources"]).contains(&resource)
                    && strs(&r["verbs"]).contains(&verb)
            })
        })
    };
    for (group, resource) in [
        ("discovery.k8s.io", "endpointslices"),
        ("", "services"),
        ("", "pods"),
        ("", "namespaces"),
    ] {
        for verb in ["list", "watch"] {
            assert!(allows(group, resource, verb), "{verb} {group}/{resource}");
        }
    }

    // The metrics Service: headless, 9253, selecting the agent's pods.
    let svc = find(docs, "Service", "node-local-dns");
    assert_eq!(svc["spec"]["clusterIP"], "None");
    assert_eq!(svc["spec"]["ports"][0]["port"], 9253);
    let labels = &ds["spec"]["template"]["metadata"]["labels"];
    for (k, v) in svc["spec"]["selector"].as_object().expect("selector") {
        assert_eq!(&labels[k], v, "selector {k}");
    }

    // The Corefile template: placeholders the agent fills, the addresses
    // the probes use, a lame duck shorter than the grace period.
    let cm = find(docs, "ConfigMap", "node-local-dns");
    let corefile = cm["data"]["Corefile"].as_str().expect("Corefile");
    for p in [
        "__PILLAR__LOCAL__DNS__",
        "__PILLAR__CLUSTER__DNS__",
        "__PILLAR__UPSTREAM__SERVERS__",
    ] {
        assert!(corefile.contains(p), "{p} missing");
    }
    assert!(corefile.starts_with("cluster.local:53 {"), "{corefile}");
    assert!(corefile.contains(&format!("health {LINK_LOCAL}:8080")));
    assert!(corefile.contains(&format!("ready {LINK_LOCAL}:8181")));
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("grace");
    // The lame duck, then the agent's --shutdown-timeout (5 s by default).
    assert!(grace > lameduck_secs(corefile) + 5, "grace {grace}s");

    // As the agent fills it (node-cache's rules): -localip with spaces, the
    // cluster DNS, resolv.conf for the rest. The cluster DNS is what
    // `-upstreamsvc` says: a `k8s://` target as it is, a Service name as
    // its ClusterIP.
    let upstreamsvc = args
        .iter()
        .position(|a| *a == "-upstreamsvc")
        .and_then(|i| args.get(i + 1))
        .copied()
        .expect("-upstreamsvc");
    let cluster_dns = if upstreamsvc.starts_with("k8s://") {
        upstreamsvc
    } else {
        KUBE_DNS_IP
    };
    let filled = corefile
        .replace("__PILLAR__LOCAL__DNS__", &localip.replace(',', " "))
        .replace("__PILLAR__CLUSTER__DNS__", cluster_dns)
        .replace("__PILLAR__UPSTREAM__SERVERS__", "/etc/resolv.conf");
    if let Err(e) = nodedns::config::load_str(&filled) {
        panic!("the node-local Corefile does not load: {e}\n{filled}");
    }
    corefile.to_string()
}

#[tokio::test]
async fn base_renders_and_validates() {
    let Some(tools) = tools() else { return };
    let docs = render(&tools, "base").await;
    let ds = find(&docs, "DaemonSet", "node-local-dns");
    let args = strs(&ds["spec"]["template"]["spec"]["containers"][0]["args"]);
    // Which addresses to bind is the overlays' choice.
    assert!(!args.contains(&"-localip"), "{args:?}");
    for kind in [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "Service",
    ] {
        assert!(docs.iter().any(|d| d["kind"] == kind), "no {kind}");
    }
}

/// iptables mode: the link-local address and the kube-dns ClusterIP.
#[tokio::test]
async fn iptables_overlay() {
    let Some(tools) = tools() else { return };
    let docs = render(&tools, "overlays/iptables").await;
    check_node_local(&docs, &format!("{LINK_LOCAL},{KUBE_DNS_IP}"));
}

/// IPVS mode: the link-local address only (the kubelet points pods at it).
#[tokio::test]
async fn ipvs_overlay() {
    let Some(tools) = tools() else { return };
    let docs = render(&tools, "overlays/ipvs").await;
    check_node_local(&docs, LINK_LOCAL);
}

/// The node-local Corefile, moved to loopback, serves all four blocks
/// through one agent, with health and readiness up.
#[tokio::test]
async fn node_local_corefile_serves() {
    let Some(tools) = tools() else { return };
    let docs = render(&tools, "overlays/iptables").await;
    let corefile = check_node_local(&docs, &format!("{LINK_LOCAL},{KUBE_DNS_IP}"));
    let up = FakeUpstream::builder()
        .a("kube-dns.kube-system.svc.cluster.local.", KUBE_DNS_IP)
        .a("www.example.org.", "192.0.2.1")
        .start()
        .await;
    let text = corefile
        .replace(":53 {", ":0 {")
        .replace("bind __PILLAR__LOCAL__DNS__", "bind 127.0.0.1")
        .replace("__PILLAR__CLUSTER__DNS__", &up.to_string())
        .replace("__PILLAR__UPSTREAM__SERVERS__", &up.to_string())
        .replace("prometheus :9253", "prometheus 127.0.0.1:0")
        .replace(&format!("health {LINK_LOCAL}:8080"), "health 127.0.0.1:0")
        .replace(&format!("ready {LINK_LOCAL}:8181"), "ready 127.0.0.1:0");
    assert!(
        !text.contains(LINK_LOCAL) && !text.contains("__PILLAR__"),
        "{text}"
    );
    let agent = Agent::corefile(text).start().await;
    let c = Client::new(agent.udp());
    let m = c
        .udp("kube-dns.kube-system.svc.cluster.local.", RecordType::A)
        .await;
    assert_eq!(a_of(&m), [KUBE_DNS_IP]);
    let m = c.tcp("www.example.org.", RecordType::A).await;
    assert_eq!(a_of(&m), ["192.0.2.1"]);
    // Each reached the upstream once (the rest of its queries are `loop`'s
    // probes, one per block).
    for name in [
        "kube-dns.kube-system.svc.cluster.local.",
        "www.example.org.",
    ] {
        assert_eq!(up.count(name, RecordType::A), 1, "{name}");
    }
    assert_eq!(
        http_status(agent.http("health"), "/health").await,
        Some(200)
    );
    let ready = wait_until(Duration::from_secs(10), || async {
        http_status(agent.http("ready"), "/ready").await == Some(200)
    })
    .await;
    assert!(ready, "/ready never answered 200");
}

/// The sidecar: the app's resolver is the cache on 127.0.0.1 in its own
/// pod, small and bounded in bytes, without privileges.
#[tokio::test]
async fn sidecar_example() {
    let Some(tools) = tools() else { return };
    let docs = render(&tools, "examples/sidecar").await;
    let deploy = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment");
    let ns = deploy["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default");
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["dnsPolicy"], "None");
    assert_eq!(strs(&pod["dnsConfig"]["nameservers"]), ["127.0.0.1"]);
    assert_eq!(
        strs(&pod["dnsConfig"]["searches"]),
        [
            format!("{ns}.svc.cluster.local").as_str(),
            "svc.cluster.local",
            "cluster.local"
        ]
    );
    assert_eq!(pod["dnsConfig"]["options"][0]["name"], "ndots");
    assert_eq!(pod["dnsConfig"]["options"][0]["value"], "5");
    assert!(pod["hostNetwork"].is_null() || pod["hostNetwork"] == false);

    let all: Vec<&Value> = pod["containers"]
        .as_array()
        .into_iter()
        .chain(pod["initContainers"].as_array())
        .flatten()
        .collect();
    for c in &all {
        let caps = strs(&c["securityContext"]["capabilities"]["add"]);
        assert!(
            caps.is_empty(),
            "{}: no capability needed: {caps:?}",
            c["name"]
        );
    }
    let sidecar = all
        .iter()
        .find(|c| c["name"] == "nodedns")
        .expect("the nodedns container");
    let args = strs(&sidecar["args"]);
    assert!(flag(&args, "-localip").is_none(), "{args:?}");
    let conf = flag(&args, "-conf").expect("-conf");
    let mount = sidecar["volumeMounts"]
        .as_array()
        .and_then(|ms| {
            ms.iter().find(|m| {
                Path::new(conf).parent() == Some(Path::new(m["mountPath"].as_str().unwrap_or("")))
            })
        })
        .expect("-conf on a mounted volume");
    let volume = pod["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == mount["name"]))
        .expect("the Corefile volume");
    let cm = find(
        &docs,
        "ConfigMap",
        volume["configMap"]["name"].as_str().expect("a ConfigMap"),
    );
    let key = Path::new(conf)
        .file_name()
        .and_then(|f| f.to_str())
        .expect("file");
    let corefile = cm["data"][key]
        .as_str()
        .expect("the Corefile in the ConfigMap");
    assert!(corefile.contains("bind 127.0.0.1"), "{corefile}");
    assert!(corefile.contains("max_bytes"), "{corefile}");
    assert!(corefile.starts_with(".:53 {"), "{corefile}");
    for (probe, path, port) in [
        ("livenessProbe", "/health", "health :"),
        ("readinessProbe", "/ready", "ready :"),
    ] {
        let get = &sidecar[probe]["httpGet"];
        assert_eq!(get["path"], path);
        let at = format!("{port}{}", get["port"]);
        assert!(corefile.contains(&at), "{probe}: no `{at}` in the Corefile");
    }
    if let Err(e) = nodedns::config::load_str(corefile) {
        panic!("the sidecar Corefile does not load: {e}\n{corefile}");
    }

    // On loopback it answers, and a repeat is a cache hit.
    let up = FakeUpstream::builder()
        .a("kubernetes.default.svc.cluster.local.", "10.96.0.1")
        .start()
        .await;
    let forward_to = corefile
        .lines()
        .find_map(|l| l.trim().strip_prefix("forward . "))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("a forward line");
    let text = corefile
        .replace(".:53 {", ".:0 {")
        .replace(
            &format!("forward . {forward_to}"),
            &format!("forward . {up}"),
        )
        .replace("health :8080", "health 127.0.0.1:0")
        .replace("ready :8181", "ready 127.0.0.1:0")
        .replace("prometheus :9253", "prometheus 127.0.0.1:0");
    // With the container's own flags (but -conf, which the harness gives).
    let mut agent = Agent::corefile(text);
    let mut rest = args.iter();
    while let Some(a) = rest.next() {
        if *a == "-conf" {
            rest.next();
        } else {
            agent = agent.arg(*a);
        }
    }
    let agent = agent.start().await;
    assert!(
        agent.listening.iter().all(|(t, _)| t != "http/admin"),
        "--admin off: {:?}",
        agent.listening
    );
    let c = Client::new(agent.udp());
    for _ in 0..2 {
        let m = c
            .udp("kubernetes.default.svc.cluster.local.", RecordType::A)
            .await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(a_of(&m), ["10.96.0.1"]);
    }
    assert_eq!(
        up.count("kubernetes.default.svc.cluster.local.", RecordType::A),
        1
    );
    assert_eq!(
        http_status(agent.http("health"), "/health").await,
        Some(200)
    );
}

/// The README's "Replacing node-local-dns" diff: its new side is the
/// DaemonSet the iptables overlay renders, its old side node-cache's.
#[tokio::test]
async fn readme_diff_is_the_iptables_daemonset() {
    let Some(tools) = tools() else { return };
    let readme = std::fs::read_to_string(manifests_dir().join("../README.md")).expect("README.md");
    let section = readme
        .split_once("## Replacing node-local-dns")
        .expect("the section")
        .1;
    let diff = section
        .split_once("```diff\n")
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .expect("a diff block")
        .0;
    let (mut old, mut new) = (String::new(), String::new());
    for line in diff.lines() {
        if line.starts_with("---") || line.starts_with("+++") || line.starts_with("@@") {
            continue;
        }
        let (side, text) = line.split_at(line.len().min(1));
        match side {
            " " | "" => {
                old.push_str(text);
                old.push('\n');
                new.push_str(text);
                new.push('\n');
            }
            "-" => {
                old.push_str(text);
                old.push('\n');
            }
            "+" => {
                new.push_str(text);
                new.push('\n');
            }
            _ => panic!("not a diff line: {line}"),
        }
    }
    let docs = render(&tools, "overlays/iptables").await;
    let ours = find(&docs, "DaemonSet", "node-local-dns");
    let shown = documents(&tools, &new).await;
    assert_eq!(shown.len(), 1, "{new}");
    assert_eq!(
        by_name(&shown[0]),
        by_name(ours),
        "the README diff is out of date"
    );
    let upstream = documents(&tools, &old).await;
    let image = &upstream[0]["spec"]["template"]["spec"]["containers"][0]["image"];
    assert!(
        image
            .as_str()
            .is_some_and(|i| i.contains("k8s-dns-node-cache")),
        "{image}"
    );
}
