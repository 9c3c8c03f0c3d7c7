//! IP addresses and `cidr` ranges as Event Ruler compares them: an address is its bytes in
//! upper-case hex (8 digits for IPv4, 32 for IPv6), and a range the hex of its first and last
//! address, compared as text. So an IPv4 range of /0 spans every IPv6 address too, as in Event
//! Ruler. IPv4 parts may have leading zeros (`010.0.0.1` is 10.0.0.1); an IPv6 address with a
//! dotted IPv4 part, a zone (`%eth0`) or anything around it is not an address.

use std::net::Ipv6Addr;

/// The hex of an IP address written as Event Ruler accepts it, or `None`.
pub fn ip_hex(text: &str) -> Option<String> {
    if text.contains(':') {
        if text.contains('.') {
            return None;
        }
        let address: Ipv6Addr = text.parse().ok()?;
        return Some(address.octets().iter().map(|b| format!("{b:02X}")).collect());
    }
    let parts: Vec<&str> = text.split('.').collect();
    if parts.len() != 4 {
        return None;
    }
    let mut hex = String::with_capacity(8);
    for part in parts {
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let byte: u8 = part.parse().ok()?;
        hex.push_str(&format!("{byte:02X}"));
    }
    Some(hex)
}

/// A `cidr` range: the hex of its first and last address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cidr {
    low: String,
    high: String,
    /// Whether the range is the whole space (`/0`).
    everything: bool,
}

impl Cidr {
    /// Parses `ADDRESS/BITS`, refusing what Event Ruler refuses (a mask of the whole address
    /// included: `/32` and `/128` are written as the address itself).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut split = text.split('/');
        let (Some(address), Some(bits), None) = (split.next(), split.next(), split.next()) else {
            return Err("a cidr is ADDRESS/BITS, with one `/`".into());
        };
        if bits.is_empty() {
            return Err("a cidr is ADDRESS/BITS, with one `/`".into());
        }
        if !bits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("mask bits `{bits}` must be a whole number"));
        }
        let hex = ip_hex(address).ok_or_else(|| format!("`{address}` is not an IP address"))?;
        let width = hex.len() * 4;
        let bits: usize = bits.parse().map_err(|_| format!("mask bits `{bits}` are too many"))?;
        if bits >= width {
            return Err(format!("mask bits must be under {width} for this address"));
        }
        let value = u128::from_str_radix(&hex, 16).map_err(|e| e.to_string())?;
        let host = if bits == 0 { u128::MAX } else { (1u128 << (width - bits)) - 1 };
        let host = if width == 128 { host } else { host & ((1u128 << width) - 1) };
        let digits = hex.len();
        Ok(Cidr {
            low: format!("{:0digits$X}", value & !host),
            high: format!("{:0digits$X}", value | host),
            everything: bits == 0,
        })
    }

    /// Whether an address (its hex) is in the range.
    pub fn contains_hex(&self, hex: &str) -> bool {
        self.low.as_str() <= hex && hex <= self.high.as_str()
    }

    /// Whether a range of the whole space: Event Ruler's also holds numbers.
    pub fn is_everything(&self) -> bool {
        self.everything
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_ranges_compare_as_event_ruler_does() {
        assert_eq!(ip_hex("010.000.000.001").as_deref(), Some("0A000001"));
        assert_eq!(ip_hex("2001:DB8::1"), ip_hex("2001:0db8:0000:0000:0000:0000:0000:0001"));
        for bad in ["10.0.0", "10.0.0.256", " 10.0.0.1", "::ffff:10.0.0.1", "fe80::1%eth0", "garbage", "1.2.3.4.5"] {
            assert_eq!(ip_hex(bad), None, "{bad}");
        }
        let net = Cidr::parse("10.0.0.5/24").expect("valid");
        assert!(net.contains_hex("0A000001") && net.contains_hex("0A0000FF") && !net.contains_hex("0A000100"));
        let all4 = Cidr::parse("0.0.0.0/0").expect("valid");
        assert!(all4.contains_hex(&ip_hex("2001:db8::1").unwrap_or_default()) && all4.is_everything());
        assert!(Cidr::parse("fe80::/10").expect("valid").contains_hex(&ip_hex("fe80::1").unwrap_or_default()));
        assert!(Cidr::parse("10.0.0.0/08").is_ok());
        for bad in [
            "192.168.1.1/32",
            "2001:db8::1/128",
            "abc",
            "10.0.0.0",
            "10.0.0.0/-1",
            "/24",
            "10.0.0.0/24 ",
            "300.0.0.0/8",
            "::ffff:10.0.0.0/96",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }
}
