//! The broker address, parsed once: `mqtt://host[:port]` or `mqtts://host[:port]` (TLS).
//! One type for the service's config, ingest and the simulator, so they accept the same.

use std::fmt;
use std::str::FromStr;

/// A parsed broker URL. The default ports are 1883 (`mqtt`) and 8883 (`mqtts`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl BrokerUrl {
    /// Plain MQTT to `host:port` (tests, benches, the embedded broker).
    pub fn mqtt(host: impl Into<String>, port: u16) -> BrokerUrl {
        BrokerUrl {
            tls: false,
            host: host.into(),
            port,
        }
    }

    /// Whether the host is this machine: a loopback IP address (127.0.0.0/8, `::1`, or IPv4
    /// loopback mapped into IPv6) or the name `localhost` (which resolves to loopback). The
    /// only place plain MQTT may go without `broker.allow_plaintext`.
    pub fn is_loopback(&self) -> bool {
        match self.host.parse::<std::net::IpAddr>() {
            Ok(ip) => ip.to_canonical().is_loopback(),
            Err(_) => self.host.eq_ignore_ascii_case("localhost"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected mqtt://host[:port] or mqtts://host[:port]")]
pub struct BrokerUrlError;

impl FromStr for BrokerUrl {
    type Err = BrokerUrlError;

    fn from_str(s: &str) -> Result<BrokerUrl, BrokerUrlError> {
        let (tls, rest) = if let Some(r) = s.strip_prefix("mqtts://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("mqtt://") {
            (false, r)
        } else {
            return Err(BrokerUrlError);
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            // An IPv6 literal keeps its brackets: [::1]:1883.
            Some((h, p)) if !p.contains(']') => (h, p.parse::<u16>().map_err(|_| BrokerUrlError)?),
            _ => (rest, if tls { 8883 } else { 1883 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains(['/', '@', '?', '#', ' ']) || port == 0 {
            return Err(BrokerUrlError);
        }
        Ok(BrokerUrl {
            tls,
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

impl serde::Serialize for BrokerUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for BrokerUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<BrokerUrl, D::Error> {
        let text = String::deserialize(d)?;
        text.parse()
            .map_err(|e| serde::de::Error::custom(format!("{text:?}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_schemes_with_default_ports() {
        let u: BrokerUrl = "mqtt://broker.local".parse().expect("url");
        assert_eq!(
            (u.tls, u.host.as_str(), u.port),
            (false, "broker.local", 1883)
        );
        let u: BrokerUrl = "mqtts://10.0.0.1:8884/".parse().expect("url");
        assert_eq!((u.tls, u.host.as_str(), u.port), (true, "10.0.0.1", 8884));
        let u: BrokerUrl = "mqtt://[::1]:1884".parse().expect("url");
        assert_eq!((u.host.as_str(), u.port), ("::1", 1884));
        assert_eq!(u.to_string(), "mqtt://[::1]:1884");
    }

    #[test]
    fn refuses_what_is_not_a_broker_address() {
        for bad in [
            "http://x",
            "mqtt://",
            "mqtt://h:99999",
            "mqtt://h:0",
            "mqtt://u@h",
            "h:1883",
        ] {
            assert!(bad.parse::<BrokerUrl>().is_err(), "{bad}");
        }
    }
}
