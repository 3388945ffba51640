//! What our rules do to the first packet of a connection: a packet tracer over the IR.
//!
//! The walk follows the packet through the hooks it meets on this node (prerouting, then
//! input or forward and postrouting for a packet that arrives; output, postrouting and,
//! for a local destination, prerouting and input again for one the node sends), and in
//! each hook through our base chains in priority order, with jump, goto and return as
//! the kernel runs them. Everything random is enumerated instead of drawn: `numgen` in a
//! map lookup forks one branch per index, a `numgen … == V` test forks a true and a false
//! branch, and a lookup in a dynamic (session-affinity) set forks "the client is
//! already recorded" and "it is not". So the result is every way the packet can go: the
//! set of endpoints is all candidates, as the question "where can this connection end
//! up" wants, not one draw.
//!
//! It is pure: the rules come from the kernel (read back, see
//! [`crate::netlink::rules`]) or from the objects, and the node-local facts (is an
//! address local?) from the caller.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::ruleset::build::names;
use crate::ruleset::ir::*;
use crate::ruleset::render;

/// Where the packet comes from, as the node sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// a pod on this node (arrives on a pod interface)
    Pod,
    /// the node itself (a local process)
    Node,
    /// anything else (arrives from the network)
    External,
}

/// The first packet of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Query {
    /// source address
    pub source: IpAddr,
    /// where it comes from
    pub role: Role,
    /// IP protocol number
    pub protocol: u8,
    /// destination address
    pub destination: IpAddr,
    /// destination port
    pub port: u16,
}

/// What happens to the packet at the end of one way through the rules.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fate {
    /// our rules let it through unchanged
    Accept,
    /// rewritten to this endpoint
    Dnat(IpAddr, u16),
    /// rejected (ICMP port unreachable, or a TCP reset)
    Reject,
    /// dropped
    Drop,
}

/// One way the packet can go.
#[derive(Clone, Debug)]
pub struct Branch {
    /// its end
    pub fate: Fate,
    /// whether its source is masqueraded
    pub masquerade: bool,
    /// each decision on the way, for people
    pub steps: Vec<String>,
    /// the Service port of the first frontend element that matched (its comment)
    pub service: Option<String>,
}

/// A step the tracer does not know how to take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unmodelled(pub String);

impl std::fmt::Display for Unmodelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unmodelled {}

#[derive(Clone, Debug)]
struct Pkt {
    saddr: IpAddr,
    daddr: IpAddr,
    dport: u16,
    mark: u32,
    dnat: Option<(IpAddr, u16)>,
    masq: bool,
    steps: Vec<String>,
    service: Option<String>,
}

enum Exit {
    /// fell off the end of the chain, or returned
    Continue,
    /// accepted: this base chain ends, the next one of the hook runs
    Accept,
    Reject,
    Drop,
}

enum RuleEnd {
    NoMatch,
    Next,
    Jump(String),
    Goto(String),
    Return,
    Accept,
    Reject,
    Drop,
}

/// Why a set exists, in words, for the step that matched one of its elements.
fn meaning(set: &str, negate: bool) -> Option<&'static str> {
    use names::*;
    Some(match set {
        NO_ENDPOINT_REJECT => "the Service port has no ready endpoints: rejected, as upstream does",
        NO_ENDPOINT_DROP => {
            "no endpoint serves this traffic under the Service's traffic policy: dropped"
        }
        NO_LOCAL_ENDPOINT_DROP => {
            "externalTrafficPolicy: Local and no endpoint on this node: traffic from off the \
             node is dropped"
        }
        CLUSTER_IPS => "a ClusterIP, but no Service port on this protocol and port: rejected",
        FIREWALL if !negate => "a load-balancer frontend with loadBalancerSourceRanges",
        FIREWALL_ALLOW if negate => "the source is in none of loadBalancerSourceRanges: dropped",
        FIREWALL_ALLOW => "the source is in loadBalancerSourceRanges",
        MASQ_ALWAYS => "traffic to this frontend is masqueraded",
        MASQ_UNLESS_POD => "traffic to this frontend is masqueraded unless it comes from a pod",
        HAIRPIN => "an endpoint reaching itself through its Service (hairpin): masqueraded",
        AFFINITY_FRONTENDS => "ClientIP session affinity",
        _ if set.starts_with(SHORTCUT_PICK_PREFIX) => {
            "externalTrafficPolicy: Local, but pod and node traffic may use every endpoint"
        }
        _ if set.starts_with(PICK_PREFIX) => "load-balanced over the Service port's endpoints",
        _ => return None,
    })
}

fn show_key(k: &[Value]) -> String {
    render::tuple(k)
}

/// `ip:port`, `[ip]:port` for IPv6.
pub fn endpoint_text(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// Whether an element key matches a packet key (networks in interval sets contain the
/// packet's address).
fn component_matches(element: &Value, packet: &Value) -> bool {
    match (element, packet) {
        (Value::Net(n), Value::Addr(a)) => n.contains(a),
        (e, p) => e == p,
    }
}

/// Walks the packet of `q` through `table` (the table of the destination's family).
pub struct Tracer<'a> {
    table: &'a Table,
    query: Query,
    local: &'a dyn Fn(IpAddr) -> bool,
}

impl<'a> Tracer<'a> {
    /// A tracer over `table`; `local(a)` says whether `a` is an address of this node.
    pub fn new(table: &'a Table, query: Query, local: &'a dyn Fn(IpAddr) -> bool) -> Self {
        Tracer {
            table,
            query,
            local,
        }
    }

    /// Every way the packet can go.
    pub fn run(&self) -> Result<Vec<Branch>, Unmodelled> {
        let q = self.query;
        let start = Pkt {
            saddr: q.source,
            daddr: q.destination,
            dport: q.port,
            mark: 0,
            dnat: None,
            masq: false,
            steps: Vec::new(),
            service: None,
        };
        let mut out = Vec::new();
        let first: &[Hook] = match q.role {
            Role::Node => &[Hook::Output],
            Role::Pod | Role::External => &[Hook::Prerouting],
        };
        for (p, fate) in self.hooks(first, start, false)? {
            if let Some(f) = fate {
                out.push((p, f));
                continue;
            }
            let local = (self.local)(p.daddr);
            let rest: &[Hook] = match (q.role, local) {
                (Role::Node, false) => &[Hook::Postrouting],
                // Looped back: the nat hooks were decided in output and postrouting,
                // the filter hooks of prerouting and input still see the packet.
                (Role::Node, true) => &[Hook::Postrouting, Hook::Prerouting, Hook::Input],
                (_, true) => &[Hook::Input],
                (_, false) => &[Hook::Forward, Hook::Postrouting],
            };
            for (p, fate) in self.hooks(rest, p, q.role == Role::Node)? {
                out.push((p, fate.unwrap_or(Fate::Accept)));
            }
        }
        Ok(out
            .into_iter()
            .map(|(p, fate)| {
                let fate = match (fate, p.dnat) {
                    (Fate::Accept, Some((a, port))) => Fate::Dnat(a, port),
                    (f, _) => f,
                };
                Branch {
                    fate,
                    masquerade: p.masq,
                    steps: p.steps,
                    service: p.service,
                }
            })
            .collect())
    }

    /// Runs the hooks in order; `(packet, Some(fate))` for a branch that ended in a
    /// drop or reject, `(packet, None)` for one that went through.
    fn hooks(
        &self,
        hooks: &[Hook],
        p: Pkt,
        looped: bool,
    ) -> Result<Vec<(Pkt, Option<Fate>)>, Unmodelled> {
        let mut live = vec![p];
        let mut ended = Vec::new();
        for (i, hook) in hooks.iter().enumerate() {
            // The nat hooks of a looped-back packet already ran on its way out.
            let skip_nat = looped && i > 0 && *hook == Hook::Prerouting;
            let mut base: Vec<&Chain> = self
                .table
                .chains
                .iter()
                .filter(|c| match c.kind {
                    ChainKind::Base { hook: h, kind, .. } => {
                        h == *hook && !(skip_nat && kind == ChainType::Nat)
                    }
                    ChainKind::Regular => false,
                })
                .collect();
            base.sort_by_key(|c| match c.kind {
                ChainKind::Base { priority, .. } => priority,
                ChainKind::Regular => 0,
            });
            for c in base {
                let mut next = Vec::new();
                for p in live {
                    for (p, exit) in self.chain(&c.name, p, 0)? {
                        match exit {
                            Exit::Continue | Exit::Accept => next.push(p),
                            Exit::Reject => ended.push((p, Some(Fate::Reject))),
                            Exit::Drop => ended.push((p, Some(Fate::Drop))),
                        }
                    }
                }
                live = next;
            }
        }
        ended.extend(live.into_iter().map(|p| (p, None)));
        Ok(ended)
    }

    fn chain(&self, name: &str, p: Pkt, depth: usize) -> Result<Vec<(Pkt, Exit)>, Unmodelled> {
        if depth > 16 {
            return Err(Unmodelled(format!(
                "chains nested deeper than 16 at {name}"
            )));
        }
        let c = self
            .table
            .chain(name)
            .ok_or_else(|| Unmodelled(format!("a jump to chain {name}, which is not there")))?;
        let mut out = Vec::new();
        let mut work = std::collections::VecDeque::from([(p, 0usize)]);
        while let Some((p, i)) = work.pop_front() {
            let Some(rule) = c.rules.get(i) else {
                out.push((p, Exit::Continue));
                continue;
            };
            for (p, end) in self.rule(name, rule, p)? {
                match end {
                    RuleEnd::NoMatch | RuleEnd::Next => work.push_back((p, i + 1)),
                    RuleEnd::Jump(t) => {
                        // A jump whose chain decided nothing is not worth a step.
                        let n = p.steps.len();
                        for (mut p, e) in self.chain(&t, p, depth + 1)? {
                            match e {
                                Exit::Continue => {
                                    if p.steps.len() == n {
                                        p.steps.pop();
                                    }
                                    work.push_back((p, i + 1))
                                }
                                e => out.push((p, e)),
                            }
                        }
                    }
                    RuleEnd::Goto(t) => out.extend(self.chain(&t, p, depth + 1)?),
                    RuleEnd::Return => out.push((p, Exit::Continue)),
                    RuleEnd::Accept => out.push((p, Exit::Accept)),
                    RuleEnd::Reject => out.push((p, Exit::Reject)),
                    RuleEnd::Drop => out.push((p, Exit::Drop)),
                }
            }
        }
        Ok(out)
    }

    fn value(&self, f: &Field, p: &Pkt) -> Result<Value, Unmodelled> {
        Ok(match f {
            Field::Saddr => Value::Addr(p.saddr),
            Field::Daddr => Value::Addr(p.daddr),
            Field::L4Proto => Value::Proto(self.query.protocol),
            Field::ThDport => Value::Port(p.dport),
            Field::Tag(t) => Value::Index(*t),
            Field::Numgen(_) => {
                return Err(Unmodelled("numgen outside a map lookup".into()));
            }
        })
    }

    fn key(&self, fields: &[Field], p: &Pkt) -> Result<Vec<Value>, Unmodelled> {
        fields.iter().map(|f| self.value(f, p)).collect()
    }

    /// The element of `set` that `key` matches, if any.
    fn find(&self, set: &Set, key: &[Value]) -> Option<(Key, ElementData)> {
        if set.decl.is_interval() {
            set.elements
                .iter()
                .find(|(k, _)| {
                    k.len() == key.len() && k.iter().zip(key).all(|(e, v)| component_matches(&e, v))
                })
                .map(|(k, e)| (k.clone(), e.clone()))
        } else {
            let k = Key::from(key.to_vec());
            set.elements.get(&k).map(|e| (k, e.clone()))
        }
    }

    /// Evaluates one rule: every branch it forks into, with how it ends.
    fn rule(&self, chain: &str, rule: &Rule, p: Pkt) -> Result<Vec<(Pkt, RuleEnd)>, Unmodelled> {
        let text = render::rule(rule, self.table.family);
        // What a rule that does not match in the end saw on the way is not a step.
        let before = p.steps.len();
        let mut live = vec![p];
        let mut out = Vec::new();
        for s in &rule.0 {
            let mut next = Vec::new();
            for mut p in live {
                match s {
                    Stmt::CtStateNew => next.push(p),
                    Stmt::CtStatusDnat => {
                        if p.dnat.is_some() {
                            next.push(p);
                        } else {
                            out.push((p, RuleEnd::NoMatch));
                        }
                    }
                    Stmt::Cidr { field, net, negate } => {
                        let Value::Addr(a) = self.value(field, &p)? else {
                            return Err(Unmodelled("a network match on a non-address".into()));
                        };
                        if net.contains(&a) != *negate {
                            p.steps.push(format!(
                                "{chain}: {a} is {}in {net}{}",
                                if *negate { "not " } else { "" },
                                if chain == names::MARK_UNLESS_POD {
                                    " (the pod network)"
                                } else if chain == names::CLUSTER_IPS_CHECK {
                                    " (a service CIDR, but no Service has this address): dropped"
                                } else {
                                    ""
                                }
                            ));
                            next.push(p);
                        } else {
                            out.push((p, RuleEnd::NoMatch));
                        }
                    }
                    Stmt::Lookup {
                        fields,
                        set,
                        negate,
                    }
                    | Stmt::LookupRange {
                        fields,
                        set,
                        negate,
                    } => {
                        let key = self.key(fields, &p)?;
                        let Some(st) = self.table.set(set) else {
                            return Err(Unmodelled(format!(
                                "a lookup in set {set}, which is not there"
                            )));
                        };
                        if st.decl.timeout.is_some() {
                            // Filled by the packet path: either the client is recorded
                            // (with this endpoint) or it is not.
                            let mut hit = p.clone();
                            hit.steps.push(format!(
                                "{chain}: if {} is in @{set} (a client recorded by session \
                                 affinity): `{text}`",
                                show_key(&key)
                            ));
                            let miss = p;
                            let (yes, no) = if *negate { (miss, hit) } else { (hit, miss) };
                            next.push(yes);
                            out.push((no, RuleEnd::NoMatch));
                            continue;
                        }
                        let found = self.find(st, &key);
                        if found.is_some() != *negate {
                            let what = match &found {
                                Some((k, e)) => {
                                    if p.service.is_none() {
                                        p.service = e.comment.as_deref().map(str::to_string);
                                    }
                                    let c = e
                                        .comment
                                        .as_deref()
                                        .map(|c| format!(" ({c})"))
                                        .unwrap_or_default();
                                    format!("{} in @{set}{c}", show_key(&k.unpack()))
                                }
                                None => format!("{} not in @{set}", show_key(&key)),
                            };
                            let why = meaning(set, *negate)
                                .map(|m| format!(": {m}"))
                                .unwrap_or_default();
                            p.steps.push(format!("{chain}: {what}{why}"));
                            next.push(p);
                        } else {
                            out.push((p, RuleEnd::NoMatch));
                        }
                    }
                    Stmt::Iifname { name, prefix } => {
                        // The source role says where the packet comes in: pods on a
                        // pod interface, nothing else does.
                        if self.query.role == Role::Pod {
                            p.steps.push(format!(
                                "{chain}: arrives on the pod interface {name}{}",
                                if *prefix { "*" } else { "" }
                            ));
                            next.push(p);
                        } else {
                            out.push((p, RuleEnd::NoMatch));
                        }
                    }
                    Stmt::FibLocal { saddr, negate } => {
                        let a = if *saddr { p.saddr } else { p.daddr };
                        if (self.local)(a) != *negate {
                            p.steps.push(format!(
                                "{chain}: {a} is {}an address of this node",
                                if *negate { "not " } else { "" }
                            ));
                            next.push(p);
                        } else {
                            out.push((p, RuleEnd::NoMatch));
                        }
                    }
                    Stmt::MarkClear(m) => {
                        if p.mark & m == 0 {
                            p.steps.push(format!(
                                "{chain}: not marked for masquerading (mark {m:#x} clear): source kept"
                            ));
                            next.push(p);
                        } else {
                            out.push((p, RuleEnd::NoMatch));
                        }
                    }
                    Stmt::MarkSetOr(m) => {
                        p.steps
                            .push(format!("{chain}: marked for masquerading (mark {m:#x})"));
                        p.mark |= m;
                        next.push(p);
                    }
                    Stmt::MarkSetXor(m) => {
                        p.mark ^= m;
                        next.push(p);
                    }
                    Stmt::DnatMap { fields, map } => {
                        let (Some(Field::Numgen(m)), Some(front)) =
                            (fields.last(), fields.get(..fields.len() - 1))
                        else {
                            return Err(Unmodelled(format!("a dnat map keyed by {fields:?}")));
                        };
                        let key = self.key(front, &p)?;
                        let st = self.table.set(map);
                        let mut missed = false;
                        for i in 0..*m {
                            let k = Key::from(
                                key.iter()
                                    .copied()
                                    .chain([Value::Index(i)])
                                    .collect::<Vec<_>>(),
                            );
                            match st.and_then(|s| s.elements.get(&k)) {
                                Some(e) => {
                                    let (Some(Value::Addr(a)), Some(Value::Port(port))) =
                                        (e.data.first(), e.data.get(1))
                                    else {
                                        return Err(Unmodelled(format!(
                                            "a value of @{map} that is not an address and port"
                                        )));
                                    };
                                    let mut b = p.clone();
                                    b.steps.push(format!(
                                        "{chain}: numgen random mod {m} = {i}: {} in @{map}: DNAT to {}",
                                        show_key(&k.unpack()),
                                        endpoint_text(a, port)
                                    ));
                                    b.daddr = a;
                                    b.dport = port;
                                    b.dnat = Some((a, port));
                                    out.push((b, RuleEnd::Accept));
                                }
                                None => missed = true,
                            }
                        }
                        if missed {
                            out.push((p, RuleEnd::NoMatch));
                        }
                    }
                    Stmt::L4Proto(x) => {
                        if *x == self.query.protocol {
                            next.push(p);
                        } else {
                            out.push((p, RuleEnd::NoMatch));
                        }
                    }
                    Stmt::Dport(x) => {
                        if *x == p.dport {
                            next.push(p);
                        } else {
                            out.push((p, RuleEnd::NoMatch));
                        }
                    }
                    Stmt::NumgenEq { modulus, value } => {
                        if *value < *modulus {
                            let mut b = p.clone();
                            b.steps.push(format!(
                                "{chain}: numgen random mod {modulus} = {value} (1 in {modulus})"
                            ));
                            next.push(b);
                        }
                        if *modulus > 1 {
                            out.push((p, RuleEnd::NoMatch));
                        }
                    }
                    Stmt::Update { set, .. } => {
                        p.steps
                            .push(format!("{chain}: the client is recorded in @{set}"));
                        next.push(p);
                    }
                    Stmt::Dnat(a, port) => {
                        p.steps
                            .push(format!("{chain}: DNAT to {}", endpoint_text(*a, *port)));
                        p.daddr = *a;
                        p.dport = *port;
                        p.dnat = Some((*a, *port));
                        out.push((p, RuleEnd::Accept));
                    }
                    Stmt::Masquerade => {
                        p.steps
                            .push(format!("{chain}: masquerade (source NAT to the node)"));
                        p.masq = true;
                        out.push((p, RuleEnd::Accept));
                    }
                    Stmt::Reject => {
                        p.steps.push(format!("{chain}: reject (`{text}`)"));
                        out.push((p, RuleEnd::Reject));
                    }
                    Stmt::Verdict(v) => {
                        let end = match v {
                            Verdict::Accept => RuleEnd::Accept,
                            Verdict::Drop => {
                                p.steps.push(format!("{chain}: drop (`{text}`)"));
                                RuleEnd::Drop
                            }
                            Verdict::Return => RuleEnd::Return,
                            Verdict::Jump(t) => {
                                p.steps.push(format!("{chain}: jump {t}"));
                                RuleEnd::Jump(t.clone())
                            }
                            Verdict::Goto(t) => {
                                p.steps.push(format!("{chain}: goto {t}"));
                                RuleEnd::Goto(t.clone())
                            }
                        };
                        out.push((p, end));
                    }
                }
            }
            live = next;
        }
        out.extend(live.into_iter().map(|p| (p, RuleEnd::Next)));
        for (p, end) in &mut out {
            if matches!(end, RuleEnd::NoMatch) {
                p.steps.truncate(before);
            }
        }
        Ok(out)
    }
}

/// The packet's fate over all branches, for a summary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// DNAT, REJECT, DROP or ACCEPT
    pub verdict: &'static str,
    /// the Service port that matched (an element comment), if any
    pub service: Option<String>,
    /// every endpoint a DNAT branch reaches
    pub endpoints: BTreeSet<(IpAddr, u16)>,
    /// whether a branch masquerades
    pub masquerade: bool,
    /// whether only some branches masquerade (hairpin)
    pub masquerade_partly: bool,
    /// whether the branches end differently
    pub mixed: bool,
}

/// Sums the branches up. A DNAT anywhere makes the verdict DNAT (other branches are
/// reported as `mixed`), then REJECT, DROP, ACCEPT in that order.
pub fn summarize(branches: &[Branch]) -> Summary {
    let kinds: BTreeSet<&'static str> = branches
        .iter()
        .map(|b| match b.fate {
            Fate::Dnat(..) => "DNAT",
            Fate::Reject => "REJECT",
            Fate::Drop => "DROP",
            Fate::Accept => "ACCEPT",
        })
        .collect();
    let verdict = ["DNAT", "REJECT", "DROP", "ACCEPT"]
        .into_iter()
        .find(|k| kinds.contains(k))
        .unwrap_or("ACCEPT");
    let chosen: Vec<&Branch> = branches
        .iter()
        .filter(|b| match b.fate {
            Fate::Dnat(..) => verdict == "DNAT",
            Fate::Reject => verdict == "REJECT",
            Fate::Drop => verdict == "DROP",
            Fate::Accept => verdict == "ACCEPT",
        })
        .collect();
    let masq = chosen.iter().filter(|b| b.masquerade).count();
    Summary {
        verdict,
        service: branches.iter().find_map(|b| b.service.clone()),
        endpoints: chosen
            .iter()
            .filter_map(|b| match b.fate {
                Fate::Dnat(a, p) => Some((a, p)),
                _ => None,
            })
            .collect(),
        masquerade: masq > 0,
        masquerade_partly: masq > 0 && masq < chosen.len(),
        mixed: kinds.len() > 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruleset::{build, BuildConfig};

    fn explain(model: &crate::model::ProxyModel, q: Query, masquerade_all: bool) -> Summary {
        let cfg = BuildConfig {
            masquerade_mark: 0x4000,
            masquerade_all,
            cluster_cidrs: vec!["10.128.0.0/9".parse().unwrap()],
            pod_interface: None,
            nodeport_ips: model.node.ips.clone(),
            service_counters: false,
        };
        let rs = build(model, &cfg);
        let t = rs.table(Family::V4).unwrap();
        let node = model.node.ips.clone();
        let local = move |a: IpAddr| node.contains(&a);
        summarize(&Tracer::new(t, q, &local).run().unwrap())
    }

    fn q(source: &str, role: Role, destination: &str, port: u16) -> Query {
        Query {
            source: source.parse().unwrap(),
            role,
            protocol: 6,
            destination: destination.parse().unwrap(),
            port,
        }
    }

    #[test]
    fn every_endpoint_of_a_cluster_ip_is_a_candidate() {
        let mut m = crate::synthetic::model(3, 3);
        // Service 1 without endpoints.
        let name = m
            .services
            .keys()
            .find(|n| n.name == "svc1")
            .unwrap()
            .clone();
        m.services.get_mut(&name).unwrap().endpoints.clear();

        let s = explain(&m, q("10.128.5.5", Role::Pod, "10.96.0.0", 80), false);
        assert_eq!(s.verdict, "DNAT");
        let eps: Vec<String> = s
            .endpoints
            .iter()
            .map(|(a, p)| endpoint_text(*a, *p))
            .collect();
        assert_eq!(
            eps,
            ["10.128.0.0:8080", "10.128.0.1:8080", "10.128.0.2:8080"]
        );
        assert!(!s.masquerade, "pod traffic is not masqueraded");
        assert_eq!(s.service.as_deref(), Some("ns0/svc0:http"));

        // From outside the pod network: masqueraded; with --masquerade-all too.
        let s = explain(&m, q("192.0.2.9", Role::External, "10.96.0.0", 80), false);
        assert!(s.masquerade);
        let s = explain(&m, q("10.128.5.5", Role::Pod, "10.96.0.0", 80), true);
        assert!(s.masquerade);

        // No endpoints: rejected; a wrong port of a ClusterIP: rejected; an unused
        // address of the service CIDR: dropped; anything else: left alone.
        assert_eq!(
            explain(&m, q("10.128.5.5", Role::Pod, "10.96.0.1", 80), false).verdict,
            "REJECT"
        );
        assert_eq!(
            explain(&m, q("10.128.5.5", Role::Pod, "10.96.0.0", 81), false).verdict,
            "REJECT"
        );
        assert_eq!(
            explain(&m, q("10.128.5.5", Role::Pod, "10.96.0.9", 80), false).verdict,
            "DROP"
        );
        assert_eq!(
            explain(&m, q("10.128.5.5", Role::Pod, "192.0.2.1", 80), false).verdict,
            "ACCEPT"
        );
    }

    #[test]
    fn session_affinity_lists_every_candidate() {
        let mut m = crate::synthetic::model(1, 4);
        for e in m.services.values_mut() {
            e.port.affinity_timeout = Some(300);
        }
        let s = explain(&m, q("10.128.5.5", Role::Pod, "10.96.0.0", 80), false);
        assert_eq!(s.verdict, "DNAT");
        assert_eq!(s.endpoints.len(), 4);
    }
}

#[cfg(test)]
mod fake_kernel_tests {
    use super::*;
    use crate::ruleset::fake::FakeKernel;
    use crate::ruleset::{build, diff, BuildConfig};
    use crate::synthetic::{random_entry, random_node, Rng};

    /// The tracer gives the same answer on a ruleset as on what a kernel holds after
    /// the operations that program it (the fake kernel, without root): for random
    /// clusters, every frontend from every role.
    #[test]
    fn the_tracer_agrees_on_the_built_and_the_programmed_table() {
        let (mut asked, mut dnat) = (0, 0);
        for seed in 1..25u64 {
            let mut rng = Rng::new(seed);
            let mut model = crate::model::ProxyModel {
                node: random_node(),
                service_cidrs: vec!["10.96.0.0/16".parse().unwrap()],
                ..Default::default()
            };
            for i in 0..10 {
                let e = random_entry(&mut rng, i);
                model.services.insert(e.port.name.clone(), e);
            }
            let cfg = BuildConfig {
                masquerade_mark: 0x4000,
                masquerade_all: rng.one_in(3),
                cluster_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
                pod_interface: None,
                nodeport_ips: random_node().ips,
                // Every other seed in the rule order of `--service-counters`.
                service_counters: seed % 2 == 0,
            };
            let rs = build(&model, &cfg);
            let Some(built) = rs.table(Family::V4) else {
                continue;
            };
            let mut ops = Vec::new();
            diff::diff(None, built, &mut ops);
            let mut fk = FakeKernel::new();
            fk.apply(&ops).unwrap();
            let programmed = fk.table(Family::V4).unwrap();
            let node = model.node.ips.clone();
            let local = move |a: IpAddr| node.contains(&a);
            for e in model.services.values() {
                let proto = e.port.name.protocol.number();
                let mut dests: Vec<(IpAddr, u16)> = e
                    .port
                    .cluster_ips
                    .iter()
                    .map(|a| (*a, e.port.port))
                    .collect();
                if let Some(np) = e.port.node_port {
                    dests.push((model.node.ips[0], np));
                }
                for (dst, port) in dests.into_iter().filter(|(a, _)| a.is_ipv4()) {
                    for (src, role) in [
                        ("10.1.2.3", Role::Pod),
                        ("192.168.0.2", Role::Node),
                        ("203.0.113.7", Role::External),
                    ] {
                        let q = Query {
                            source: src.parse().unwrap(),
                            role,
                            protocol: proto,
                            destination: dst,
                            port,
                        };
                        let a = summarize(&Tracer::new(built, q, &local).run().unwrap());
                        let b = summarize(&Tracer::new(programmed, q, &local).run().unwrap());
                        assert_eq!(a, b, "seed {seed} {q:?}");
                        asked += 1;
                        dnat += usize::from(a.verdict == "DNAT");
                    }
                }
            }
        }
        assert!(
            asked > 300 && dnat > asked / 4,
            "{asked} queries, {dnat} DNAT"
        );
    }
}
