//! The reload: diff the running set against a validated table, then apply the difference.
//!
//! [`diff`] is pure and costs O(rows + running) through a hash map keyed by identity (proto, IP,
//! port). [`Sockets`] carries a plan out in steps, between which the workers acknowledge (the
//! event loop waits for those, never this module; see `reloading`):
//! 1. [`Sockets::stage`]: the plan, TLS material re-read, removals taken out of the running set
//!    (their fds stay open) and the phase-1 message ([`Removal`]);
//! 2. once every worker acknowledged the removal, [`Sockets::release`] frees their slots and closes
//!    the supervisor's copies, so the ports they held are free for this same reload;
//! 3. [`Sockets::bind`]: binds, in-place updates (each changed socket option set alone; one that
//!    fails keeps the value in force, which is what the shm table and `sockets_list` then show)
//!    and the phase-2 content ([`Changes`]);
//! 4. once acknowledged, [`Sockets::commit`]: the table order, the listeners, the generation.
//!
//! Nothing here reads the database or talks MI: the daemon gives it rows and turns its report into
//! a reply. [`in_force`] (which values a socket runs with after a partly failed update) is pure.

use crate::config::Tls as TlsConfig;
use crate::pool::{Served, WorkerOutcome};
use crate::row::{format_flags, Identity, SocketDef};
use crate::sys::{self, LiveOption};
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

/// The most bytes read from a certificate, key or CA file.
pub const MAX_TLS_FILE: u64 = 1024 * 1024;

/// What one reload did.
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
    /// Rows whose bind failed (or whose TLS material did not load).
    pub failures: Vec<Failure>,
    /// Sockets updated in place that kept some values because a socket option could not be set.
    pub kept: Vec<Failure>,
    /// Workers restarted during the reload, and entries workers refused.
    pub workers: Vec<WorkerOutcome>,
}

/// A reload between its steps (see the module docs): the plan and what it took out of the running
/// set.
#[derive(Debug)]
pub struct Staged {
    table: Vec<SocketDef>,
    plan: Plan,
    /// Taken out of the running set: their fds stay open until every worker acknowledged phase 1.
    gone: Vec<Running>,
    /// The phase-1 message, when there is something to remove.
    removal: Option<Removal>,
    tls_errors: Vec<Failure>,
    report: Report,
}

impl Staged {
    /// Phase 1, when the reload removes anything (or rebinds).
    pub fn removal(&self) -> Option<&Removal> {
        self.removal.as_ref()
    }

    /// True when the table asks for nothing new: no message to any worker.
    pub fn changes_nothing(&self) -> bool {
        self.plan.is_empty()
    }
}

/// Phase 1 of a reload: what every worker drops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    /// The generation it is committed as.
    pub generation: u64,
    /// UDP slots whose fds the workers close.
    pub udp: Vec<u32>,
    /// Stream slots whose connections the workers drain.
    pub stream: Vec<u32>,
}

/// Phase 2 of a reload: what every worker is told, all in one go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// The generation it is committed as.
    pub generation: u64,
    /// New UDP sockets (their fds: [`Sockets::udp_fds`]).
    pub udp_adds: Vec<SocketInfo>,
    /// UDP sockets updated in place.
    pub udp_updates: Vec<SocketInfo>,
    /// Stream sockets new or updated (metadata: stream workers never get a listener).
    pub stream: Vec<SocketInfo>,
}

/// Which live options failed to be set in place on a socket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unapplied {
    /// IP_TOS / IPV6_TCLASS.
    pub tos: bool,
    /// The path-MTU discovery mode.
    pub frag: bool,
    /// IP_FREEBIND / IPV6_FREEBIND.
    pub anycast: bool,
}

impl Unapplied {
    fn mark(&mut self, option: LiveOption) {
        match option {
            LiveOption::Tos => self.tos = true,
            LiveOption::Frag => self.frag = true,
            LiveOption::Anycast => self.anycast = true,
        }
    }
}

/// The row a socket runs as after an in-place update from `old` to `asked` in which the options
/// in `unapplied` could not be set: `asked`, with those values as they were. Pure.
pub fn in_force(old: &SocketDef, asked: &SocketDef, unapplied: Unapplied) -> SocketDef {
    let mut d = asked.clone();
    if unapplied.tos {
        d.tos = old.tos;
    }
    if unapplied.frag {
        d.flags.frag = old.flags.frag;
    }
    if unapplied.anycast {
        d.flags.anycast = old.flags.anycast;
    }
    d
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
    /// sockets' metadata (their listeners stay here). The whole running set, also in the middle of
    /// a reload (a worker started then gets the generation in force, which it acknowledges).
    pub fn served(&self) -> Served<'_> {
        let mut served = Served::default();
        for r in self.running.values() {
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

    /// Step 1 of a reload of a validated table: the plan, TLS material re-read for running TLS
    /// sockets (a change is an in-place update), and the removals (and the old side of rebinds)
    /// taken out of the running set, with the phase-1 message when there are any. Never fails as a
    /// whole: what cannot be applied ends up in the report.
    pub fn stage(&mut self, table: Vec<SocketDef>, tls: &TlsConfig) -> Staged {
        let mut plan = diff(&self.running, &table);
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
        for def in table.iter().filter(|d| needs_tls(d)) {
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
        let mut staged = Staged {
            table,
            plan,
            gone: Vec::new(),
            removal: None,
            tls_errors,
            report: Report::default(),
        };
        if staged.plan.is_empty() {
            return staged;
        }
        // Phase 1: removals (and the old side of rebinds), acknowledged by every worker before any
        // new bind, so the ports they free can be taken by this same reload. A stream listener
        // leaves the loop's listeners now; its established connections drain in the workers.
        let gone_ids: Vec<Identity> = staged
            .plan
            .remove
            .iter()
            .copied()
            .chain(staged.plan.rebind.iter().map(SocketDef::identity))
            .collect();
        staged.gone = gone_ids
            .iter()
            .filter_map(|id| self.running.remove(id))
            .collect();
        for r in &staged.gone {
            self.listeners.remove(&r.slot);
        }
        if !staged.gone.is_empty() {
            self.generation += 1;
            let bound = |datagram: bool| -> Vec<u32> {
                staged
                    .gone
                    .iter()
                    .filter(|r| r.fd.is_some() && r.def.proto.is_datagram() == datagram)
                    .map(|r| r.slot)
                    .collect()
            };
            staged.removal = Some(Removal {
                generation: self.generation,
                udp: bound(true),
                stream: bound(false),
            });
        }
        staged
    }

    /// Step 2, once every worker acknowledged the removal: free the removed sockets' slots and
    /// close the supervisor's copies (the last ones), so their ports are free.
    pub fn release(&mut self, staged: &mut Staged, shm: &Table) {
        for r in staged.gone.drain(..) {
            shm.free_slot(r.slot);
            drop(r.fd);
        }
        staged.report.removed = staged.plan.remove.len();
    }

    /// Step 3: binds (new, rebound, retried) and in-place updates; returns what every worker is
    /// told in phase 2 (the UDP fds: [`Sockets::udp_fds`]).
    pub fn bind(&mut self, staged: &mut Staged, tls: &TlsConfig, shm: &Table) -> Changes {
        debug_assert!(
            staged.gone.is_empty(),
            "bind before the removals are released"
        );
        self.generation += 1;
        let mut changes = Changes {
            generation: self.generation,
            ..Changes::default()
        };
        let plan = &staged.plan;
        let retry_slots: HashMap<Identity, u32> = plan
            .retry
            .iter()
            .filter_map(|d| {
                self.running
                    .get(&d.identity())
                    .map(|r| (d.identity(), r.slot))
            })
            .collect();
        let mut added: Vec<Identity> = Vec::new();
        for def in plan.add.iter().chain(&plan.rebind).chain(&plan.retry) {
            let id = def.identity();
            let r = bind_running(def.clone(), tls, shm, retry_slots.get(&id).copied());
            if r.fd.is_some() {
                added.push(id);
            }
            self.running.insert(id, r);
        }
        staged.report.added = plan.add.len();
        staged.report.rebound = plan.rebind.len() + plan.retry.len();

        for asked in &plan.update {
            let Some(r) = self.running.get_mut(&asked.identity()) else {
                continue;
            };
            let mut unapplied = Unapplied::default();
            if let Some(fd) = &r.fd {
                for option in LiveOption::ALL {
                    if !option.differs(&r.def, asked) {
                        continue;
                    }
                    if let Err(e) = sys::set_live_option(fd.as_fd(), option, asked) {
                        warn!(
                            "{}: could not update socket options in place: {e}",
                            asked.text
                        );
                        unapplied.mark(option);
                        staged.report.kept.push(Failure {
                            id: asked.id,
                            socket: asked.text.clone(),
                            reason: format!(
                                "could not update in place: {e}; the value before stays in force"
                            ),
                        });
                    }
                }
            }
            if needs_tls(asked) && r.fd.is_some() {
                match load_tls(asked, tls) {
                    Ok(m) => r.tls = Some(m),
                    // Keep serving with the material that loaded before; say so in the reply.
                    Err(e) => staged.tls_errors.push(Failure {
                        id: asked.id,
                        socket: asked.text.clone(),
                        reason: e,
                    }),
                }
            }
            r.def = in_force(&r.def, asked, unapplied);
            shm.write_slot(r.slot, &r.slot_data());
            if r.fd.is_some() {
                if asked.proto.is_datagram() {
                    changes.udp_updates.push(r.info());
                } else {
                    changes.stream.push(r.info());
                }
            }
        }
        staged.report.updated = plan.update.len();

        for r in added.iter().filter_map(|id| self.running.get(id)) {
            match (&r.fd, r.def.proto.is_datagram()) {
                (Some(_), true) => changes.udp_adds.push(r.info()),
                (Some(_), false) => changes.stream.push(r.info()),
                (None, _) => {}
            }
        }
        changes
    }

    /// The fds of the new UDP sockets of `changes`, with their manifest entries.
    pub fn udp_fds<'a>(&'a self, changes: &Changes) -> Vec<(SocketInfo, BorrowedFd<'a>)> {
        let by_slot: HashMap<u32, BorrowedFd<'a>> = self
            .running
            .values()
            .filter_map(|r| r.fd.as_ref().map(|fd| (r.slot, fd.as_fd())))
            .collect();
        changes
            .udp_adds
            .iter()
            .filter_map(|info| by_slot.get(&info.slot).map(|fd| (info.clone(), *fd)))
            .collect()
    }

    /// Step 4, once phase 2 is acknowledged (or at once when the table changes nothing): the
    /// table order, the listeners, the generation in shm, and the report.
    pub fn commit(&mut self, mut staged: Staged, shm: &Table) -> Report {
        debug_assert!(
            staged.gone.is_empty(),
            "commit before the removals are released"
        );
        self.order = staged.table.iter().map(SocketDef::identity).collect();
        let mut report = std::mem::take(&mut staged.report);
        report.failures = self.failures();
        report.failures.append(&mut staged.tls_errors);
        report.generation = self.generation;
        if staged.plan.is_empty() {
            return report;
        }
        self.listeners = self
            .running
            .iter()
            .filter(|(_, r)| !r.def.proto.is_datagram() && r.fd.is_some())
            .map(|(id, r)| (r.slot, *id))
            .collect();
        shm.set_generation(self.generation);
        info!(
            "reload generation {}: {} added, {} removed, {} updated in place, {} rebound, {} unchanged, {} failed",
            self.generation,
            report.added,
            report.removed,
            report.updated,
            report.rebound,
            staged.plan.unchanged,
            report.failures.len() + report.kept.len()
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
    // Never blocks and never grows without bound: a FIFO or a device at the path is refused, so
    // is a file over MAX_TLS_FILE.
    let read = |what: &str, path: &Option<std::path::PathBuf>| -> Result<Option<String>, String> {
        let Some(p) = path else { return Ok(None) };
        let fail = |e: String| format!("TLS: cannot read {section} {what} {}: {e}", p.display());
        let bytes = sys::read_small_file(p, MAX_TLS_FILE).map_err(|e| fail(e.to_string()))?;
        String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| fail("not text (PEM expected)".into()))
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
    fn options_that_could_not_be_set_in_place_keep_their_values_in_force() {
        let mut old = def("udp:127.0.0.1:5070", 5070);
        old.tos = 0x10;
        let mut asked = old.clone();
        asked.tos = 0x28;
        asked.flags.frag = true;
        asked.flags.anycast = true;
        asked.tag = Some("new".into());
        assert_eq!(in_force(&old, &asked, Unapplied::default()), asked);
        let kept = in_force(
            &old,
            &asked,
            Unapplied {
                tos: true,
                frag: false,
                anycast: true,
            },
        );
        assert_eq!(kept.tos, 0x10, "the TOS in force");
        assert!(kept.flags.frag, "set");
        assert!(!kept.flags.anycast, "the FREEBIND in force");
        assert_eq!(kept.tag.as_deref(), Some("new"), "metadata always applies");
        // Each live option differs only in what it sets.
        assert!(LiveOption::Tos.differs(&old, &asked));
        assert!(LiveOption::Frag.differs(&old, &asked));
        assert!(LiveOption::Anycast.differs(&old, &asked));
        assert!(!LiveOption::Tos.differs(&old, &kept));
        assert!(!LiveOption::Anycast.differs(&old, &kept));
    }

    #[test]
    fn empty_table_removes_everything_and_same_table_is_empty_plan() {
        let a = def("udp:127.0.0.1:5070", 5070);
        let run = running(&[(a.clone(), true)]);
        assert_eq!(diff(&run, &[]).remove, vec![a.identity()]);
        assert!(diff(&run, &[a]).is_empty());
    }
}
