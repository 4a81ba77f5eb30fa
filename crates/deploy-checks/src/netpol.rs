//! NetworkPolicy semantics (networking.k8s.io/v1), enough to compute which connections a set of
//! policies allows between a set of workloads: pod/namespace selectors (matchLabels and
//! matchExpressions), ipBlock with `except`, ports by number or name, `endPort`, and isolation
//! (a pod selected by a policy of a type allows only what some such policy allows).
//!
//! Model: pods are matched only by selectors, external addresses only by ipBlock (how CNIs treat
//! pod IPs in ipBlocks is implementation-defined; our policies never rely on it).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use anyhow::{Context, bail};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    fn parse(v: &Value) -> anyhow::Result<Self> {
        match v.as_str().unwrap_or("TCP") {
            "TCP" => Ok(Proto::Tcp),
            "UDP" => Ok(Proto::Udp),
            "SCTP" => Ok(Proto::Sctp),
            other => bail!("unknown protocol {other}"),
        }
    }
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
            Proto::Sctp => "SCTP",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub number: u16,
    pub proto: Proto,
    pub name: Option<String>,
}

/// Something that connects or is connected to: a pod (namespace + labels) or an address outside
/// the cluster.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub namespace: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub ip: Option<Ipv4Addr>,
    /// What it listens on.
    pub ports: Vec<Port>,
}

impl Node {
    pub fn pod(name: &str, namespace: &str, labels: &[(&str, &str)], ports: Vec<Port>) -> Self {
        Self {
            name: name.into(),
            namespace: Some(namespace.into()),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            ip: None,
            ports,
        }
    }

    pub fn external(name: &str, ip: Ipv4Addr, ports: Vec<Port>) -> Self {
        Self {
            name: name.into(),
            namespace: None,
            labels: BTreeMap::new(),
            ip: Some(ip),
            ports,
        }
    }
}

pub fn tcp(number: u16) -> Port {
    Port {
        number,
        proto: Proto::Tcp,
        name: None,
    }
}

pub fn udp(number: u16) -> Port {
    Port {
        number,
        proto: Proto::Udp,
        name: None,
    }
}

#[derive(Debug, Clone, Default)]
pub struct Selector {
    labels: BTreeMap<String, String>,
    exprs: Vec<(String, String, Vec<String>)>,
}

impl Selector {
    fn parse(v: &Value) -> anyhow::Result<Self> {
        let mut s = Selector::default();
        if let Some(m) = v.get("matchLabels").and_then(Value::as_object) {
            for (k, val) in m {
                s.labels
                    .insert(k.clone(), val.as_str().context("label value")?.to_owned());
            }
        }
        if let Some(exprs) = v.get("matchExpressions").and_then(Value::as_array) {
            for e in exprs {
                let key = e["key"]
                    .as_str()
                    .context("matchExpressions key")?
                    .to_owned();
                let op = e["operator"]
                    .as_str()
                    .context("matchExpressions operator")?
                    .to_owned();
                let values = e["values"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default();
                s.exprs.push((key, op, values));
            }
        }
        Ok(s)
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.exprs.iter().all(|(k, op, values)| {
                let got = labels.get(k);
                match op.as_str() {
                    "In" => got.is_some_and(|g| values.contains(g)),
                    "NotIn" => got.is_none_or(|g| !values.contains(g)),
                    "Exists" => got.is_some(),
                    "DoesNotExist" => got.is_none(),
                    _ => false,
                }
            })
    }
}

#[derive(Debug, Clone)]
enum Peer {
    /// `namespaces: None` = the policy's own namespace; `pods: None` = every pod.
    Pods {
        namespaces: Option<Selector>,
        pods: Option<Selector>,
    },
    Ip {
        cidr: (Ipv4Addr, u8),
        except: Vec<(Ipv4Addr, u8)>,
    },
}

#[derive(Debug, Clone)]
enum PortRef {
    Number(u16),
    Name(String),
}

#[derive(Debug, Clone)]
struct PortRule {
    port: Option<PortRef>,
    end_port: Option<u16>,
    proto: Proto,
}

#[derive(Debug, Clone)]
struct Rule {
    /// None: every peer.
    peers: Option<Vec<Peer>>,
    /// None: every port.
    ports: Option<Vec<PortRule>>,
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    pub namespace: String,
    selector: Selector,
    /// None: the policy is not of this type.
    ingress: Option<Vec<Rule>>,
    egress: Option<Vec<Rule>>,
}

fn parse_cidr(s: &str) -> anyhow::Result<(Ipv4Addr, u8)> {
    let (ip, bits) = s.split_once('/').with_context(|| format!("CIDR {s}"))?;
    let bits: u8 = bits.parse().with_context(|| format!("CIDR {s}"))?;
    anyhow::ensure!(bits <= 32, "CIDR {s}");
    Ok((ip.parse().with_context(|| format!("CIDR {s}"))?, bits))
}

fn in_cidr(ip: Ipv4Addr, (net, bits): (Ipv4Addr, u8)) -> bool {
    let mask = if bits == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(bits))
    };
    u32::from(ip) & mask == u32::from(net) & mask
}

fn parse_rules(v: &Value, peer_key: &str) -> anyhow::Result<Vec<Rule>> {
    let mut rules = Vec::new();
    for r in v.as_array().into_iter().flatten() {
        let peers = match r.get(peer_key) {
            None | Some(Value::Null) => None,
            Some(Value::Array(a)) if a.is_empty() => None,
            Some(Value::Array(a)) => Some(
                a.iter()
                    .map(|p| {
                        if let Some(ip) = p.get("ipBlock") {
                            let cidr = parse_cidr(ip["cidr"].as_str().context("ipBlock.cidr")?)?;
                            let except = ip["except"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .map(|e| parse_cidr(e.as_str().unwrap_or_default()))
                                .collect::<anyhow::Result<_>>()?;
                            Ok(Peer::Ip { cidr, except })
                        } else {
                            Ok(Peer::Pods {
                                namespaces: p
                                    .get("namespaceSelector")
                                    .map(Selector::parse)
                                    .transpose()?,
                                pods: p.get("podSelector").map(Selector::parse).transpose()?,
                            })
                        }
                    })
                    .collect::<anyhow::Result<_>>()?,
            ),
            Some(other) => bail!("{peer_key} is not a list: {other}"),
        };
        let ports = match r.get("ports") {
            None | Some(Value::Null) => None,
            Some(Value::Array(a)) if a.is_empty() => None,
            Some(Value::Array(a)) => Some(
                a.iter()
                    .map(|p| {
                        let port = match p.get("port") {
                            None | Some(Value::Null) => None,
                            Some(Value::Number(n)) => {
                                Some(PortRef::Number(u16::try_from(n.as_u64().context("port")?)?))
                            }
                            Some(Value::String(s)) => Some(PortRef::Name(s.clone())),
                            Some(other) => bail!("port {other}"),
                        };
                        Ok(PortRule {
                            port,
                            end_port: p
                                .get("endPort")
                                .and_then(Value::as_u64)
                                .map(u16::try_from)
                                .transpose()?,
                            proto: Proto::parse(&p["protocol"])?,
                        })
                    })
                    .collect::<anyhow::Result<_>>()?,
            ),
            Some(other) => bail!("ports is not a list: {other}"),
        };
        rules.push(Rule { peers, ports });
    }
    Ok(rules)
}

impl Policy {
    pub fn parse(doc: &Value) -> anyhow::Result<Self> {
        let name = doc["metadata"]["name"]
            .as_str()
            .context("metadata.name")?
            .to_owned();
        let namespace = doc["metadata"]["namespace"]
            .as_str()
            .with_context(|| format!("NetworkPolicy {name} has no namespace"))?
            .to_owned();
        let spec = &doc["spec"];
        let selector = Selector::parse(&spec["podSelector"])?;
        let types: Vec<&str> = match spec.get("policyTypes").and_then(Value::as_array) {
            Some(t) => t.iter().filter_map(Value::as_str).collect(),
            None if spec.get("egress").is_some() => vec!["Ingress", "Egress"],
            None => vec!["Ingress"],
        };
        let ingress = types
            .contains(&"Ingress")
            .then(|| parse_rules(&spec["ingress"], "from"))
            .transpose()?;
        let egress = types
            .contains(&"Egress")
            .then(|| parse_rules(&spec["egress"], "to"))
            .transpose()?;
        Ok(Self {
            name,
            namespace,
            selector,
            ingress,
            egress,
        })
    }

    fn selects(&self, node: &Node) -> bool {
        node.namespace.as_deref() == Some(&self.namespace) && self.selector.matches(&node.labels)
    }
}

/// Policies plus the labels of every namespace (`kubernetes.io/metadata.name` is always set).
pub struct Cluster {
    pub policies: Vec<Policy>,
    pub namespace_labels: BTreeMap<String, BTreeMap<String, String>>,
}

impl Cluster {
    /// From rendered manifests: every NetworkPolicy and Namespace. Namespaces named in
    /// `external_namespaces` (e.g. kube-system) exist with only their name label.
    pub fn from_manifests(docs: &[Value], external_namespaces: &[&str]) -> anyhow::Result<Self> {
        let mut namespace_labels = BTreeMap::new();
        for ns in external_namespaces {
            namespace_labels.insert(
                (*ns).to_owned(),
                BTreeMap::from([("kubernetes.io/metadata.name".to_owned(), (*ns).to_owned())]),
            );
        }
        let mut policies = Vec::new();
        for doc in docs {
            match doc["kind"].as_str() {
                Some("NetworkPolicy") => policies.push(Policy::parse(doc)?),
                Some("Namespace") => {
                    let name = doc["metadata"]["name"].as_str().context("namespace name")?;
                    let mut labels: BTreeMap<String, String> = doc["metadata"]["labels"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect();
                    labels.insert("kubernetes.io/metadata.name".into(), name.into());
                    namespace_labels.insert(name.to_owned(), labels);
                }
                _ => {}
            }
        }
        Ok(Self {
            policies,
            namespace_labels,
        })
    }

    fn peer_matches(&self, policy: &Policy, peer: &Peer, node: &Node) -> bool {
        match peer {
            Peer::Ip { cidr, except } => node
                .ip
                .is_some_and(|ip| in_cidr(ip, *cidr) && !except.iter().any(|e| in_cidr(ip, *e))),
            Peer::Pods { namespaces, pods } => {
                let Some(ns) = node.namespace.as_deref() else {
                    return false;
                };
                let ns_ok = match namespaces {
                    None => ns == policy.namespace,
                    Some(sel) => self
                        .namespace_labels
                        .get(ns)
                        .is_some_and(|labels| sel.matches(labels)),
                };
                ns_ok && pods.as_ref().is_none_or(|sel| sel.matches(&node.labels))
            }
        }
    }

    fn port_matches(rule: &Rule, dst: &Node, port: &Port) -> bool {
        let Some(ports) = &rule.ports else {
            return true;
        };
        ports.iter().any(|p| {
            p.proto == port.proto
                && match &p.port {
                    None => true,
                    Some(PortRef::Number(n)) => match p.end_port {
                        Some(end) => (*n..=end).contains(&port.number),
                        None => *n == port.number,
                    },
                    Some(PortRef::Name(name)) => dst
                        .ports
                        .iter()
                        .any(|dp| dp.name.as_deref() == Some(name) && dp == port),
                }
        })
    }

    /// Does `src` → `dst:port` pass both the source's egress and the destination's ingress?
    pub fn allows(&self, src: &Node, dst: &Node, port: &Port) -> bool {
        let egress: Vec<&Policy> = self
            .policies
            .iter()
            .filter(|p| p.egress.is_some() && p.selects(src))
            .collect();
        let egress_ok = egress.is_empty()
            || egress.iter().any(|p| {
                p.egress.iter().flatten().any(|r| {
                    Self::port_matches(r, dst, port)
                        && r.peers.as_ref().is_none_or(|peers| {
                            peers.iter().any(|peer| self.peer_matches(p, peer, dst))
                        })
                })
            });
        let ingress: Vec<&Policy> = self
            .policies
            .iter()
            .filter(|p| p.ingress.is_some() && p.selects(dst))
            .collect();
        let ingress_ok = ingress.is_empty()
            || ingress.iter().any(|p| {
                p.ingress.iter().flatten().any(|r| {
                    Self::port_matches(r, dst, port)
                        && r.peers.as_ref().is_none_or(|peers| {
                            peers.iter().any(|peer| self.peer_matches(p, peer, src))
                        })
                })
            });
        egress_ok && ingress_ok
    }

    /// Every allowed connection among `nodes`: `(from, to, port, protocol)`.
    pub fn edges(&self, nodes: &[Node]) -> BTreeSet<(String, String, u16, Proto)> {
        let mut out = BTreeSet::new();
        for src in nodes {
            for dst in nodes {
                if src.name == dst.name {
                    continue;
                }
                for port in &dst.ports {
                    if self.allows(src, dst, port) {
                        out.insert((src.name.clone(), dst.name.clone(), port.number, port.proto));
                    }
                }
            }
        }
        out
    }

    /// Pods that no policy isolates for ingress or egress.
    pub fn unisolated(&self, nodes: &[Node]) -> Vec<String> {
        nodes
            .iter()
            .filter(|n| n.namespace.is_some())
            .filter(|n| {
                !self
                    .policies
                    .iter()
                    .any(|p| p.ingress.is_some() && p.selects(n))
                    || !self
                        .policies
                        .iter()
                        .any(|p| p.egress.is_some() && p.selects(n))
            })
            .map(|n| n.name.clone())
            .collect()
    }
}

/// The workloads of rendered manifests (Deployments, StatefulSets, DaemonSets, Jobs) as nodes:
/// name, namespace, pod template labels, container ports.
pub fn workload_nodes(docs: &[Value]) -> anyhow::Result<Vec<Node>> {
    let mut nodes = Vec::new();
    for doc in docs {
        let kind = doc["kind"].as_str().unwrap_or_default();
        if !["Deployment", "StatefulSet", "DaemonSet", "Job"].contains(&kind) {
            continue;
        }
        let name = doc["metadata"]["name"].as_str().context("workload name")?;
        let namespace = doc["metadata"]["namespace"]
            .as_str()
            .with_context(|| format!("{kind} {name} has no namespace"))?;
        let template = &doc["spec"]["template"];
        let labels = template["metadata"]["labels"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect();
        let mut ports = Vec::new();
        for c in template["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
        {
            for p in c["ports"].as_array().into_iter().flatten() {
                ports.push(Port {
                    number: u16::try_from(p["containerPort"].as_u64().context("containerPort")?)?,
                    proto: Proto::parse(&p["protocol"])?,
                    name: p["name"].as_str().map(str::to_owned),
                });
            }
        }
        nodes.push(Node {
            name: name.to_owned(),
            namespace: Some(namespace.to_owned()),
            labels,
            ip: None,
            ports,
        });
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs(yaml: &str) -> Vec<Value> {
        crate::yaml_docs(yaml).expect("yaml")
    }

    #[test]
    fn default_deny_then_one_allowed_edge() {
        let d = docs(
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: a}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-b, namespace: b}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: x-out, namespace: a}
spec:
  podSelector: {matchLabels: {app: x}}
  policyTypes: [Egress]
  egress:
    - to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: b}}, podSelector: {matchExpressions: [{key: app, operator: In, values: [y]}]}}]
      ports: [{port: http}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: y-in, namespace: b}
spec:
  podSelector: {matchLabels: {app: y}}
  ingress:
    - from: [{namespaceSelector: {}, podSelector: {matchLabels: {app: x}}}]
      ports: [{port: 8000, endPort: 8100, protocol: TCP}]
"#,
        );
        let cluster = Cluster::from_manifests(&d, &["a", "b"]).expect("cluster");
        let http = Port {
            number: 8080,
            proto: Proto::Tcp,
            name: Some("http".into()),
        };
        let nodes = vec![
            Node::pod("x", "a", &[("app", "x")], vec![]),
            Node::pod("y", "b", &[("app", "y")], vec![http, tcp(9000)]),
            Node::pod("z", "b", &[("app", "z")], vec![tcp(8080)]),
            Node::external("net", Ipv4Addr::new(203, 0, 113, 1), vec![tcp(443)]),
        ];
        let edges = cluster.edges(&nodes);
        assert_eq!(
            edges,
            BTreeSet::from([("x".into(), "y".into(), 8080, Proto::Tcp)]),
            "only x -> y:http, within y's 8000-8100 ingress range"
        );
    }

    #[test]
    fn ip_blocks_with_except() {
        let d = docs(
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: out, namespace: a}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
    - to: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}]
      ports: [{port: 443}]
"#,
        );
        let cluster = Cluster::from_manifests(&d, &["a"]).expect("cluster");
        let x = Node::pod("x", "a", &[], vec![]);
        let public = Node::external("p", Ipv4Addr::new(8, 8, 8, 8), vec![tcp(443), tcp(80)]);
        let private = Node::external("q", Ipv4Addr::new(10, 1, 2, 3), vec![tcp(443)]);
        assert!(cluster.allows(&x, &public, &tcp(443)));
        assert!(!cluster.allows(&x, &public, &tcp(80)));
        assert!(!cluster.allows(&x, &private, &tcp(443)));
    }
}
