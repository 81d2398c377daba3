//! The rules through nf_tables over netlink, without libnftnl or `nft`.
//!
//! Everything lives in one table, `inet nodedns` (both IP families), with
//! four base chains:
//!
//! | chain            | hook       | priority    | node-cache's chain |
//! |------------------|------------|-------------|--------------------|
//! | `raw-prerouting` | prerouting | raw (-300)  | raw PREROUTING     |
//! | `raw-output`     | output     | raw (-300)  | raw OUTPUT         |
//! | `filter-input`   | input      | filter (0)  | filter INPUT       |
//! | `filter-output`  | output     | filter (0)  | filter OUTPUT      |
//!
//! A rule is `ip[6] daddr|saddr IP tcp|udp dport|sport PORT notrack|accept`
//! with node-cache's comment, encoded as `nft` itself encodes it. [`ensure`]
//! sends one batch (`NFNL_MSG_BATCH_BEGIN` … `END`, applied atomically by
//! the kernel): add the table, delete it, add it again with its chains and
//! rules. Whatever was there before (nothing, all of it, part of it,
//! rules someone added), the result is exactly the desired set, never a
//! duplicate, and packets never see a half-built table. [`teardown`] adds
//! then deletes the table in one batch, so it succeeds when the table is
//! already gone.
//!
//! Priority -300 runs before conntrack (-200), so `notrack` takes effect.
//! An `accept` ends only this table's chain: a drop in another table
//! (another firewall's) still applies, as with any nf_tables table.

use std::net::IpAddr;

use rtnetlink::sys::{AsyncSocket, AsyncSocketExt, SocketAddr, TokioSocket, protocols};

use super::{Action, COMMAND_TIMEOUT, Chain, Rule, SetupError, Table};

/// The table's name (family `inet`).
pub const TABLE: &str = "nodedns";

// linux/netlink.h
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;
// linux/netfilter/nfnetlink.h
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
// linux/netfilter/nf_tables.h
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFT_META_NFPROTO: u32 = 15;
const NFT_META_L4PROTO: u32 = 16;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFT_CMP_EQ: u32 = 0;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
const NF_ACCEPT: u32 = 1;
// libnftnl's rule user data: the comment TLV.
const NFTNL_UDATA_RULE_COMMENT: u8 = 0;
// linux/netfilter.h
const NFPROTO_UNSPEC: u8 = 0;
const NFPROTO_INET: u8 = 1;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
const NF_INET_PRE_ROUTING: u32 = 0;
const NF_INET_LOCAL_IN: u32 = 1;
const NF_INET_LOCAL_OUT: u32 = 3;
const NF_IP_PRI_RAW: i32 = -300;
const NF_IP_PRI_FILTER: i32 = 0;

/// Our chains: name, hook, priority.
const CHAINS: [(&str, u32, i32); 4] = [
    ("raw-prerouting", NF_INET_PRE_ROUTING, NF_IP_PRI_RAW),
    ("raw-output", NF_INET_LOCAL_OUT, NF_IP_PRI_RAW),
    ("filter-input", NF_INET_LOCAL_IN, NF_IP_PRI_FILTER),
    ("filter-output", NF_INET_LOCAL_OUT, NF_IP_PRI_FILTER),
];

/// The chain of ours that stands for a rule's table and chain.
pub fn chain_name(rule: &Rule) -> &'static str {
    match (rule.table, rule.chain) {
        (Table::Raw, Chain::Prerouting) => "raw-prerouting",
        (Table::Raw, _) => "raw-output",
        (Table::Filter, Chain::Output) => "filter-output",
        (Table::Filter, _) => "filter-input",
    }
}

/// Makes table `inet nodedns` hold exactly `rules`, in one transaction.
pub async fn ensure(rules: &[Rule]) -> Result<(), SetupError> {
    let mut batch = Batch::new();
    batch.table(NFT_MSG_NEWTABLE, NLM_F_CREATE);
    batch.table(NFT_MSG_DELTABLE, 0);
    batch.table(NFT_MSG_NEWTABLE, NLM_F_CREATE);
    for (name, hook, priority) in CHAINS {
        batch.chain(name, hook, priority);
    }
    for rule in rules {
        batch.rule(rule);
    }
    transact("nf_tables: installing table inet nodedns", batch.finish()).await
}

/// Removes table `inet nodedns` (fine if it is not there).
pub async fn teardown() -> Result<(), SetupError> {
    let mut batch = Batch::new();
    batch.table(NFT_MSG_NEWTABLE, NLM_F_CREATE);
    batch.table(NFT_MSG_DELTABLE, 0);
    transact("nf_tables: deleting table inet nodedns", batch.finish()).await
}

/// A netlink batch being built: the bytes and the sequence numbers that
/// must be acknowledged.
struct Batch {
    buf: Vec<u8>,
    seq: u32,
    acks: Vec<u32>,
}

impl Batch {
    fn new() -> Self {
        // Sequence numbers only have to be distinct within the socket,
        // which is ours alone.
        let mut b = Self {
            buf: Vec::with_capacity(4096),
            seq: 1,
            acks: Vec::new(),
        };
        b.message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, NFPROTO_UNSPEC, |_| {});
        b
    }

    fn finish(mut self) -> (Vec<u8>, Vec<u32>) {
        self.message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, NFPROTO_UNSPEC, |_| {});
        (self.buf, self.acks)
    }

    /// One message: netlink header, nfgenmsg, then what `body` writes.
    fn message(&mut self, ty: u16, flags: u16, family: u8, body: impl FnOnce(&mut Vec<u8>)) {
        let start = self.buf.len();
        let seq = self.seq;
        self.seq += 1;
        if flags & NLM_F_ACK != 0 {
            self.acks.push(seq);
        }
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // length, below
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
        // nfgenmsg: family, version 0, res_id (the subsystem, for batches).
        self.buf.push(family);
        self.buf.push(0);
        self.buf
            .extend_from_slice(&NFNL_SUBSYS_NFTABLES.to_be_bytes());
        body(&mut self.buf);
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    fn nft(&mut self, msg: u16, flags: u16, body: impl FnOnce(&mut Vec<u8>)) {
        self.message(
            (NFNL_SUBSYS_NFTABLES << 8) | msg,
            NLM_F_REQUEST | NLM_F_ACK | flags,
            NFPROTO_INET,
            body,
        );
    }

    fn table(&mut self, msg: u16, flags: u16) {
        self.nft(msg, flags, |b| put_str(b, NFTA_TABLE_NAME, TABLE));
    }

    fn chain(&mut self, name: &str, hook: u32, priority: i32) {
        self.nft(NFT_MSG_NEWCHAIN, NLM_F_CREATE, |b| {
            put_str(b, NFTA_CHAIN_TABLE, TABLE);
            put_str(b, NFTA_CHAIN_NAME, name);
            nest(b, NFTA_CHAIN_HOOK, |b| {
                put_u32(b, NFTA_HOOK_HOOKNUM, hook);
                put(b, NFTA_HOOK_PRIORITY, &priority.to_be_bytes());
            });
            put_str(b, NFTA_CHAIN_TYPE, "filter");
        });
    }

    fn rule(&mut self, rule: &Rule) {
        self.nft(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, |b| {
            put_str(b, NFTA_RULE_TABLE, TABLE);
            put_str(b, NFTA_RULE_CHAIN, chain_name(rule));
            nest(b, NFTA_RULE_EXPRESSIONS, |b| rule_expressions(b, rule));
            // The comment as libnftnl stores it: type, length, text, NUL.
            let comment = rule.comment();
            let mut udata = Vec::with_capacity(comment.len() + 3);
            udata.push(NFTNL_UDATA_RULE_COMMENT);
            udata.push((comment.len() + 1) as u8);
            udata.extend_from_slice(comment.as_bytes());
            udata.push(0);
            put(b, NFTA_RULE_USERDATA, &udata);
        });
    }
}

/// `meta nfproto; payload ip[6] d/saddr; meta l4proto; payload d/sport;`
/// then the verdict: the expressions `nft` generates for
/// `ip daddr A tcp dport P notrack`.
fn rule_expressions(b: &mut Vec<u8>, rule: &Rule) {
    let (nfproto, addr_offset, addr): (u8, u32, Vec<u8>) = match rule.ip {
        IpAddr::V4(a) => (
            NFPROTO_IPV4,
            if rule.dst { 16 } else { 12 },
            a.octets().to_vec(),
        ),
        IpAddr::V6(a) => (
            NFPROTO_IPV6,
            if rule.dst { 24 } else { 8 },
            a.octets().to_vec(),
        ),
    };
    meta(b, NFT_META_NFPROTO);
    cmp_eq(b, &[nfproto]);
    payload(
        b,
        NFT_PAYLOAD_NETWORK_HEADER,
        addr_offset,
        addr.len() as u32,
    );
    cmp_eq(b, &addr);
    meta(b, NFT_META_L4PROTO);
    cmp_eq(b, &[rule.proto.number()]);
    payload(
        b,
        NFT_PAYLOAD_TRANSPORT_HEADER,
        if rule.dst { 2 } else { 0 },
        2,
    );
    cmp_eq(b, &rule.port.to_be_bytes());
    match rule.action() {
        Action::Notrack => expr(b, "notrack", |_| {}),
        Action::Accept => expr(b, "immediate", |b| {
            put_u32(b, NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
            nest(b, NFTA_IMMEDIATE_DATA, |b| {
                nest(b, NFTA_DATA_VERDICT, |b| {
                    put_u32(b, NFTA_VERDICT_CODE, NF_ACCEPT)
                });
            });
        }),
    }
}

fn expr(b: &mut Vec<u8>, name: &str, data: impl FnOnce(&mut Vec<u8>)) {
    nest(b, NFTA_LIST_ELEM, |b| {
        put_str(b, NFTA_EXPR_NAME, name);
        let start = b.len();
        nest(b, NFTA_EXPR_DATA, data);
        // An expression without data (notrack) carries no data attribute.
        if b.len() == start + 4 {
            b.truncate(start);
        }
    });
}

fn meta(b: &mut Vec<u8>, key: u32) {
    expr(b, "meta", |b| {
        put_u32(b, NFTA_META_DREG, NFT_REG_1);
        put_u32(b, NFTA_META_KEY, key);
    });
}

fn cmp_eq(b: &mut Vec<u8>, value: &[u8]) {
    expr(b, "cmp", |b| {
        put_u32(b, NFTA_CMP_SREG, NFT_REG_1);
        put_u32(b, NFTA_CMP_OP, NFT_CMP_EQ);
        nest(b, NFTA_CMP_DATA, |b| put(b, NFTA_DATA_VALUE, value));
    });
}

fn payload(b: &mut Vec<u8>, base: u32, offset: u32, len: u32) {
    expr(b, "payload", |b| {
        put_u32(b, NFTA_PAYLOAD_DREG, NFT_REG_1);
        put_u32(b, NFTA_PAYLOAD_BASE, base);
        put_u32(b, NFTA_PAYLOAD_OFFSET, offset);
        put_u32(b, NFTA_PAYLOAD_LEN, len);
    });
}

/// One attribute: length and type (host order), the value, padding to 4.
fn put(b: &mut Vec<u8>, ty: u16, value: &[u8]) {
    let len = 4 + value.len();
    b.extend_from_slice(&(len as u16).to_ne_bytes());
    b.extend_from_slice(&ty.to_ne_bytes());
    b.extend_from_slice(value);
    pad(b);
}

fn put_u32(b: &mut Vec<u8>, ty: u16, value: u32) {
    put(b, ty, &value.to_be_bytes());
}

fn put_str(b: &mut Vec<u8>, ty: u16, s: &str) {
    let mut v = Vec::with_capacity(s.len() + 1);
    v.extend_from_slice(s.as_bytes());
    v.push(0);
    put(b, ty, &v);
}

fn nest(b: &mut Vec<u8>, ty: u16, inner: impl FnOnce(&mut Vec<u8>)) {
    let start = b.len();
    b.extend_from_slice(&0u16.to_ne_bytes());
    b.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    inner(b);
    let len = (b.len() - start) as u16;
    b[start..start + 2].copy_from_slice(&len.to_ne_bytes());
}

fn pad(b: &mut Vec<u8>) {
    while !b.len().is_multiple_of(4) {
        b.push(0);
    }
}

/// Sends the batch and waits (at most [`COMMAND_TIMEOUT`]) for an
/// acknowledgement of every message, or the first error.
async fn transact(what: &str, (batch, acks): (Vec<u8>, Vec<u32>)) -> Result<(), SetupError> {
    let err = |detail: String| SetupError::Netlink {
        what: what.to_string(),
        detail,
    };
    let run = async {
        let mut socket = TokioSocket::new(protocols::NETLINK_NETFILTER)
            .map_err(|e| err(format!("netlink socket: {e}")))?;
        socket
            .socket_mut()
            .bind_auto()
            .map_err(|e| err(format!("netlink bind: {e}")))?;
        let kernel = SocketAddr::new(0, 0);
        socket
            .send_to(&batch, &kernel)
            .await
            .map_err(|e| err(format!("netlink send: {e}")))?;
        let mut pending = acks;
        while !pending.is_empty() {
            let (data, _) = socket
                .recv_from_full()
                .await
                .map_err(|e| err(format!("netlink receive: {e}")))?;
            for (seq, code) in acks_in(&data) {
                if code != 0 {
                    return Err(err(format!(
                        "the kernel refused it: {}",
                        std::io::Error::from_raw_os_error(-code)
                    )));
                }
                pending.retain(|&s| s != seq);
            }
        }
        Ok(())
    };
    tokio::time::timeout(COMMAND_TIMEOUT, run)
        .await
        .unwrap_or_else(|_| Err(SetupError::Timeout(what.to_string())))
}

/// The `(sequence, error code)` of every NLMSG_ERROR in a datagram (code 0
/// is an acknowledgement). Stops at the first malformed header.
fn acks_in(mut data: &[u8]) -> Vec<(u32, i32)> {
    let mut out = Vec::new();
    while data.len() >= 16 {
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        if len < 16 || len > data.len() {
            break;
        }
        let ty = u16::from_ne_bytes([data[4], data[5]]);
        let seq = u32::from_ne_bytes([data[8], data[9], data[10], data[11]]);
        if ty == NLMSG_ERROR && len >= 20 {
            let code = i32::from_ne_bytes([data[16], data[17], data[18], data[19]]);
            out.push((seq, code));
        }
        let aligned = (len + 3) & !3;
        data = &data[aligned.min(data.len())..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nodelocal::rules;

    #[test]
    fn attributes_are_padded_and_nested() {
        let mut b = Vec::new();
        nest(&mut b, 4, |b| put_str(b, 1, "ab"));
        // nest header (4) + attr header (4) + "ab\0" (3) + pad (1)
        assert_eq!(b.len(), 12);
        assert_eq!(u16::from_ne_bytes([b[0], b[1]]), 12);
        assert_eq!(u16::from_ne_bytes([b[2], b[3]]), 4 | NLA_F_NESTED);
        assert_eq!(u16::from_ne_bytes([b[4], b[5]]), 7);
    }

    #[test]
    fn batch_is_framed_and_every_message_acked() {
        let ips = ["169.254.20.10".parse().unwrap()];
        let mut batch = Batch::new();
        batch.table(NFT_MSG_NEWTABLE, NLM_F_CREATE);
        for rule in rules(&ips, 53, 8080) {
            batch.rule(&rule);
        }
        let (buf, acks) = batch.finish();
        assert_eq!(acks.len(), 13);
        // Walk the messages: begin, 13 acked ones, end.
        let mut types = Vec::new();
        let mut rest = &buf[..];
        while !rest.is_empty() {
            let len = u32::from_ne_bytes(rest[..4].try_into().unwrap()) as usize;
            assert_eq!(len % 4, 0);
            types.push(u16::from_ne_bytes([rest[4], rest[5]]));
            rest = &rest[len..];
        }
        assert_eq!(types.len(), 15);
        assert_eq!(types[0], NFNL_MSG_BATCH_BEGIN);
        assert_eq!(types[14], NFNL_MSG_BATCH_END);
        assert_eq!(types[1], NFNL_SUBSYS_NFTABLES << 8);
    }

    #[test]
    fn acks_are_read_and_garbage_ignored() {
        let mut d = Vec::new();
        for (seq, code) in [(3u32, 0i32), (4, -1)] {
            d.extend_from_slice(&36u32.to_ne_bytes());
            d.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
            d.extend_from_slice(&0u16.to_ne_bytes());
            d.extend_from_slice(&seq.to_ne_bytes());
            d.extend_from_slice(&0u32.to_ne_bytes());
            d.extend_from_slice(&code.to_ne_bytes());
            d.extend_from_slice(&[0; 16]);
        }
        d.extend_from_slice(&[0xff; 7]);
        assert_eq!(acks_in(&d), vec![(3, 0), (4, -1)]);
        assert!(acks_in(&[1, 0, 0, 0]).is_empty());
        let mut huge = d.clone();
        huge[..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(acks_in(&huge).is_empty());
    }
}
