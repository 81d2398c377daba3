//! The rules through the `iptables`/`ip6tables` binaries, exactly as
//! node-cache installs them (through Kubernetes' utiliptables): for each
//! rule, `iptables -w 5 -t TABLE -C CHAIN ARGS` and, when it is missing,
//! `-I CHAIN ARGS` (prepended, as `EnsureRule(Prepend)`). Teardown deletes
//! each rule while it exists (a bounded loop: someone may have added it
//! twice). Each command is bounded by [`COMMAND_TIMEOUT`] and killed past
//! it. A failure whose standard error says the xtables lock was held
//! counts as `iptables_lock`, any other as `iptables`.

use std::net::IpAddr;
use std::process::Stdio;

use super::{Action, COMMAND_TIMEOUT, Chain, ErrorType, Rule, SetupError, Table, count_error};

/// Seconds iptables waits for the xtables lock (`-w`), as utiliptables.
const LOCK_WAIT_SECONDS: &str = "5";
/// Most deletions of one rule at teardown.
const MAX_DELETES: usize = 64;

/// The binary for the rule's family.
fn binary(ip: IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "iptables",
        IpAddr::V6(_) => "ip6tables",
    }
}

fn table_name(t: Table) -> &'static str {
    match t {
        Table::Raw => "raw",
        Table::Filter => "filter",
    }
}

fn chain_name(c: Chain) -> &'static str {
    match c {
        Chain::Prerouting => "PREROUTING",
        Chain::Input => "INPUT",
        Chain::Output => "OUTPUT",
    }
}

/// node-cache's rule arguments, in its order:
/// `-p tcp -d IP --dport PORT -j NOTRACK -m comment --comment "…"`.
pub fn rule_args(rule: &Rule) -> Vec<String> {
    let (addr, port) = if rule.dst {
        ("-d", "--dport")
    } else {
        ("-s", "--sport")
    };
    let target = match rule.action() {
        Action::Notrack => "NOTRACK",
        Action::Accept => "ACCEPT",
    };
    [
        "-p",
        rule.proto.name(),
        addr,
        &rule.ip.to_string(),
        port,
        &rule.port.to_string(),
        "-j",
        target,
        "-m",
        "comment",
        "--comment",
        rule.comment(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// What one command ended with.
enum Outcome {
    /// Exit status 0.
    Success,
    /// Exit status 1 for a check (`-C`) or a delete (`-D`): the rule is
    /// not there.
    Missing,
}

/// Runs `BINARY -w 5 -t TABLE OP CHAIN ARGS`.
async fn run(rule: &Rule, op: &str) -> Result<Outcome, SetupError> {
    let bin = binary(rule.ip);
    let mut args: Vec<String> = vec![
        "-w".into(),
        LOCK_WAIT_SECONDS.into(),
        "-t".into(),
        table_name(rule.table).into(),
        op.into(),
        chain_name(rule.chain).into(),
    ];
    args.extend(rule_args(rule));
    let command = format!("{bin} {}", args.join(" "));
    let child = tokio::process::Command::new(bin)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => {
            return Err(SetupError::Command {
                command,
                detail: format!("could not start: {e}"),
                locked: false,
            });
        }
    };
    let output = match tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => {
            return Err(SetupError::Command {
                command,
                detail: e.to_string(),
                locked: false,
            });
        }
        Err(_) => return Err(SetupError::Timeout(command)),
    };
    if output.status.success() {
        return Ok(Outcome::Success);
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let locked = stderr.contains("holding the xtables lock");
    // Exit 1 from -C / -D: "Bad rule (does a matching rule exist in that
    // chain?)". Anything else (2: bad arguments, 4: resource problem) is a
    // failure.
    if output.status.code() == Some(1) && !locked && (op == "-C" || op == "-D") {
        return Ok(Outcome::Missing);
    }
    Err(SetupError::Command {
        command,
        detail: format!("{}: {}", output.status, stderr.trim()),
        locked,
    })
}

fn counted(e: SetupError, doing: &str) -> SetupError {
    let kind = match &e {
        SetupError::Command { locked: true, .. } => ErrorType::IptablesLock,
        _ => ErrorType::Iptables,
    };
    tracing::error!(error = %e, "iptables: {doing} failed");
    count_error(kind);
    e
}

/// Checks every rule and prepends the missing ones. Every rule is tried;
/// the first error is returned.
pub async fn ensure(rules: &[Rule]) -> Result<(), SetupError> {
    let mut first = None;
    for rule in rules {
        let r = match run(rule, "-C").await {
            Ok(Outcome::Success) => Ok(()),
            Ok(Outcome::Missing) => match run(rule, "-I").await {
                Ok(_) => {
                    tracing::info!(rule = %rule_args(rule).join(" "), chain = chain_name(rule.chain),
                        table = table_name(rule.table), "iptables: added node-local rule");
                    Ok(())
                }
                Err(e) => Err(counted(e, "adding a rule")),
            },
            Err(e) => Err(counted(e, "checking a rule")),
        };
        if let Err(e) = r {
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

/// Deletes every copy of every rule (at most [`MAX_DELETES`] each). A rule
/// already gone is not an error.
pub async fn teardown(rules: &[Rule]) -> Result<(), SetupError> {
    let mut first = None;
    for rule in rules {
        for _ in 0..MAX_DELETES {
            match run(rule, "-D").await {
                Ok(Outcome::Success) => continue,
                Ok(Outcome::Missing) => break,
                Err(e) => {
                    first.get_or_insert(counted(e, "deleting a rule"));
                    break;
                }
            }
        }
    }
    first.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nodelocal::rules;

    #[test]
    fn args_are_node_caches() {
        let r = rules(&["169.254.20.10".parse().unwrap()], 53, 8080);
        assert_eq!(
            rule_args(&r[0]).join(" "),
            "-p tcp -d 169.254.20.10 --dport 53 -j NOTRACK -m comment --comment NodeLocal DNS Cache: skip conntrack"
        );
        assert_eq!(
            rule_args(&r[7]).join(" "),
            "-p udp -s 169.254.20.10 --sport 53 -j ACCEPT -m comment --comment NodeLocal DNS Cache: allow DNS traffic"
        );
        assert_eq!(binary("fd00::a".parse().unwrap()), "ip6tables");
    }
}
