//! The link that holds the local IPs, over rtnetlink.
//!
//! node-cache creates a dummy link (`-interfacename`, default
//! `nodelocaldns`) and puts each local IP on it as a /32 or /128 (scope
//! global, as vishvananda/netlink's `AddrAdd` does). We do the same and
//! bring the dummy up; IPv6 addresses get `nodad` so they can be bound at
//! once. Where that is not possible the addresses go on a link that is
//! already there:
//!
//! - a link of that name exists and is not a dummy (`-interfacename eth0`):
//!   that link;
//! - the kernel has no dummy driver (`Unknown device type`) and no link of
//!   that name exists: the loopback `lo` (logged as a warning).
//!
//! A dummy of that name that is already there (left by a previous run with
//! `-skipteardown`) is adopted and deleted at teardown, as node-cache
//! does. On a link that is not ours, teardown deletes only the addresses
//! this process added (an address that was there before stays).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::{AddressMessageBuilder, Handle, LinkDummy, LinkUnspec};

use super::{COMMAND_TIMEOUT, ErrorType, SetupError, count_error};

const ENODEV: i32 = 19;
const EEXIST: i32 = 17;
const EADDRNOTAVAIL: i32 = 99;
const EOPNOTSUPP: i32 = 95;

/// Which link holds the local IPs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkUse {
    /// A dummy link this process created (deleted at teardown).
    CreatedDummy(String),
    /// A dummy link of that name that was already there (adopted, deleted
    /// at teardown, as node-cache does).
    AdoptedDummy(String),
    /// A link that was there (the named one, or `lo` without a dummy
    /// driver): only the addresses added here are removed at teardown.
    Existing(String),
}

impl LinkUse {
    /// The link's name.
    pub fn name(&self) -> &str {
        match self {
            Self::CreatedDummy(n) | Self::AdoptedDummy(n) | Self::Existing(n) => n,
        }
    }

    /// Whether the link is a dummy that teardown deletes.
    pub fn is_dummy(&self) -> bool {
        !matches!(self, Self::Existing(_))
    }
}

/// What ensure and teardown remember between calls.
#[derive(Debug)]
pub(crate) struct LinkState {
    name: String,
    ips: Vec<IpAddr>,
    using: Option<LinkUse>,
    /// Addresses this process put on an existing link.
    added: HashSet<IpAddr>,
}

fn netlink_err(what: impl Into<String>, e: &rtnetlink::Error) -> SetupError {
    SetupError::Netlink {
        what: what.into(),
        detail: e.to_string(),
    }
}

/// The errno of a netlink error answer, positive (`None` for other errors).
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

fn connect() -> Result<Handle, SetupError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| SetupError::Netlink {
        what: "rtnetlink socket".into(),
        detail: e.to_string(),
    })?;
    // The connection task ends when the handle (every clone) is dropped.
    tokio::spawn(conn);
    Ok(handle)
}

async fn link_by_name(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, SetupError> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link),
        Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
        Err(e) => Err(netlink_err(format!("looking up link {name}"), &e)),
    }
}

fn is_dummy(link: &LinkMessage) -> bool {
    link.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Dummy))),
        _ => false,
    })
}

impl LinkState {
    pub(crate) fn new(name: &str, ips: &[IpAddr]) -> Self {
        Self {
            name: name.to_string(),
            ips: ips.to_vec(),
            using: None,
            added: HashSet::new(),
        }
    }

    pub(crate) fn link_use(&self) -> Option<LinkUse> {
        self.using.clone()
    }

    /// Makes sure the link exists (or picks the existing one) and holds
    /// every IP. Errors are logged and counted.
    pub(crate) async fn ensure(&mut self) -> Result<(), SetupError> {
        match tokio::time::timeout(COMMAND_TIMEOUT, self.ensure_inner()).await {
            Ok(r) => r,
            Err(_) => {
                let e = SetupError::Timeout(format!("setting up link {}", self.name));
                tracing::error!(error = %e, "node-local interface");
                count_error(ErrorType::InterfaceCheck);
                Err(e)
            }
        }
    }

    async fn ensure_inner(&mut self) -> Result<(), SetupError> {
        let handle = connect().inspect_err(|e| {
            tracing::error!(error = %e, "node-local interface");
            count_error(ErrorType::InterfaceCheck);
        })?;
        let (link, index) = self.find_or_create(&handle).await?;
        let mut first = None;
        if link.is_dummy() {
            // Up (again, if someone took it down).
            let up = LinkUnspec::new_with_index(index).up().build();
            if let Err(e) = handle.link().set(up).execute().await {
                let e = netlink_err(format!("bringing link {} up", self.name), &e);
                tracing::error!(error = %e, "node-local interface");
                count_error(ErrorType::InterfaceAdd);
                first.get_or_insert(e);
            }
        }
        for &ip in &self.ips {
            match add_address(&handle, index, ip).await {
                Ok(true) => {
                    tracing::info!(ip = %ip, link = link.name(), "added node-local address");
                    if !link.is_dummy() {
                        self.added.insert(ip);
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    let e = netlink_err(format!("adding {ip} to link {}", link.name()), &e);
                    tracing::error!(error = %e, "node-local interface");
                    count_error(ErrorType::InterfaceAdd);
                    first.get_or_insert(e);
                }
            }
        }
        self.using = Some(link);
        first.map_or(Ok(()), Err)
    }

    /// The link to use and its index.
    async fn find_or_create(&mut self, handle: &Handle) -> Result<(LinkUse, u32), SetupError> {
        let check = |e: SetupError| {
            tracing::error!(error = %e, "node-local interface");
            count_error(ErrorType::InterfaceCheck);
            e
        };
        let name = self.name.clone();
        if let Some(link) = link_by_name(handle, &name).await.map_err(check)? {
            let using = match &self.using {
                // Ours (created or adopted earlier) or one we already use.
                Some(u) if u.name() == name => u.clone(),
                _ if is_dummy(&link) => {
                    tracing::info!(link = %name, "using the dummy link that is already there");
                    LinkUse::AdoptedDummy(name)
                }
                _ => {
                    tracing::info!(link = %name, "link exists and is not a dummy: the local IPs go on it");
                    LinkUse::Existing(name)
                }
            };
            return Ok((using, link.header.index));
        }
        // A link we used (not a dummy of ours) that is gone: fall through
        // and create the dummy, or use lo, afresh.
        let add = LinkDummy::new(&name).up().build();
        match handle.link().add(add).execute().await {
            Ok(()) => {
                tracing::info!(link = %name, "created dummy link");
                let link = link_by_name(handle, &name)
                    .await
                    .map_err(check)?
                    .ok_or_else(|| {
                        check(SetupError::Netlink {
                            what: format!("looking up link {name}"),
                            detail: "gone right after it was created".into(),
                        })
                    })?;
                let using = match &self.using {
                    Some(LinkUse::AdoptedDummy(n)) => LinkUse::AdoptedDummy(n.clone()),
                    _ => LinkUse::CreatedDummy(name),
                };
                Ok((using, link.header.index))
            }
            Err(e) if errno(&e) == Some(EOPNOTSUPP) => {
                if !matches!(&self.using, Some(LinkUse::Existing(n)) if n == "lo") {
                    tracing::warn!(link = %name,
                        "the kernel has no dummy link driver and no link of that name exists: \
                         the local IPs go on the loopback lo");
                }
                let lo = link_by_name(handle, "lo")
                    .await
                    .map_err(check)?
                    .ok_or_else(|| {
                        check(SetupError::Netlink {
                            what: "looking up link lo".into(),
                            detail: "no loopback link".into(),
                        })
                    })?;
                Ok((LinkUse::Existing("lo".into()), lo.header.index))
            }
            Err(e) => {
                let e = netlink_err(format!("creating dummy link {name}"), &e);
                tracing::error!(error = %e, "node-local interface");
                count_error(ErrorType::InterfaceAdd);
                Err(e)
            }
        }
    }

    /// Deletes the dummy (ours or adopted), or the addresses added to an
    /// existing link. Errors are logged and counted as `interface_check`.
    pub(crate) async fn teardown(&mut self) -> Result<(), SetupError> {
        let Some(using) = self.using.clone() else {
            return Ok(());
        };
        let r = tokio::time::timeout(COMMAND_TIMEOUT, self.teardown_inner(&using))
            .await
            .unwrap_or_else(|_| {
                Err(SetupError::Timeout(format!(
                    "tearing down link {}",
                    using.name()
                )))
            });
        if let Err(e) = &r {
            tracing::error!(error = %e, "node-local interface teardown");
            count_error(ErrorType::InterfaceCheck);
        } else {
            self.using = None;
        }
        r
    }

    async fn teardown_inner(&mut self, using: &LinkUse) -> Result<(), SetupError> {
        let handle = connect()?;
        let Some(link) = link_by_name(&handle, using.name()).await? else {
            tracing::info!(link = using.name(), "link already gone");
            self.added.clear();
            return Ok(());
        };
        let index = link.header.index;
        if using.is_dummy() {
            return match handle.link().del(index).execute().await {
                Ok(()) => {
                    tracing::info!(link = using.name(), "deleted dummy link");
                    Ok(())
                }
                Err(e) if errno(&e) == Some(ENODEV) => Ok(()),
                Err(e) => Err(netlink_err(format!("deleting link {}", using.name()), &e)),
            };
        }
        let mut first = None;
        let mut added: Vec<IpAddr> = self.added.iter().copied().collect();
        added.sort();
        for ip in added {
            let msg = match ip {
                IpAddr::V4(a) => AddressMessageBuilder::<Ipv4Addr>::new()
                    .index(index)
                    .address(a, 32)
                    .build(),
                IpAddr::V6(a) => AddressMessageBuilder::<Ipv6Addr>::new()
                    .index(index)
                    .address(a, 128)
                    .build(),
            };
            match handle.address().del(msg).execute().await {
                Ok(()) => {
                    tracing::info!(ip = %ip, link = using.name(), "deleted node-local address");
                    self.added.remove(&ip);
                }
                Err(e) if errno(&e) == Some(EADDRNOTAVAIL) => {
                    self.added.remove(&ip);
                }
                Err(e) => {
                    first.get_or_insert(netlink_err(
                        format!("deleting {ip} from link {}", using.name()),
                        &e,
                    ));
                }
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// Adds `ip` as a /32 or /128; `Ok(false)` when it is already there.
async fn add_address(handle: &Handle, index: u32, ip: IpAddr) -> Result<bool, rtnetlink::Error> {
    let prefix = if ip.is_ipv4() { 32 } else { 128 };
    let mut req = handle.address().add(index, ip, prefix);
    if ip.is_ipv6() {
        req.message_mut()
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    match req.execute().await {
        Ok(()) => Ok(true),
        Err(e) if errno(&e) == Some(EEXIST) => Ok(false),
        Err(e) => Err(e),
    }
}
