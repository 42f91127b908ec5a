//! The reload: diff the running set against a validated table, then apply the difference.
//!
//! [`diff`] is pure and costs O(rows + running) through a hash map keyed by identity (proto, IP,
//! port). [`Sockets::apply`] carries a plan out: removals first (acknowledged by every worker, so a
//! port freed by a removal can be bound again in the same reload), then binds, fd hand-off, in-place
//! updates, and one commit acknowledged by every worker before the caller answers.
//!
//! Nothing here reads the database or talks MI: the daemon gives it rows and turns its report into
//! a reply.

use crate::config::Tls as TlsConfig;
use crate::pool::{Pool, Served, WorkerOutcome};
use crate::row::{format_flags, Identity, SocketDef};
use crate::sys;
use log::{info, warn};
use serde_json::{json, Value};
use shm::Proto;
use shm::{SlotData, SlotState, Table};
use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use worker::ipc::{SocketInfo, TlsMaterial};

/// Check that TLS material makes a server configuration (the workers build the same one).
fn check_tls(m: &TlsMaterial) -> Result<(), String> {
    worker::stream::tls_server_config(m)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// What [`diff`] needs to know of a running socket.
pub trait RunningSocket {
    /// The row it was applied from.
    fn def(&self) -> &SocketDef;
    /// True when it is bound and served; false when its bind failed.
    fn is_bound(&self) -> bool;
}

/// What a reload changes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Identities that are no longer in the table.
    pub remove: Vec<Identity>,
    /// Rows whose identity is not running.
    pub add: Vec<SocketDef>,
    /// Same identity, other text / advertised / tag / flags / tos: applied in place, no rebind.
    pub update: Vec<SocketDef>,
    /// Same identity but `reuse_port` changed: the only change that needs a new bind.
    pub rebind: Vec<SocketDef>,
    /// Rows whose earlier bind failed: bind again.
    pub retry: Vec<SocketDef>,
    /// Rows running exactly as the table says.
    pub unchanged: usize,
}

impl Plan {
    /// True when the reload changes nothing.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.add.is_empty()
            && self.update.is_empty()
            && self.rebind.is_empty()
            && self.retry.is_empty()
    }
}

/// Compare the running set with a validated table (whose identities are unique).
pub fn diff<R: RunningSocket>(running: &HashMap<Identity, R>, table: &[SocketDef]) -> Plan {
    let mut plan = Plan::default();
    let mut seen: HashSet<Identity> = HashSet::with_capacity(table.len());
    for def in table {
        let id = def.identity();
        seen.insert(id);
        match running.get(&id) {
            None => plan.add.push(def.clone()),
            Some(r) if !r.is_bound() => plan.retry.push(def.clone()),
            Some(r) if r.def().flags.reuse_port != def.flags.reuse_port => {
                plan.rebind.push(def.clone())
            }
            Some(r) if r.def() != def => plan.update.push(def.clone()),
            Some(_) => plan.unchanged += 1,
        }
    }
    let mut removed: Vec<Identity> = running
        .keys()
        .filter(|id| !seen.contains(id))
        .copied()
        .collect();
    removed.sort();
    plan.remove = removed;
    plan
}

/// One socket of the running set.
#[derive(Debug)]
pub struct Running {
    /// The row as applied.
    pub def: SocketDef,
    /// Its slot in the shared table.
    pub slot: u32,
    /// The supervisor's copy of the bound fd; `None` when the bind failed.
    pub fd: Option<OwnedFd>,
    /// Why the bind failed.
    pub error: Option<String>,
    /// The certificate material of a TLS socket, as last loaded.
    pub tls: Option<TlsMaterial>,
}

impl RunningSocket for Running {
    fn def(&self) -> &SocketDef {
        &self.def
    }
    fn is_bound(&self) -> bool {
        self.fd.is_some()
    }
}

impl Running {
    /// What a worker is told about this socket.
    pub fn info(&self) -> SocketInfo {
        SocketInfo {
            slot: self.slot,
            proto: self.def.proto,
            local: self.def.identity().1,
            contact: self.def.advertised_or_bound(),
            tag: self.def.tag.clone(),
            tls: self.tls.clone(),
        }
    }

    fn slot_data(&self) -> SlotData {
        let (state, error) = match &self.error {
            Some(e) => (SlotState::Error, e.clone()),
            None => (SlotState::Active, String::new()),
        };
        SlotData {
            state,
            socket: self.def.text.clone(),
            proto: Some(self.def.proto),
            address: self.def.identity().1.to_string(),
            advertised: self
                .def
                .advertised
                .as_ref()
                .map(|_| self.def.advertised_or_bound())
                .unwrap_or_default(),
            tag: self.def.tag.clone().unwrap_or_default(),
            flags: format_flags(&self.def.flags),
            tos: self.def.tos,
            error,
        }
    }
}

/// A row that is not running as asked, for the MI reply's `data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Row id, when the table has one.
    pub id: Option<i64>,
    /// The row's socket text.
    pub socket: String,
    /// Why.
    pub reason: String,
}

/// What one apply did.
#[derive(Debug, Default)]
pub struct Report {
    /// The generation committed.
    pub generation: u64,
    /// Counts, for the log.
    pub added: usize,
    /// Removed sockets.
    pub removed: usize,
    /// Updated in place.
    pub updated: usize,
    /// Rebound (reuse_port changed) or bound again after a failure.
    pub rebound: usize,
    /// Rows whose bind failed.
    pub failures: Vec<Failure>,
    /// Workers that did not acknowledge (restarted with the full set).
    pub workers: Vec<WorkerOutcome>,
}

/// The running set, in table order for `sockets_list`.
#[derive(Debug, Default)]
pub struct Sockets {
    running: HashMap<Identity, Running>,
    /// Identities in the order of the last applied table.
    order: Vec<Identity>,
    /// Bound stream sockets by slot: the listeners the event loop accepts on.
    listeners: HashMap<u32, Identity>,
    generation: u64,
}

impl Sockets {
    /// The current generation (0 before the first load).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The running sockets in table order.
    pub fn iter(&self) -> impl Iterator<Item = &Running> {
        self.order.iter().filter_map(|id| self.running.get(id))
    }

    /// What a (re)started worker is given: the bound UDP sockets with their fds, and the stream
    /// sockets' metadata (their listeners stay here).
    pub fn served(&self) -> Served<'_> {
        let mut served = Served::default();
        for r in self.iter() {
            let Some(fd) = r.fd.as_ref() else { continue };
            if r.def.proto.is_datagram() {
                served.udp.push((r.info(), fd.as_fd()));
            } else {
                served.stream.push(r.info());
            }
        }
        served
    }

    /// The stream listeners, by slot, for the event loop to accept on.
    pub fn listeners(&self) -> impl Iterator<Item = (u32, BorrowedFd<'_>)> {
        self.listeners
            .keys()
            .filter_map(|slot| self.listener(*slot).map(|fd| (*slot, fd)))
    }

    /// The listener of the stream socket in `slot`, if it is bound.
    pub fn listener(&self, slot: u32) -> Option<BorrowedFd<'_>> {
        let r = self.running.get(self.listeners.get(&slot)?)?;
        r.fd.as_ref().map(|fd| fd.as_fd())
    }

    /// Number of sockets (bound or not) holding a slot.
    pub fn len(&self) -> usize {
        self.running.len()
    }

    /// True when nothing runs.
    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Apply a validated table. Never fails as a whole: what could not be applied is in the report.
    /// TLS material of `tls`/`wss` rows is read from the files `tls` names, at every reload.
    pub fn apply(
        &mut self,
        table_defs: &[SocketDef],
        tls: &TlsConfig,
        pool: &mut Pool,
        shm: &Table,
    ) -> Report {
        let mut plan = diff(&self.running, table_defs);
        let mut report = Report::default();

        // Certificates are re-read at every reload: a running TLS socket whose material changed is
        // an in-place update (new connections get the new certificate; nothing is rebound).
        let mut tls_errors: Vec<Failure> = Vec::new();
        let planned: HashSet<Identity> = plan
            .update
            .iter()
            .chain(&plan.rebind)
            .chain(&plan.retry)
            .map(SocketDef::identity)
            .collect();
        for def in table_defs.iter().filter(|d| needs_tls(d)) {
            let id = def.identity();
            let Some(r) = self.running.get(&id) else {
                continue;
            };
            if planned.contains(&id) || r.fd.is_none() {
                continue;
            }
            match load_tls(def, tls) {
                Ok(m) if Some(&m) != r.tls.as_ref() => plan.update.push(def.clone()),
                Ok(_) => {}
                Err(e) => tls_errors.push(Failure {
                    id: def.id,
                    socket: def.text.clone(),
                    reason: e,
                }),
            }
        }

        if plan.is_empty() {
            self.order = table_defs.iter().map(SocketDef::identity).collect();
            report.generation = self.generation;
            report.failures = self.failures();
            report.failures.extend(tls_errors);
            return report;
        }

        // Phase 1: removals (and the old side of rebinds), acknowledged by every worker before any
        // new bind, so the ports they free can be taken by this same reload. A stream listener is
        // closed here at once; its established connections drain in the workers.
        let gone_ids: Vec<Identity> = plan
            .remove
            .iter()
            .copied()
            .chain(plan.rebind.iter().map(SocketDef::identity))
            .collect();
        let gone: Vec<Running> = gone_ids
            .iter()
            .filter_map(|id| self.running.remove(id))
            .collect();
        if !gone.is_empty() {
            self.generation += 1;
            let bound = |datagram: bool| -> Vec<u32> {
                gone.iter()
                    .filter(|r| r.fd.is_some() && r.def.proto.is_datagram() == datagram)
                    .map(|r| r.slot)
                    .collect()
            };
            let (udp, stream) = (bound(true), bound(false));
            report
                .workers
                .extend(pool.broadcast_remove(self.generation, &udp, &stream, shm));
            for r in gone {
                shm.free_slot(r.slot);
                drop(r.fd); // the supervisor's copy: the last one once every worker acknowledged
            }
            report.removed = plan.remove.len();
        }

        // Phase 2: binds (new, rebound, retried), in-place updates, one commit.
        self.generation += 1;
        let generation = self.generation;
        let mut added: Vec<Identity> = Vec::new();
        let retry_slots: HashMap<Identity, u32> = plan
            .retry
            .iter()
            .filter_map(|d| {
                self.running
                    .get(&d.identity())
                    .map(|r| (d.identity(), r.slot))
            })
            .collect();
        for def in plan.add.iter().chain(&plan.rebind).chain(&plan.retry) {
            let id = def.identity();
            let r = bind_running(def.clone(), tls, shm, retry_slots.get(&id).copied());
            if r.fd.is_some() {
                added.push(id);
            }
            self.running.insert(id, r);
        }
        report.added = plan.add.len();
        report.rebound = plan.rebind.len() + plan.retry.len();

        let mut udp_updates: Vec<SocketInfo> = Vec::new();
        let mut stream_infos: Vec<SocketInfo> = Vec::new();
        for def in &plan.update {
            let Some(r) = self.running.get_mut(&def.identity()) else {
                continue;
            };
            if let Some(fd) = &r.fd {
                if (r.def.tos, r.def.flags.frag) != (def.tos, def.flags.frag) {
                    if let Err(e) =
                        sys::apply_live_options(fd.as_fd(), def.ip.is_ipv6(), def.flags, def.tos)
                    {
                        warn!(
                            "{}: could not update socket options in place: {e}",
                            def.text
                        );
                    }
                }
            }
            if needs_tls(def) && r.fd.is_some() {
                match load_tls(def, tls) {
                    Ok(m) => r.tls = Some(m),
                    // Keep serving with the material that loaded before; say so in the reply.
                    Err(e) => tls_errors.push(Failure {
                        id: def.id,
                        socket: def.text.clone(),
                        reason: e,
                    }),
                }
            }
            r.def = def.clone();
            shm.write_slot(r.slot, &r.slot_data());
            if r.fd.is_some() {
                if def.proto.is_datagram() {
                    udp_updates.push(r.info());
                } else {
                    stream_infos.push(r.info());
                }
            }
        }
        report.updated = plan.update.len();

        let mut udp_adds: Vec<(SocketInfo, BorrowedFd<'_>)> = Vec::new();
        for r in added.iter().filter_map(|id| self.running.get(id)) {
            match (&r.fd, r.def.proto.is_datagram()) {
                (Some(fd), true) => udp_adds.push((r.info(), fd.as_fd())),
                (Some(_), false) => stream_infos.push(r.info()),
                (None, _) => {}
            }
        }
        report.workers.extend(pool.broadcast_apply(
            generation,
            &udp_adds,
            &udp_updates,
            &stream_infos,
            shm,
        ));

        self.order = table_defs.iter().map(SocketDef::identity).collect();
        self.listeners = self
            .running
            .iter()
            .filter(|(_, r)| !r.def.proto.is_datagram() && r.fd.is_some())
            .map(|(id, r)| (r.slot, *id))
            .collect();
        report.failures = self.failures();
        report.failures.extend(tls_errors);
        shm.set_generation(generation);
        report.generation = generation;
        info!(
            "reload generation {generation}: {} added, {} removed, {} updated in place, {} rebound, {} unchanged, {} failed",
            report.added,
            report.removed,
            report.updated,
            report.rebound,
            plan.unchanged,
            report.failures.len()
        );
        report
    }

    /// Rows in the running set whose bind failed.
    fn failures(&self) -> Vec<Failure> {
        self.iter()
            .filter_map(|r| {
                r.error.as_ref().map(|e| Failure {
                    id: r.def.id,
                    socket: r.def.text.clone(),
                    reason: e.clone(),
                })
            })
            .collect()
    }

    /// `sockets_list`: the rows as applied, in the shape OpenSIPS gives.
    pub fn list_json(&self) -> Value {
        Value::Array(
            self.iter()
                .map(|r| {
                    let d = &r.def;
                    let mut o = serde_json::Map::new();
                    o.insert("socket".into(), json!(d.text));
                    if d.advertised.is_some() {
                        o.insert("advertised".into(), json!(d.advertised_or_bound()));
                    }
                    if let Some(t) = &d.tag {
                        o.insert("tag".into(), json!(t));
                    }
                    let flags = format_flags(&d.flags);
                    if !flags.is_empty() {
                        o.insert("flags".into(), json!(flags));
                    }
                    if d.tos != 0 {
                        o.insert("tos".into(), json!(d.tos));
                    }
                    Value::Object(o)
                })
                .collect(),
        )
    }
}

/// Bind one row and record it in a slot (`slot` reused when retrying a failed bind). A `tls` or
/// `wss` row whose certificate does not load is not bound: that is its bind failure.
fn bind_running(def: SocketDef, tls: &TlsConfig, shm: &Table, slot: Option<u32>) -> Running {
    let material = if needs_tls(&def) {
        Some(load_tls(&def, tls))
    } else {
        None
    };
    let (fd, error, tls) = match material {
        Some(Err(e)) => (None, Some(e), None),
        material => match sys::bind(&def) {
            Ok(fd) => (Some(fd), None, material.and_then(Result::ok)),
            Err(e) => (None, Some(e.to_string()), None),
        },
    };
    if let Some(e) = &error {
        warn!("{}: {e}", def.text);
    }
    let mut r = Running {
        def,
        slot: 0,
        fd,
        error,
        tls,
    };
    let data = r.slot_data();
    match slot {
        Some(s) => {
            shm.write_slot(s, &data);
            r.slot = s;
        }
        None => match shm.occupy(&data) {
            Some(s) => r.slot = s,
            None => {
                // Validation caps the table at max_sockets and removals run first, so this means
                // the shared table and the running set disagree: refuse the socket, keep the rest.
                warn!("{}: no free slot in the shared table", r.def.text);
                r.fd = None;
                r.error = Some("no free slot in the shared table".into());
            }
        },
    }
    r
}

/// True for the protos that run TLS.
fn needs_tls(def: &SocketDef) -> bool {
    matches!(def.proto, Proto::Tls | Proto::Wss)
}

/// Read (and check) the certificate material a TLS socket presents: `[tls.tag.<TAG>]` for its
/// tag when configured, else `[tls]`.
fn load_tls(def: &SocketDef, tls: &TlsConfig) -> Result<TlsMaterial, String> {
    let cert = tls.for_tag(def.tag.as_deref());
    let section = match def.tag.as_deref() {
        Some(t) if tls.tags.contains_key(t) => format!("[tls.tag.{t}]"),
        _ => "[tls]".to_string(),
    };
    let read = |what: &str, path: &Option<std::path::PathBuf>| -> Result<Option<String>, String> {
        match path {
            None => Ok(None),
            Some(p) => std::fs::read_to_string(p)
                .map(Some)
                .map_err(|e| format!("TLS: cannot read {section} {what} {}: {e}", p.display())),
        }
    };
    let (Some(cert_pem), Some(key_pem)) = (
        read("certificate", &cert.certificate)?,
        read("private_key", &cert.private_key)?,
    ) else {
        return Err(format!(
            "TLS: no certificate configured ({section} certificate and private_key)"
        ));
    };
    let material = TlsMaterial {
        cert_pem,
        key_pem,
        ca_pem: read("ca_list", &cert.ca_list)?,
        require_client_cert: cert.require_client_cert,
    };
    check_tls(&material).map_err(|e| format!("TLS: {section}: {e}"))?;
    Ok(material)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row::Flags;
    use shm::Proto;

    struct Fake(SocketDef, bool);
    impl RunningSocket for Fake {
        fn def(&self) -> &SocketDef {
            &self.0
        }
        fn is_bound(&self) -> bool {
            self.1
        }
    }

    fn def(text: &str, port: u16) -> SocketDef {
        SocketDef {
            id: None,
            text: text.into(),
            proto: Proto::Udp,
            ip: "127.0.0.1".parse().unwrap(),
            port,
            advertised: None,
            tag: None,
            flags: Flags::default(),
            tos: 0,
        }
    }

    fn running(defs: &[(SocketDef, bool)]) -> HashMap<Identity, Fake> {
        defs.iter()
            .map(|(d, b)| (d.identity(), Fake(d.clone(), *b)))
            .collect()
    }

    #[test]
    fn add_remove_unchanged() {
        let a = def("udp:127.0.0.1:5070", 5070);
        let b = def("udp:127.0.0.1:5071", 5071);
        let c = def("udp:127.0.0.1:5072", 5072);
        let run = running(&[(a.clone(), true), (b.clone(), true)]);
        let plan = diff(&run, &[a.clone(), c.clone()]);
        assert_eq!(plan.add, vec![c]);
        assert_eq!(plan.remove, vec![b.identity()]);
        assert_eq!(plan.unchanged, 1);
        assert!(plan.update.is_empty() && plan.rebind.is_empty() && plan.retry.is_empty());
    }

    #[test]
    fn metadata_change_is_an_update_not_a_rebind() {
        let a = def("udp:127.0.0.1:5070", 5070);
        let run = running(&[(a.clone(), true)]);
        let mut tagged = a.clone();
        tagged.tag = Some("t".into());
        tagged.tos = 16;
        tagged.flags.frag = true;
        tagged.text = "UDP:localhost:5070".into();
        let plan = diff(&run, &[tagged.clone()]);
        assert_eq!(plan.update, vec![tagged]);
        assert!(plan.add.is_empty() && plan.remove.is_empty() && plan.rebind.is_empty());
    }

    #[test]
    fn reuse_port_change_rebinds_and_failed_binds_retry() {
        let a = def("udp:127.0.0.1:5070", 5070);
        let b = def("udp:127.0.0.1:5071", 5071);
        let run = running(&[(a.clone(), true), (b.clone(), false)]);
        let mut a2 = a.clone();
        a2.flags.reuse_port = true;
        let plan = diff(&run, &[a2.clone(), b.clone()]);
        assert_eq!(plan.rebind, vec![a2]);
        assert_eq!(plan.retry, vec![b]);
        assert!(plan.add.is_empty() && plan.remove.is_empty());
    }

    #[test]
    fn empty_table_removes_everything_and_same_table_is_empty_plan() {
        let a = def("udp:127.0.0.1:5070", 5070);
        let run = running(&[(a.clone(), true)]);
        assert_eq!(diff(&run, &[]).remove, vec![a.identity()]);
        assert!(diff(&run, &[a]).is_empty());
    }
}
