//! Which IP addresses a callback may reach: only public unicast ones.
//!
//! The rule lives here and only here; the delivery HTTP client applies it to every address
//! it is about to connect to (after DNS), and registration applies it to IP-literal hosts.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// True when `ip` is a public unicast address a webhook may be delivered to.
///
/// Refused: loopback, private, link-local (including cloud metadata 169.254.169.254),
/// CGNAT, "this network", broadcast, multicast, documentation, benchmarking and reserved
/// ranges, and in IPv6 everything outside global unicast `2000::/3`, the documentation,
/// Teredo/ORCHID/benchmark blocks, plus IPv4-mapped, IPv4-compatible, NAT64 and 6to4 forms
/// of any refused IPv4 address.
pub fn is_public_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

/// IPv4 ranges that are never public (IANA special-purpose registry).
const BLOCKED_V4: &[([u8; 4], u32)] = &[
    ([0, 0, 0, 0], 8),       // "this network"
    ([10, 0, 0, 0], 8),      // private
    ([100, 64, 0, 0], 10),   // carrier-grade NAT
    ([127, 0, 0, 0], 8),     // loopback
    ([169, 254, 0, 0], 16),  // link-local, cloud metadata
    ([172, 16, 0, 0], 12),   // private
    ([192, 0, 0, 0], 24),    // IETF protocol assignments
    ([192, 0, 2, 0], 24),    // documentation TEST-NET-1
    ([192, 88, 99, 0], 24),  // 6to4 relay anycast
    ([192, 168, 0, 0], 16),  // private
    ([198, 18, 0, 0], 15),   // benchmarking
    ([198, 51, 100, 0], 24), // documentation TEST-NET-2
    ([203, 0, 113, 0], 24),  // documentation TEST-NET-3
    ([224, 0, 0, 0], 4),     // multicast
    ([240, 0, 0, 0], 4),     // reserved, including broadcast
];

fn is_public_v4(ip: Ipv4Addr) -> bool {
    !BLOCKED_V4
        .iter()
        .any(|&(net, prefix)| in_v4(ip, net, prefix))
}

fn in_v6(ip: Ipv6Addr, net: Ipv6Addr, prefix: u32) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - prefix)
    };
    u128::from(ip) & mask == u128::from(net) & mask
}

fn v4_at(ip: Ipv6Addr, shift: u32) -> Ipv4Addr {
    Ipv4Addr::from(((u128::from(ip) >> shift) & 0xffff_ffff) as u32)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let seg = ip.segments();
    // ::/96 holds ::, ::1 and the deprecated IPv4-compatible form; ::ffff:0:0/96 is IPv4-mapped.
    if seg[..6] == [0, 0, 0, 0, 0, 0] || seg[..6] == [0, 0, 0, 0, 0, 0xffff] {
        return u128::from(ip) > 1 && is_public_v4(v4_at(ip, 0));
    }
    let net = |s: &str| s.parse::<Ipv6Addr>().expect("valid constant");
    // NAT64 well-known prefix embeds an IPv4 address in the last 32 bits.
    if in_v6(ip, net("64:ff9b::"), 96) {
        return is_public_v4(v4_at(ip, 0));
    }
    // 6to4 embeds an IPv4 address in bits 16..48.
    if in_v6(ip, net("2002::"), 16) {
        return is_public_v4(v4_at(ip, 80));
    }
    let global_unicast = in_v6(ip, net("2000::"), 3);
    let blocked = [
        ("2001::", 23),     // IETF protocol assignments: Teredo, benchmarking, ORCHID
        ("2001:db8::", 32), // documentation
        ("3fff::", 20),     // documentation
    ]
    .iter()
    .any(|&(n, p)| in_v6(ip, net(n), p));
    global_unicast && !blocked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public(s: &str) -> bool {
        is_public_ip(s.parse().unwrap())
    }

    #[test]
    fn public_addresses_pass() {
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "1.1.1.1",
            "100.128.0.1",
            "2606:4700:4700::1111",
            "2a00:1450:4001:80b::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(public(ip), "{ip} should be public");
        }
    }

    #[test]
    fn special_addresses_are_refused() {
        for ip in [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "100.64.0.1",
            "127.0.0.1",
            "127.255.255.254",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::127.0.0.1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.1.2.3",
            "64:ff9b::7f00:1",
            "64:ff9b:1::1",
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::1",
            "2001::1",
            "2001:db8::1",
            "3fff::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "100::1",
        ] {
            assert!(!public(ip), "{ip} should be refused");
        }
    }
}
