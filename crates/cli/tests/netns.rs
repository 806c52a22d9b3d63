//! The standing federation across hosts: each party (coordinator, key holder, two nodes, the
//! model owner) runs in its own Linux network namespace with its own address from
//! 198.18.0.0/24, joined through veth pairs to a bridge in a namespace of their own. The test
//! creates every namespace and link itself and deletes them at the end; nothing is added to
//! the host's own namespace, and no address outside these namespaces is ever a target.
//!
//! It needs root (network namespaces). `cargo test` lists it as ignored; `.ci/run`, which runs
//! as root, runs it with `--ignored`.

mod common;

use std::collections::HashMap;
use std::process::Command;

use common::daemons::{Fed, json, path, state_of};
use common::root;

/// Network namespaces made for one test, deleted when dropped.
struct Namespaces {
    names: Vec<String>,
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth ends inside it, and so their peers.
        for ns in self.names.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A hub namespace with a bridge, and one namespace per party with `eth0` at 198.18.0.(i+1),
/// linked to the bridge by a veth pair made inside the namespaces.
fn namespaces(parties: &[&str]) -> (Namespaces, HashMap<String, (String, String)>) {
    let prefix = format!("cf{}", std::process::id() % 100_000);
    let hub = format!("{prefix}-hub");
    let mut made = Namespaces { names: Vec::new() };
    ip(&["netns", "add", &hub]);
    made.names.push(hub.clone());
    ip(&["-n", &hub, "link", "set", "lo", "up"]);
    ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"]);
    ip(&["-n", &hub, "link", "set", "br0", "up"]);
    let mut hosts = HashMap::new();
    for (i, party) in parties.iter().enumerate() {
        let ns = format!("{prefix}-{party}");
        ip(&["netns", "add", &ns]);
        made.names.push(ns.clone());
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        let end = format!("h{i}");
        ip(&[
            "-n", &hub, "link", "add", &end, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        ip(&["-n", &hub, "link", "set", &end, "master", "br0"]);
        ip(&["-n", &hub, "link", "set", &end, "up"]);
        let addr = format!("198.18.0.{}", i + 1);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        hosts.insert((*party).to_string(), (ns, addr));
    }
    (made, hosts)
}

#[test]
#[ignore = "needs root (network namespaces); .ci/run runs it with --ignored"]
fn the_shipped_example_completes_with_every_party_on_its_own_host() {
    let parties = ["coordinator", "keyholder", "guest", "host", "owner"];
    let (_namespaces, hosts) = namespaces(&parties);
    let mut fed = Fed::new();
    fed.hosts = Some(hosts);
    let mut keyholder = fed.keyholder();
    assert!(
        keyholder.addrs[1].starts_with("198.18.0.2:"),
        "{:?}",
        keyholder.addrs
    );
    let mut coordinator = fed.coordinator(&keyholder.addrs[1]);
    let (control, fleet) = (coordinator.addrs[1].clone(), coordinator.addrs[2].clone());
    assert!(fleet.starts_with("198.18.0.1:"), "{fleet}");
    let policies = root().join("examples/policies");
    let mut guest = fed.node("guest", &fleet, &policies.join("breast_homo_guest.toml"));
    let mut host = fed.node("host", &fleet, &policies.join("breast_homo_host.toml"));
    // The owner's namespace reaches the coordinator only through the bridge: 127.0.0.1 there
    // is its own loopback.
    let unreachable = fed.job("127.0.0.1:7101", "owner", &["list"]);
    assert_eq!(unreachable.status.code(), Some(1));

    for scheme in ["paillier", "masking"] {
        let id = format!("netns-{scheme}");
        let manifest = fed.manifest(&id, scheme, 80);
        let out = fed.job(&control, "owner", &["submit", path(&manifest), "--wait"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{scheme}: {}\n{}\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            coordinator.log(),
            guest.log(),
            host.log()
        );
        assert_eq!(state_of(&fed, &control, &id), "completed");
        let model = fed.dir.path().join(format!("model-{scheme}"));
        let out = fed.job(&control, "owner", &["download", &id, "--out", path(&model)]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report = json(&out);
        assert_eq!(report["job"], id.as_str(), "{report}");
        let written: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(model.join("coordinator-report.json")).expect("report"),
        )
        .expect("json");
        assert_eq!(written["rounds"], 80, "{written}");
        assert_eq!(written["parties"], serde_json::json!(["guest", "host"]));
    }
    for d in [&mut guest, &mut host, &mut coordinator, &mut keyholder] {
        assert_eq!(d.terminate(), Some(0), "{}", d.log());
    }
}
