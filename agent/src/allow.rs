//! The agent-side target allow-list (`--allow-target`): host names and
//! networks this agent may send traffic to. An agent is a traffic cannon;
//! with a list, a stolen token can only aim it where its owner allowed.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::str::FromStr;

use ipnet::IpNet;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowEntry {
    Net(IpNet),
    Host(String),
}

impl FromStr for AllowEntry {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty allow-list entry".into());
        }
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(AllowEntry::Net(net));
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(AllowEntry::Net(IpNet::from(ip)));
        }
        if s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            return Ok(AllowEntry::Host(s.to_ascii_lowercase()));
        }
        Err(format!(
            "{s:?} is neither a host name, an IP address nor a CIDR network"
        ))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList(pub Vec<AllowEntry>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AllowError {
    #[error("target URL {0:?} is not valid")]
    Url(String),
    #[error("target {0} is not on this agent's allow-list")]
    Denied(String),
    #[error("target host {host} does not resolve: {reason}")]
    Resolve { host: String, reason: String },
}

impl AllowList {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn ip_allowed(&self, ip: IpAddr) -> bool {
        self.0
            .iter()
            .any(|e| matches!(e, AllowEntry::Net(n) if n.contains(&ip)))
    }

    /// Checks a target URL. Returns the host and the addresses the client
    /// must use (pinned, so DNS cannot answer differently later), or `None`
    /// when there is no list.
    pub fn check(&self, url: &str) -> Result<Option<(String, Vec<SocketAddr>)>, AllowError> {
        if self.is_empty() {
            return Ok(None);
        }
        let parsed = reqwest::Url::parse(url)
            .map_err(|_| AllowError::Url(barrage_common::redact::redact_url(url)))?;
        let host = parsed
            .host_str()
            .ok_or_else(|| AllowError::Url(barrage_common::redact::redact_url(url)))?
            .to_ascii_lowercase();
        let port = parsed.port_or_known_default().unwrap_or(80);
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return if self.ip_allowed(ip) {
                Ok(None)
            } else {
                Err(AllowError::Denied(host))
            };
        }
        let addrs: Vec<SocketAddr> = (bare, port)
            .to_socket_addrs()
            .map_err(|e| AllowError::Resolve {
                host: host.clone(),
                reason: e.to_string(),
            })?
            .collect();
        let named = self
            .0
            .iter()
            .any(|e| matches!(e, AllowEntry::Host(h) if *h == host));
        if addrs.is_empty() || !(named || addrs.iter().all(|a| self.ip_allowed(a.ip()))) {
            return Err(AllowError::Denied(host));
        }
        Ok(Some((host, addrs)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> AllowList {
        AllowList(entries.iter().map(|e| e.parse().expect("entry")).collect())
    }

    #[test]
    fn empty_list_allows_anything() {
        assert_eq!(
            AllowList::default().check("http://example.invalid:1/x"),
            Ok(None)
        );
    }

    #[test]
    fn networks_and_addresses() {
        let l = list(&["10.0.0.0/8", "127.0.0.1", "::1"]);
        assert!(l.check("http://10.1.2.3:8000/v1/chat/completions").is_ok());
        assert!(l.check("http://127.0.0.1:9/").is_ok());
        assert!(l.check("http://[::1]:9/").is_ok());
        assert_eq!(
            l.check("http://192.168.1.1/"),
            Err(AllowError::Denied("192.168.1.1".into()))
        );
    }

    #[test]
    fn host_names_resolve_and_pin() {
        let l = list(&["localhost"]);
        let (host, addrs) = l
            .check("http://localhost:8000/")
            .expect("allowed")
            .expect("pinned");
        assert_eq!(host, "localhost");
        assert!(addrs.iter().all(|a| a.port() == 8000));
        // A name not listed, resolving outside the networks, is refused.
        let l = list(&["10.0.0.0/8"]);
        assert!(matches!(
            l.check("http://localhost:8000/"),
            Err(AllowError::Denied(_))
        ));
    }

    #[test]
    fn bad_entries_are_refused() {
        assert!("bad host!".parse::<AllowEntry>().is_err());
        assert!("".parse::<AllowEntry>().is_err());
    }
}
