//! Who a handshake comes from and what that address may do: the client's IP (the socket
//! peer, or behind trusted proxies the `X-Forwarded-For` entry they vouch for), its open
//! WebSocket connections and the instance's, and a throttle on its failed handshakes that
//! acts before any token is checked. Sans-I/O: time is passed in.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::time::Instant;

use axum::http::HeaderMap;
use hablar_protocol::CloseCode;
use ipnet::IpNet;
use parking_lot::Mutex;

use crate::config::Limits;
use crate::limits::RateByKey;

/// The address a request comes from: `peer` itself, unless `peer` is one of the
/// `trusted` proxies; then the `X-Forwarded-For` list is read from the right (each proxy
/// appends the address it was reached from) past every trusted proxy, and the first
/// address no trusted proxy vouches for is the client. Entries left of it are the
/// client's own text and are never believed.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = canonical(peer);
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    // Several headers are one list, in order (RFC 9110 §5.3).
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .collect::<Vec<_>>();
    for entry in forwarded.iter().rev() {
        // An entry that is no address cannot have come from a proxy we trust: stop at
        // the last one that vouched.
        let Some(ip) = parse_entry(entry) else { break };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`[v6]:port`, `v4:port`).
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    let ip = entry.parse::<IpAddr>().ok().or_else(|| {
        let host = match entry.strip_prefix('[') {
            Some(rest) => rest.split_once(']')?.0,
            None => entry.rsplit_once(':')?.0,
        };
        host.parse().ok()
    })?;
    Some(canonical(ip))
}

/// IPv4 addresses mapped into IPv6 (a dual-stack socket's `::ffff:a.b.c.d`) as IPv4, so
/// that one client has one key whichever way it connected.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// What the limits count an address as: IPv4 as it is, IPv6 by its /64, since one
/// subscriber is routinely given a whole /64 and could otherwise pick a fresh address
/// for every connection.
fn key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !u128::from(u64::MAX);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

/// Why a handshake was refused before its token was looked at (all close with 4429).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The address failed too many handshakes lately.
    Throttled,
    /// The address has `--max-connections-per-ip` open.
    AddressFull,
    /// The instance has `--max-connections` open.
    InstanceFull,
}

/// The limits per client address and for the instance.
#[derive(Debug)]
pub struct PeerLimits {
    /// Open connections by address key, and in all.
    open: Mutex<Open>,
    /// Failed handshakes per address key; `None` when the throttle is off.
    failures: Option<RateByKey<IpAddr>>,
    /// Connections per address key; 0 for no limit.
    max_per_ip: usize,
    /// Connections in all; 0 for no limit.
    max_total: usize,
}

/// The counts, under one lock so that both caps are checked and taken together.
#[derive(Debug, Default)]
struct Open {
    /// Count per address key; an address with no connection has no entry.
    by_ip: HashMap<IpAddr, usize>,
    total: usize,
}

/// A connection counted against its address and the instance; dropping it gives both
/// back. It also carries the address that failed admissions are charged to.
#[derive(Debug)]
pub struct PeerSlot {
    limits: Arc<PeerLimits>,
    /// The address key counted.
    key: IpAddr,
}

impl PeerLimits {
    /// The limits of `limits`: connection caps and the failed-handshake throttle (more
    /// lenient in dev mode, whose browser suites fail handshakes on purpose, all from
    /// loopback).
    pub fn new(limits: &Limits, dev: bool) -> Self {
        let (burst, rate) = (
            limits.failed_handshake_burst,
            limits.failed_handshake_rate_per_sec,
        );
        let failures = match (burst, dev) {
            (0, _) => None,
            (burst, true) => Some(RateByKey::new(rate.max(100.0), burst.max(1000))),
            (burst, false) => Some(RateByKey::new(rate, burst)),
        };
        Self {
            open: Mutex::new(Open::default()),
            failures,
            max_per_ip: limits.max_connections_per_ip,
            max_total: limits.max_connections,
        }
    }

    /// A slot for a handshake from `ip` at `now`, or why there is none. The throttle
    /// comes first: a refused address costs no token check and no store read.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<PeerSlot, Refusal> {
        let key = key(ip);
        if let Some(failures) = &self.failures {
            if !failures.has_token(&key, now) {
                return Err(Refusal::Throttled);
            }
        }
        let mut open = self.open.lock();
        if self.max_total != 0 && open.total >= self.max_total {
            return Err(Refusal::InstanceFull);
        }
        let count = open.by_ip.get(&key).copied().unwrap_or(0);
        if self.max_per_ip != 0 && count >= self.max_per_ip {
            return Err(Refusal::AddressFull);
        }
        open.by_ip.insert(key, count + 1);
        open.total += 1;
        Ok(PeerSlot {
            limits: self.clone(),
            key,
        })
    }

    /// Open connections counted for the address of `ip`, and in all.
    pub fn open(&self, ip: IpAddr) -> (usize, usize) {
        let open = self.open.lock();
        (open.by_ip.get(&key(ip)).copied().unwrap_or(0), open.total)
    }
}

impl PeerSlot {
    /// Tells the throttle how this address's admission was refused: a bad or expired
    /// token, no such chat, or not a member costs one failed handshake. (Concurrent
    /// handshakes all pass the throttle's check before any of them fails, so an address
    /// can fail at most its open connections more than the burst before it is stopped.)
    pub fn refused(&self, code: CloseCode, now: Instant) {
        let failed = matches!(
            code,
            CloseCode::Unauthorized | CloseCode::Forbidden | CloseCode::NotFound
        );
        if let (true, Some(failures)) = (failed, &self.limits.failures) {
            // An empty bucket stays empty: the next handshake is throttled either way.
            let _ = failures.take(&self.key, now);
        }
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(count) = open.by_ip.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.by_ip.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::http::HeaderValue;

    use super::*;
    use crate::Config;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", HeaderValue::from_str(value).expect("header"));
        }
        headers
    }

    fn limits(configure: impl FnOnce(&mut Limits)) -> Arc<PeerLimits> {
        let mut limits = Config::defaults().limits;
        configure(&mut limits);
        Arc::new(PeerLimits::new(&limits, false))
    }

    #[test]
    fn forwarded_for_is_believed_only_from_a_trusted_proxy() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        let headers = forwarded(&["198.51.100.9"]);
        assert_eq!(
            client_ip(ip("203.0.113.5"), &headers, &trusted),
            ip("203.0.113.5")
        );
        assert_eq!(client_ip(ip("10.1.2.3"), &headers, &trusted), ip("198.51.100.9"));
        assert_eq!(client_ip(ip("10.1.2.3"), &headers, &[]), ip("10.1.2.3"));
        assert_eq!(
            client_ip(ip("10.1.2.3"), &HeaderMap::new(), &trusted),
            ip("10.1.2.3"),
            "no header: the proxy itself"
        );
    }

    #[test]
    fn a_client_cannot_spoof_by_prepending_to_forwarded_for() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        // The client sent "1.2.3.4"; the outer proxy appended the real client, the inner
        // one the outer proxy.
        let headers = forwarded(&["1.2.3.4, 198.51.100.9", "10.0.0.2"]);
        assert_eq!(client_ip(ip("10.0.0.1"), &headers, &trusted), ip("198.51.100.9"));
        let garbage = forwarded(&["1.2.3.4, not-an-ip, 10.0.0.2"]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &garbage, &trusted),
            ip("10.0.0.2"),
            "the last address a trusted proxy vouched for"
        );
        let ports = forwarded(&["[2001:db8::1]:4711, 198.51.100.9:80"]);
        assert_eq!(client_ip(ip("10.0.0.1"), &ports, &trusted), ip("198.51.100.9"));
    }

    #[test]
    fn an_address_gets_its_cap_and_the_instance_its_own() {
        let limits = limits(|l| {
            l.max_connections_per_ip = 2;
            l.max_connections = 3;
        });
        let now = Instant::now();
        let a1 = limits.admit(ip("192.0.2.1"), now).expect("first");
        let _a2 = limits.admit(ip("192.0.2.1"), now).expect("second");
        assert_eq!(
            limits.admit(ip("192.0.2.1"), now).err(),
            Some(Refusal::AddressFull)
        );
        let _b = limits.admit(ip("192.0.2.2"), now).expect("another address");
        assert_eq!(
            limits.admit(ip("192.0.2.3"), now).err(),
            Some(Refusal::InstanceFull)
        );
        drop(a1);
        assert_eq!(limits.open(ip("192.0.2.1")), (1, 2));
        assert!(limits.admit(ip("192.0.2.3"), now).is_ok(), "a slot given back");
    }

    #[test]
    fn an_ipv6_slash_64_is_one_address_and_mapped_ipv4_is_ipv4() {
        let limits = limits(|l| l.max_connections_per_ip = 1);
        let now = Instant::now();
        let _a = limits.admit(ip("2001:db8:1:2::1"), now).expect("first");
        assert_eq!(
            limits.admit(ip("2001:db8:1:2:ffff::9"), now).err(),
            Some(Refusal::AddressFull)
        );
        assert!(limits.admit(ip("2001:db8:1:3::1"), now).is_ok(), "another /64");
        let _v4 = limits.admit(ip("192.0.2.1"), now).expect("v4");
        assert_eq!(
            limits.admit(ip("::ffff:192.0.2.1"), now).err(),
            Some(Refusal::AddressFull)
        );
    }

    #[test]
    fn failed_handshakes_throttle_the_address_until_the_bucket_refills() {
        let limits = limits(|l| {
            l.failed_handshake_burst = 2;
            l.failed_handshake_rate_per_sec = 1.0;
        });
        let t0 = Instant::now();
        for code in [CloseCode::Unauthorized, CloseCode::TooMany, CloseCode::Forbidden] {
            limits
                .admit(ip("192.0.2.1"), t0)
                .expect("not throttled yet")
                .refused(code, t0);
        }
        assert_eq!(
            limits.admit(ip("192.0.2.1"), t0).err(),
            Some(Refusal::Throttled),
            "two failures (a 4429 is none) empty a burst of two"
        );
        assert!(limits.admit(ip("192.0.2.2"), t0).is_ok(), "another address");
        let later = t0 + Duration::from_secs(1);
        assert!(limits.admit(ip("192.0.2.1"), later).is_ok(), "refilled");
    }
}
